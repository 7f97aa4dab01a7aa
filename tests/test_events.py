"""The Exchange, the Actor and the LogActor: unit tests without sleeps."""

from __future__ import annotations

import gzip
import io
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from server.observe.actor import Actor
from server.observe.events import event
from server.observe.exchange import Exchange, get_exchange
from server.observe.logger import LogActor
from server.observe.stats import Stats


class Collector:
    def __init__(self) -> None:
        self.received: list[Any] = []
        self._lock = threading.Lock()

    def send(self, item: Any) -> None:
        with self._lock:
            self.received.append(item)


class Raising:
    def send(self, item: Any) -> None:
        raise RuntimeError("subscriber bug")


def test_get_exchange_returns_one_exchange_per_name() -> None:
    assert get_exchange("events") is get_exchange("events")
    assert get_exchange("events") is not get_exchange("other")


def test_attach_and_detach_while_other_threads_send() -> None:
    exchange = Exchange("concurrent")
    steady = Collector()
    exchange.attach(steady)
    senders, per_sender = 4, 5_000
    start = threading.Barrier(senders + 1)

    def send_many(tag: int) -> None:
        start.wait()
        for index in range(per_sender):
            exchange.send((tag, index))

    def churn() -> None:
        start.wait()
        for _ in range(2_000):
            transient = Collector()
            exchange.attach(transient)
            exchange.detach(transient)

    threads = [threading.Thread(target=send_many, args=(t,)) for t in range(senders)]
    threads.append(threading.Thread(target=churn))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(steady.received) == senders * per_sender
    for tag in range(senders):  # each sender's events arrive in its order
        mine = [index for t, index in steady.received if t == tag]
        assert mine == list(range(per_sender))
    assert exchange.subscriber_count == 1


def test_a_raising_subscriber_does_not_stop_delivery(caplog: pytest.LogCaptureFixture) -> None:
    exchange = Exchange("raising")
    before, after = Collector(), Collector()
    exchange.attach(before)
    exchange.attach(Raising())
    exchange.attach(after)
    with caplog.at_level(logging.ERROR, logger="echo.exchange"):
        for index in range(10):
            exchange.send(index)
    assert before.received == after.received == list(range(10))
    assert exchange.failures == 10
    reports = [r for r in caplog.records if r.name == "echo.exchange"]
    assert 1 <= len(reports) <= 2  # reported, at most once a second


def test_subscribed_context_detaches() -> None:
    exchange = Exchange("ctx")
    collector = Collector()
    with exchange.subscribed(collector):
        exchange.send(1)
    exchange.send(2)
    assert collector.received == [1]


class Recording(Actor):
    def __init__(self, size: int = 0) -> None:
        super().__init__("recording", size)
        self.handled: list[Any] = []
        self.gate = threading.Event()
        self.gate.set()

    def handle(self, message: Any) -> None:
        self.gate.wait(10)
        if message == "boom":
            raise ValueError("handler bug")
        self.handled.append(message)


def test_actor_handles_everything_sent_before_close() -> None:
    actor = Recording()
    actor.start()
    for index in range(1000):
        actor.send(index)
    actor.send(None)  # None is a message, not the stop marker
    assert actor.close()
    assert actor.join(10)
    assert actor.handled == [*range(1000), None]
    assert actor.error is None


def test_actor_mailbox_is_bounded() -> None:
    actor = Recording(size=2)
    actor.gate.clear()  # the actor is stuck in handle()
    actor.start()
    results = [actor.send(index) for index in range(10)]
    assert results.count(True) <= 3  # one being handled + two waiting
    assert results[-1] is False
    actor.gate.set()
    assert actor.close() and actor.join(10)


def test_actor_exception_is_reported_not_silent(capsys: pytest.CaptureFixture[str]) -> None:
    actor = Recording()
    actor.start()
    actor.send("boom")
    assert actor.join(10)
    assert isinstance(actor.error, ValueError)
    assert "handler bug" in capsys.readouterr().err


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_log_actor_writes_json_lines_with_stable_fields() -> None:
    stream = io.StringIO()
    actor = LogActor(Stats(), log_format="json", stream=stream)
    actor.start()
    actor.send(event("opened", conn_id=3, peer="127.0.0.1:5000"))
    actor.send(event("closed", conn_id=3, peer="127.0.0.1:5000", reason="eof", bytes_in=5, bytes_out=5))
    actor.handler.handle(logging.LogRecord("echo.test", logging.WARNING, __file__, 1, "careful %s", ("now",), None))
    assert actor.close() and actor.join(10)
    opened, closed, warning = _lines(stream.getvalue())
    assert opened["event"] == "opened" and opened["conn"] == 3 and opened["peer"] == "127.0.0.1:5000"
    assert opened["ts"].endswith("Z") and opened["level"] == "info"
    assert closed["reason"] == "eof" and closed["bytes_in"] == 5
    assert warning == {**warning, "event": "log", "level": "warning", "logger": "echo.test", "message": "careful now"}


