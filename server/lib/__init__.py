"""Leaf helpers: pure functions and immutable values that import nothing from ``server``,
and one self-contained primitive (waker.py, a socketpair wake-up; its docstring says
which thread may call what).

config.py validates settings with them and every layer may use them, so no import cycle
can run through them (tests/test_layout.py checks). No threads, and no other state: any thread
may call anything else here.
"""
