"""Leaf helpers: pure functions and immutable values that import nothing from ``server``.

config.py validates settings with them and every layer may use them, so no import cycle
can run through them (tests/test_layout.py checks). No threads, no state: any thread may
call anything here.
"""
