"""``python3 -m server``: run the echo server (see server.cli)."""

from server.cli import main

raise SystemExit(main())
