"""Processes: the supervisor and its worker processes (``--workers N``).

The supervisor owns the listening sockets, the admin endpoint, the one log and the
global limits (shared memory, touched once per connection); each worker runs the
engine's EchoServer on the inherited socket and reports up a pipe. Workers are started
by spawn, never by forking a process that runs threads.
"""
