"""Observation: what runs on its own threads or any thread, never on the echo path.

Counters (Stats, one lock), events (immutable records on a pub/sub Exchange), the
LogActor and its sinks, metrics, and the admin HTTP endpoint with its dashboard. Nothing
here can make an echo wait: every hand-off from a server thread is a bounded queue or a
lock held for a counter update.
"""
