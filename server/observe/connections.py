"""``GET /connections`` and ``GET /connections/ID``: the live connections, asked of the
scheduler threads that own them, on the admin handler's thread.

    GET /connections?page=1&per_page=100&sort=age&peer=10.0.0.0/8&listener=tls
    -> {"total": N, "page": 1, "per_page": 100, "sort": "age", "connections": [...],
        "unanswered": []}
    GET /connections/ID -> everything {json} shows of that connection, now (404 if gone)
    GET /connections/ID?worker=N -> the same in worker N (ids are per worker)

Each entry: conn, listener, worker, peer, via, age_s, bytes_in, bytes_out, state and
rtt_us (TCP_INFO now). ``sort=age`` lists the oldest first, ``sort=bytes`` the most
bytes (in + out) first. ``peer`` filters by the client's address (an IP or a CIDR; the
address from the PROXY header where there is one), ``listener`` by listener name.
Paging: ``per_page`` 1..MAX_PER_PAGE (default DEFAULT_PER_PAGE), ``page`` 1..MAX_PAGE,
and page x per_page at most MAX_WINDOW (the rows sorted and handed over for one page stay
bounded however many connections there are); a page past the end is empty. Anything
else in the query (an unknown or repeated parameter, a bad value) is a 400 naming the
parameter.

How a source answers, so that listing 10,000 connections neither blocks the echo nor
waits forever (server/live_connections.py): a small task on each scheduler copies cheap
summaries a chunk at a time (engine/live.py), the filters, sorting and paging happen on
the admin thread (rows are built for the page's window only), then one call per
scheduler reads the TCP_INFO rtt of the page's connections only. Each round waits at
most ASK_TIMEOUT_S; a scheduler (or, under the supervisor, a worker) that has not
answered by then is named in ``unanswered`` and its connections are left out, never
waited on longer. At most MAX_CONCURRENT listings run at once; another waits up to
ASK_TIMEOUT_S for its turn and is then told 503.

A source of connections (``Source``) is one process's schedulers
(server/live_connections.py) or the supervisor asking each worker; ``listing`` and
``detail`` work on either. This module knows nothing of the engine: it parses, pages and
answers. Threads: every function here runs on an admin handler thread.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs

DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 1000
MAX_PAGE = 10_000
# page x per_page at most: the rows a source sorts and hands over for one page (under
# --workers, up each worker's pipe), so their memory and size stay bounded (~3 MB).
MAX_WINDOW = 10_000
MAX_CONCURRENT = 2
ASK_TIMEOUT_S = 2.0
# A worker asks its own schedulers within this, so that its answer can still reach the
# supervisor, which waits ASK_TIMEOUT_S for every worker.
WORKER_ASK_TIMEOUT_S = 0.75 * ASK_TIMEOUT_S
MAX_ID = 10**15
Sort = Literal["age", "bytes"]
Key = tuple[int | None, int]  # (worker, conn): connection ids are per worker
_PARAMETERS = ("page", "per_page", "sort", "peer", "listener")


class QueryError(ValueError):
    """A bad /connections query; the message names the parameter (for a 400)."""


@dataclass(frozen=True, slots=True)
class Query:
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE
    sort: Sort = "age"
    peer: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    listener: str | None = None

    @property
    def window(self) -> int:
        """How many of the sorted rows the page needs: those before it and its own."""
        return self.page * self.per_page


def parse_query(text: str, listeners: Collection[str]) -> Query:
    """The query string -> Query; raises QueryError naming the parameter at fault."""
    try:
        fields = parse_qs(text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=len(_PARAMETERS))
    except ValueError:
        raise QueryError(f"not a query string; the parameters are {', '.join(_PARAMETERS)}") from None
    for name, values in fields.items():
        if name not in _PARAMETERS:
            raise QueryError(f"unknown parameter {name[:40]!r}; the parameters are {', '.join(_PARAMETERS)}")
        if len(values) > 1:
            raise QueryError(f"{name}: given more than once")
    value = {name: values[0] for name, values in fields.items()}
    sort = value.get("sort", "age")
    if sort not in ("age", "bytes"):
        raise QueryError("sort: expected age or bytes")
    listener = value.get("listener")
    if listener is not None and listener not in listeners:
        raise QueryError(f"listener: expected one of {', '.join(sorted(listeners))}")
    query = Query(
        page=_bounded_int("page", value.get("page"), 1, MAX_PAGE, 1),
        per_page=_bounded_int("per_page", value.get("per_page"), 1, MAX_PER_PAGE, DEFAULT_PER_PAGE),
        sort="age" if sort == "age" else "bytes",
        peer=_network(value.get("peer")),
        listener=listener,
    )
    if query.window > MAX_WINDOW:
        raise QueryError(
            f"page: page x per_page may be at most {MAX_WINDOW:,}; narrow the list with peer= or listener="
        )
    return query


def parse_id(text: str) -> int | None:
    """The ID of /connections/ID, or None if it is not a connection id."""
    if not text.isdigit() or not text.isascii() or len(text) > 15 or int(text) > MAX_ID:
        return None
    return int(text)


def parse_worker(query: str) -> int | None:
    """/connections/ID's only parameter, ``worker=N`` (ids are per worker under
    --workers); raises QueryError."""
    if not query:
        return None
    name, _, value = query.partition("=")
    if name != "worker" or not value.isascii() or not value.isdigit() or len(value) > 4:
        raise QueryError("expected /connections/ID or /connections/ID?worker=N")
    return int(value)


def _bounded_int(name: str, text: str | None, low: int, high: int, default: int) -> int:
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 6 or not low <= int(text) <= high:
        raise QueryError(f"{name}: expected a whole number from {low} to {high}")
    return int(text)


def _network(text: str | None) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if text is None:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise QueryError("peer: expected an IP address or a CIDR such as 10.0.0.0/8") from None


# --- sources --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rows:
    """A source's answer to a query: how many matched, the first ``query.window`` of them
    in order, and who did not answer."""

    total: int
    rows: list[dict[str, Any]]
    unanswered: list[str]


class Source(Protocol):
    """Where connections live: this process's schedulers, or the supervisor's workers."""

    listeners: tuple[str, ...]

    def rows(self, query: Query) -> Rows: ...

    def rtts(self, keys: Collection[Key]) -> tuple[dict[Key, int | None], list[str]]:
        """The TCP_INFO rtt now of the connections named (worker, conn): ids are per worker."""
        ...

    def detail(self, conn_id: int, worker: int | None = None) -> tuple[dict[str, Any] | None, list[str]]:
        """One connection's facts now (in ``worker`` if given), or None."""
        ...


