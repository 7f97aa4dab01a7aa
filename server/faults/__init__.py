"""Faults on demand: make this backend misbehave on purpose, per connection (issue 21).

    rules.py      the rule vocabulary: JSON objects and ``--fault KIND[:key=value,...]``
    policy.py     FaultPolicy: the rules, a seeded draw per connection, listener states
    behaviours.py what a faulted TCP/TLS connection does instead of the plain echo loop
    draw.py       FaultDraw: the draw at admission and its rate-limited ``fault`` event
    udp.py        drop, delay and reorder for the UDP echo (never amplifying)

Leaf modules: nothing here imports server.config; draw.py alone publishes (observe.events).
"""
