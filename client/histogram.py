"""Histogram: exact-count, log-linear buckets of integer nanoseconds, 3 significant digits.

The layout is HdrHistogram's: values below 2,048 ns have a bucket each (exact); above,
every power-of-two range is cut into 1,024 equal sub-buckets, so a bucket is never wider
than 1/1,024 of its lower bound and the midpoint reported for it is within 0.05% of any
value in it. The maximum and minimum are kept exactly.

Counts live in a sparse dict (bucket index -> count), so a histogram of a minute of load
is a few kilobytes, pickles small between processes and is written to JSON as is.
Merging adds counts: the merge of N histograms is, bucket for bucket, the histogram of
all their samples (``Histogram.__eq__`` compares exactly that).

A Histogram is a plain mutable object with no lock: one thread owns it (a rate worker's
loop), and hands it over only when it is done (pickled to the parent, or returned).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

SUB_BITS = 10  # 1,024 sub-buckets per octave: resolution 2**-10 ~ 0.098% < 10**-3
_SUB = 1 << SUB_BITS
_EXACT_BELOW = 2 * _SUB  # values under 2,048 ns are their own bucket

PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999))


def bucket_of(value: int) -> int:
    """The bucket index of a non-negative integer value."""
    if value < _EXACT_BELOW:
        return max(value, 0)
    shift = value.bit_length() - SUB_BITS - 1  # >= 1: value >> shift is in [1024, 2048)
    return _EXACT_BELOW + (shift - 1) * _SUB + (value >> shift) - _SUB


def bucket_bounds(index: int) -> tuple[int, int]:
    """[low, high) of the values that fall in bucket ``index``."""
    if index < _EXACT_BELOW:
        return index, index + 1
    shift, sub = divmod(index - _EXACT_BELOW, _SUB)
    shift += 1
    low = (sub + _SUB) << shift
    return low, low + (1 << shift)


class Histogram:
    """Counts of integer samples (nanoseconds by convention) in log-linear buckets."""

    __slots__ = ("counts", "total", "max", "min")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.max = 0
        self.min = 0

    def record(self, value: int, count: int = 1) -> None:
        value = max(int(value), 0)
        index = bucket_of(value)
        self.counts[index] = self.counts.get(index, 0) + count
        if self.total == 0 or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.total += count

    def record_seconds(self, seconds: float) -> None:
        self.record(int(seconds * 1e9))

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other``'s samples to this one; returns self."""
        if not other.total:
            return self
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.min = other.min if not self.total else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.total += other.total
        return self

    @classmethod
    def merged(cls, parts: Iterable[Histogram]) -> Histogram:
        result = cls()
        for part in parts:
            result.merge(part)
        return result

    def value_at(self, fraction: float) -> int:
        """The sample of rank ceil(fraction * total) (as an exact sorted list would give),
        to within its bucket: the bucket's midpoint, clamped to the exact min and max."""
        if not self.total:
            return 0
        rank = min(max(1, math.ceil(round(fraction * self.total, 6))), self.total)  # round: 0.99 * 1000 is 990.0000001
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                low, high = bucket_bounds(index)
                return min(max((low + high - 1) // 2, self.min), self.max)
        return self.max

    def summary_ms(self) -> dict[str, float]:
        """p50, p90, p99, p999 and max in milliseconds (from nanosecond samples)."""
        values = {name: self.value_at(fraction) / 1e6 for name, fraction in PERCENTILES}
        values["max"] = self.max / 1e6
        return {name: round(value, 4) for name, value in values.items()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (self.counts, self.total, self.max, self.min) == (other.counts, other.total, other.max, other.min)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def to_json(self) -> dict[str, Any]:
        return {"total": self.total, "min": self.min, "max": self.max, "counts": sorted(self.counts.items())}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Histogram:
        """The inverse of ``to_json``; ValueError if the document is not one."""
        try:
            result = cls()
            result.counts = {int(index): int(count) for index, count in document["counts"]}
            result.total, result.min, result.max = int(document["total"]), int(document["min"]), int(document["max"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a histogram: {error}") from None
        if sum(result.counts.values()) != result.total or any(c <= 0 for c in result.counts.values()):
            raise ValueError("not a histogram: the counts do not add up to its total")
        return result
