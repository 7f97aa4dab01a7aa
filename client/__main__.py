"""``python3 -m client``: the echo-client command (see client.cli)."""

from client.cli import main

raise SystemExit(main())
