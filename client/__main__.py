"""``python3 -m client``: the echo-client command (see client.cli)."""

from client.cli import main

# Guarded: worker processes started with 'spawn' import this module too.
if __name__ == "__main__":
    raise SystemExit(main())
