"""The dashboard's server-side history: a bounded ring of one-second samples per
listener, recorded whether or not anyone watches, served in the dashboard feed.
(In a real browser: tests/test_dashboard.py.)"""

from __future__ import annotations

import itertools
import json
from types import MappingProxyType
from typing import Any

from server.observe.history import HISTORY_SAMPLES, History, HistorySampler
from server.observe.stats import StatsSnapshot
from tests.conftest import ServerFactory
from tests.test_admin import get
from tests.test_dashboard import echo_some


def _snapshot(n: int) -> StatsSnapshot:
    def counts(scale: int) -> MappingProxyType[str, int]:
        return MappingProxyType({"accepted": n * scale, "bytes_received": 10 * n * scale, "bytes_sent": 20 * n * scale})

    return StatsSnapshot(
        accepted=3 * n,
        active=n,
        bytes_received=30 * n,
        bytes_sent=60 * n,
        uptime_s=float(n),
        rejected=MappingProxyType({"max_connections": n, "proxy_protocol": 1}),
        timed_out=MappingProxyType({"idle_timeout": 2 * n}),
        listeners=MappingProxyType({"tcp": counts(2), "tls": counts(1), "udp": counts(0)}),
    )


def test_the_ring_keeps_the_newest_samples_with_each_listener() -> None:
    history = History(size=3)
    for n in range(5):
        history.record(_snapshot(n))
    samples = history.since(0)
    assert [s["seq"] for s in samples] == [3, 4, 5] and [s["t"] for s in samples] == [2.0, 3.0, 4.0]
    newest = samples[-1]
    assert (newest["accepted"], newest["active"], newest["in"], newest["out"]) == (12, 4, 120, 240)
    assert newest["rejected"] == 5 and newest["timed_out"] == 8
    assert newest["listeners"] == {"tcp": [8, 80, 160], "tls": [4, 40, 80], "udp": [0, 0, 0]}
    assert history.since(3) == samples[1:] and history.since(5) == []
    assert history.since(10**9) == samples  # a sequence number from another server: start over
    assert json.loads(json.dumps(samples)) == samples


def test_the_sampler_keeps_going_after_a_failed_snapshot_and_stops_when_told() -> None:
    history = History()
    calls = itertools.count()

    def snapshot() -> StatsSnapshot:
        n = next(calls)
        if n == 1:
            raise RuntimeError("a snapshot failed")
        return _snapshot(n)

    sampler = HistorySampler(snapshot, history, interval_s=0.01)
    sampler.start()
    try:
        assert history.wait_for(lambda sample: sample.active >= 4, timeout=10) is not None
    finally:
        sampler.stop(timeout=5)
    assert not sampler._thread.is_alive()
    actives = [s["active"] for s in history.since(0)]
    assert actives[:3] == [0, 2, 3]  # the failure is a gap, not the end
    assert len(actives) == len(set(actives))


def feed(server: Any, query: str) -> dict[str, Any]:
    status, _, body = get(server, "/dashboard.json" + query)
    assert status == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


def test_the_feed_serves_the_history_recorded_before_the_first_viewer(make_server: ServerFactory) -> None:
    server, recorder = make_server(admin_port=0)
    echo_some(server, 3, 1000)
    recorder.wait_for(lambda e: len(recorder.named("closed")) == 3)
    assert server.admin is not None
    # The server sampled the traffic on its own: nobody had asked for the dashboard yet.
    assert server.admin.history.wait_for(lambda s: s.accepted == 3 and s.bytes_sent == 3000, timeout=5)
    first = feed(server, "?since=0&samples=0")
    samples = first["samples"]
    assert 2 <= len(samples) <= HISTORY_SAMPLES
    assert [s["seq"] for s in samples] == list(range(samples[0]["seq"], samples[-1]["seq"] + 1))
    assert all(later["t"] > earlier["t"] for earlier, later in itertools.pairwise(samples))
    newest, stats = samples[-1], first["stats"]
    assert (newest["accepted"], newest["in"], newest["out"]) == (stats["accepted"], 3000, 3000)
    assert newest["listeners"]["tcp"] == [3, 3000, 3000]
    # A later poll gets only what it has not seen.
    later = feed(server, f"?since={first['seq']}&samples={newest['seq']}")["samples"]
    assert all(sample["seq"] > newest["seq"] for sample in later) and len(later) <= 2
    assert get(server, "/dashboard.json?samples=x")[0] == 400
