"""Faults on demand: make this backend misbehave on purpose, per connection (issue 21).

    rules.py      the rule vocabulary: JSON objects and ``--fault KIND[:key=value,...]``
    policy.py     FaultPolicy: the rules, a seeded draw per connection, listener states
    behaviours.py what a faulted TCP/TLS connection does instead of the plain echo loop
    transport.py  the draw in front of a listener's transport (after the PROXY step)
    draw.py       FaultDraw: the draw at admission and its rate-limited ``fault`` event
    refuse.py     Refusal: the ``refuse`` state on the listening sockets
    udp.py        drop, delay and reorder for the UDP echo (never amplifying)

Nothing here imports server.config; draw.py alone publishes (observe.events). With
``--faults off`` none of these modules is imported (the server imports them where
faults are on; tests/test_faults.py holds that).
"""
