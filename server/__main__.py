"""``python3 -m server``: run the echo server (see server.cli)."""

from server.cli import main

# Guarded: worker processes started with 'spawn' import this module too.
if __name__ == "__main__":
    raise SystemExit(main())
