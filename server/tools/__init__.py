"""One-shot commands beside the server: ``python3 -m server analyze`` and ``healthcheck``."""