def sort_rows(rows: list[dict[str, Any]], sort: Sort) -> None:
    """Oldest first (age), or most bytes first; the connection id breaks ties."""
    if sort == "age":
        rows.sort(key=lambda row: (-row["age_s"], row["conn"]))
    else:
        rows.sort(key=lambda row: (-(row["bytes_in"] + row["bytes_out"]), row["conn"]))


# --- the answers ----------------------------------------------------------------------------


class Busy(Exception):
    """MAX_CONCURRENT listings are running and none ended within ASK_TIMEOUT_S (a 503)."""


_turns = threading.BoundedSemaphore(MAX_CONCURRENT)


def listing(source: Source, query: Query) -> dict[str, Any]:
    """The /connections document for ``query``; raises Busy."""
    if not _turns.acquire(timeout=ASK_TIMEOUT_S):
        raise Busy
    try:
        found = source.rows(query)
        start = (query.page - 1) * query.per_page
        page = found.rows[start : start + query.per_page]
        unanswered = list(found.unanswered)
        if page:
            rtt, late = source.rtts([(row["worker"], row["conn"]) for row in page])
            unanswered += [name for name in late if name not in unanswered]
            for row in page:
                row["rtt_us"] = rtt.get((row["worker"], row["conn"]))
    finally:
        _turns.release()
    return {
        "total": found.total,
        "page": query.page,
        "per_page": query.per_page,
        "sort": query.sort,
        "connections": page,
        "unanswered": unanswered,
    }


def detail(source: Source, conn_id: int, worker: int | None = None) -> tuple[dict[str, Any] | None, list[str]]:
    """/connections/ID[?worker=N]: the connection's facts now (None: no such live
    connection); raises Busy."""
    if not _turns.acquire(timeout=ASK_TIMEOUT_S):
        raise Busy
    try:
        return source.detail(conn_id, worker)
    finally:
        _turns.release()
