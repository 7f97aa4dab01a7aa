"""Networks given as text (``any`` or CIDR[,CIDR...]) and the test "is this address in them".

The parser and check of --proxy-protocol-from (config.py) and the trust check of the
acceptor. Pure functions; any thread may call them.
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...] | None:
    """``any`` -> None (every source); else comma-separated CIDRs (a bare address is a
    /32 or /128). Raises ValueError naming the bad entry."""
    text = text.strip()
    if text.lower() == "any":
        return None
    networks = []
    for item in text.split(","):
        item = item.strip()
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"expected 'any' or CIDR[,CIDR...], got {item!r}") from None
    return tuple(networks)


def trusted(ip: str, networks: tuple[Network, ...] | None) -> bool:
    """Is ``ip`` in ``networks`` (None: every address is)?"""
    if networks is None:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


def check_networks(value: object) -> str | None:
    """The setting's check: why ``value`` is not usable, or None."""
    if not isinstance(value, str):
        return f"expected text, got {value!r}"
    try:
        parse_networks(value)
    except ValueError as error:
        return str(error)
    return None
