"""Faults on demand: make this backend misbehave on purpose, per connection (issue 21).

    rules.py      the rule vocabulary: JSON objects and ``--fault KIND[:key=value,...]``
    policy.py     FaultPolicy: the rules, a seeded draw per connection, listener states
    behaviours.py what a faulted TCP/TLS connection does instead of the plain echo loop
    udp.py        drop, delay and reorder for the UDP echo (never amplifying)

Leaf modules: nothing here imports server.config or server.observe.
"""
