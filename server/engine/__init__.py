"""The engine: what runs on a scheduler thread (or sets it up before one starts).

Code here never blocks: a task waits by yielding (readable, writable, a deadline), and
the hot path locks and logs nothing per message, and allocates only a memoryview slice. It imports nothing from
``observe`` but Stats (to count), the small immutable Event records and their
constructor, and Throttle (to say things at most once a second); what it publishes goes
through the callable it is handed.
"""
