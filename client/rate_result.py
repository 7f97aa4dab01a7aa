"""RateResult: what one ``echo-client rate`` process measured, and the merge of many.

Everything in it adds exactly: histograms merge bucket for bucket, counters add, the
per-second series merge second by second, and the rates of processes (or hosts) that ran
the same window add. So a merge of the results of N processes, or of the ``--json``
documents of N hosts (``echo-client merge``), is the result one big client would have had.

``to_json``/``from_json`` carry everything a merge or a report needs (the raw histograms
included); ``summary`` is the part a person or a CI budget reads. Plain data, no threads:
a worker builds one, the parent merges them after the workers are done.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from client.histogram import Histogram

LATE_S = 0.001  # a send that left more than this after its intended time counts as late
SHORTFALL = 0.01  # warn when the achieved rate is more than 1% under the target


@dataclass
class Second:
    """One second of the measured window, by intended send time (latency) and by
    actual send time (``sent``)."""

    corrected: Histogram = field(default_factory=Histogram)
    uncorrected: Histogram = field(default_factory=Histogram)
    sent: int = 0

    def merge(self, other: Second) -> None:
        self.corrected.merge(other.corrected)
        self.uncorrected.merge(other.uncorrected)
        self.sent += other.sent


@dataclass
class RateResult:
    target_rate: float = 0.0
    duration_s: float = 0.0
    size: int = 0
    connections: int = 0
    connected: int = 0
    processes: int = 1
    hosts: int = 1
    sent: int = 0  # messages scheduled inside the measured window that began to leave
    sent_in_window: int = 0  # of those, how many left before the window ended: the achieved rate
    received: int = 0  # of those, echoed back whole and verified
    late_sends: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    corrected: Histogram = field(default_factory=Histogram)  # echo end - intended send time
    uncorrected: Histogram = field(default_factory=Histogram)  # echo end - actual send time
    lateness: Histogram = field(default_factory=Histogram)  # actual - intended send time
    connect: Histogram = field(default_factory=Histogram)
    seconds: dict[int, Second] = field(default_factory=dict)

    def second(self, index: int) -> Second:
        found = self.seconds.get(index)
        if found is None:
            found = self.seconds[index] = Second()
        return found

    def merge(self, other: RateResult, *, same_host: bool = True) -> RateResult:
        """Add ``other`` (another process of the same run, or another host); returns self."""
        self.target_rate += other.target_rate
        self.duration_s = max(self.duration_s, other.duration_s)
        self.size = self.size or other.size
        self.connections += other.connections
        self.connected += other.connected
        self.processes += other.processes
        if not same_host:
            self.hosts += other.hosts
        self.sent += other.sent
        self.sent_in_window += other.sent_in_window
        self.received += other.received
        self.late_sends += other.late_sends
        self.errors.update(other.errors)
        for mine, theirs in (
            (self.corrected, other.corrected),
            (self.uncorrected, other.uncorrected),
            (self.lateness, other.lateness),
            (self.connect, other.connect),
        ):
            mine.merge(theirs)
        for index, second in other.seconds.items():
            self.second(index).merge(second)
        return self

    @property
    def achieved_rate(self) -> float:
        return self.sent_in_window / self.duration_s if self.duration_s else 0.0

    @property
    def error_rate(self) -> float:
        """Messages sent in the window that did not come back whole and right."""
        if not self.sent:
            return 1.0 if self.errors else 0.0
        return (self.sent - self.received) / self.sent

    def warnings(self) -> list[str]:
        found = []
        # Failed connections stop sending too; then the errors, which fail the run, say why.
        if self.target_rate and not self.errors and self.achieved_rate < self.target_rate * (1 - SHORTFALL):
            found.append(
                f"achieved {self.achieved_rate:,.1f}/s, {100 * (1 - self.achieved_rate / self.target_rate):.1f}% "
                f"under the target {self.target_rate:,.0f}/s: the client or the connections could not keep the "
                "schedule (see late_sends); add --processes or hosts"
            )
        if self.sent and self.late_sends / self.sent > SHORTFALL:
            found.append(
                f"{self.late_sends:,} of {self.sent:,} sends ({100 * self.late_sends / self.sent:.1f}%) left more "
                f"than {LATE_S * 1000:g} ms late (the client's CPU, or a server that stopped reading)"
            )
        return found

    def summary(self) -> dict[str, Any]:
        """The document ``--json`` prints, without the raw histograms."""
        return {
            "target_rate": round(self.target_rate, 3),
            "achieved_rate": round(self.achieved_rate, 3),
            "duration_s": self.duration_s,
            "size": self.size,
            "connections": self.connections,
            "connected": self.connected,
            "processes": self.processes,
            "hosts": self.hosts,
            "sent": self.sent,
            "sent_in_window": self.sent_in_window,
            "received": self.received,
            "errors": dict(sorted(self.errors.items())),
            "error_rate": round(self.error_rate, 6),
            "late_sends": self.late_sends,
            "late_send_fraction": round(self.late_sends / self.sent, 6) if self.sent else 0.0,
            "late_threshold_ms": LATE_S * 1000,
            "latency_ms": {"corrected": self.corrected.summary_ms(), "uncorrected": self.uncorrected.summary_ms()},
            "send_lateness_ms": self.lateness.summary_ms(),
            "connect_ms": self.connect.summary_ms(),
            "per_second": [
                {
                    "second": index,
                    "sent": second.sent,
                    "corrected_ms": second.corrected.summary_ms(),
                    "uncorrected_ms": second.uncorrected.summary_ms(),
                }
                for index, second in sorted(self.seconds.items())
            ],
            "warnings": self.warnings(),
        }

    def to_json(self) -> dict[str, Any]:
        """The summary plus the raw histograms (``histograms``) that ``from_json`` reads back."""
        document = self.summary()
        document["histograms"] = {
            "corrected": self.corrected.to_json(),
            "uncorrected": self.uncorrected.to_json(),
            "lateness": self.lateness.to_json(),
            "connect": self.connect.to_json(),
            "seconds": {
                str(index): {
                    "corrected": second.corrected.to_json(),
                    "uncorrected": second.uncorrected.to_json(),
                    "sent": second.sent,
                }
                for index, second in sorted(self.seconds.items())
            },
        }
        return document

    @classmethod
    def from_json(cls, document: Any) -> RateResult:
        """A result from ``to_json``'s document; ValueError naming what is missing."""
        if not isinstance(document, dict) or "histograms" not in document:
            raise ValueError("not the --json output of echo-client rate (no histograms)")
        try:
            raw = document["histograms"]
            result = cls(
                target_rate=float(document["target_rate"]),
                duration_s=float(document["duration_s"]),
                size=int(document["size"]),
                connections=int(document["connections"]),
                connected=int(document["connected"]),
                processes=int(document["processes"]),
                hosts=int(document["hosts"]),
                sent=int(document["sent"]),
                sent_in_window=int(document["sent_in_window"]),
                received=int(document["received"]),
                late_sends=int(document["late_sends"]),
                errors=Counter({str(k): int(v) for k, v in document["errors"].items()}),
                corrected=Histogram.from_json(raw["corrected"]),
                uncorrected=Histogram.from_json(raw["uncorrected"]),
                lateness=Histogram.from_json(raw["lateness"]),
                connect=Histogram.from_json(raw["connect"]),
            )
            for index, second in raw["seconds"].items():
                result.seconds[int(index)] = Second(
                    Histogram.from_json(second["corrected"]),
                    Histogram.from_json(second["uncorrected"]),
                    int(second["sent"]),
                )
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not the --json output of echo-client rate (missing {error})") from None
        return result