def test_log_level_filters_events() -> None:
    stream = io.StringIO()
    actor = LogActor(Stats(), log_level="warning", stream=stream)
    actor.start()
    actor.send(event("opened", conn_id=1))
    actor.send(event("rejected", level="warning", reason="max_connections"))
    assert actor.close() and actor.join(10)
    text = stream.getvalue()
    assert "rejected" in text and "opened" not in text


class StuckStream(io.StringIO):
    """A sink that blocks every write until released: a stdout nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(30)
        return super().write(text)


def test_full_mailbox_drops_counts_and_says_so_later() -> None:
    stats = Stats()
    stream = StuckStream()
    actor = LogActor(stats, log_format="json", mailbox_size=5, stream=stream)
    actor.start()
    results = [actor.send(event("opened", conn_id=i)) for i in range(100)]
    dropped = results.count(False)
    assert dropped >= 100 - 6
    assert stats.snapshot().log_events_dropped == dropped
    stream.release.set()
    assert actor.close() and actor.join(10)
    notes = [r for r in _lines(stream.getvalue()) if r["event"] == "log_dropped"]
    assert sum(n["dropped"] for n in notes) == dropped


def test_rotation_keeps_n_gzipped_backups(tmp_path: Path) -> None:
    path = tmp_path / "echo.log"
    actor = LogActor(Stats(), log_format="json", log_file=str(path), max_bytes=2048, backups=3)
    actor.start()
    for index in range(400):
        actor.send(event("opened", conn_id=index, peer="10.0.0.1:1"))
    assert actor.close() and actor.join(10)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["echo.log", "echo.log.1.gz", "echo.log.2.gz", "echo.log.3.gz"]
    assert path.stat().st_size <= 2048
    ids = []
    for name in ["echo.log.3.gz", "echo.log.2.gz", "echo.log.1.gz"]:
        with gzip.open(tmp_path / name, "rt") as rotated:
            ids += [r["conn"] for r in _lines(rotated.read())]
    ids += [r["conn"] for r in _lines(path.read_text())]
    assert ids == list(range(ids[0], 400)), "rotated files hold the newest events, in order"


class Counting(Actor):
    """Counts what it handles per sender, in order, and says when a total is reached."""

    def __init__(self, size: int = 0) -> None:
        super().__init__("counting", size)
        self.seen: dict[int, list[int]] = {}
        self.handled = 0
        self.target = 0
        self.reached = threading.Event()

    def handle(self, message: Any) -> None:
        sender, index = message
        self.seen.setdefault(sender, []).append(index)
        self.handled += 1
        if self.handled >= self.target:
            self.reached.set()


def test_actor_sleeping_between_bursts_misses_no_wake_up() -> None:
    """Thousands of bursts, each sent while the actor may be going to sleep: a lost
    wake-up would leave a burst unhandled and the wait for it would time out."""
    actor = Counting()
    actor.start()
    senders = 3
    sent = [0] * senders
    start = threading.Barrier(senders)
    for round_number in range(2_000):
        burst = 1 + round_number % 4
        actor.reached.clear()
        actor.target = actor.handled + senders * burst

        def send_burst(sender: int, burst: int = burst) -> None:
            start.wait(10)
            for _ in range(burst):
                assert actor.send((sender, sent[sender]))
                sent[sender] += 1

        threads = [threading.Thread(target=send_burst, args=(s,)) for s in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert actor.reached.wait(10), f"round {round_number}: {actor.handled} of {actor.target} handled"
    assert actor.close() and actor.join(10)
    assert actor.seen == {s: list(range(sent[s])) for s in range(senders)}


def test_send_wait_gets_the_room_the_actor_makes() -> None:
    actor = Recording(size=1)
    actor.gate.clear()
    actor.start()
    assert actor.send("first")
    sent_all = threading.Event()
    waited: list[bool] = []

    def fill() -> None:
        # "first" may still be in the mailbox or already in handle(): either way, the
        # mailbox is full again at the latest after one more.
        waited.extend(actor.send_wait(name, 10) for name in ("second", "third"))
        sent_all.set()

    sender = threading.Thread(target=fill)
    sender.start()
    assert not sent_all.wait(0.1), "the mailbox has room for one while the actor is stuck"
    actor.gate.set()
    sender.join(10)
    assert waited == [True, True]
    assert actor.close() and actor.join(10)
    assert actor.handled == ["first", "second", "third"]


def test_send_wait_gives_up_at_its_timeout_and_when_the_actor_dies() -> None:
    actor = Recording(size=1)
    actor.gate.clear()
    actor.start()
    assert actor.send("boom")
    while not actor.send("queued"):  # until "boom" is in handle() and "queued" holds the place
        assert actor.alive
    assert actor.send_wait("late", 0.05) is False
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(actor.send_wait("later", 30)))
    waiter.start()
    actor.gate.set()  # handle("boom") raises: the actor dies and empties its mailbox
    waiter.join(10)
    assert outcome == [False], "a dead actor tells the senders waiting for room at once"
    assert actor.join(10) and isinstance(actor.error, ValueError)
    assert actor.send("after") is False
