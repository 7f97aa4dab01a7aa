"""client.histogram: percentiles against an exact sorted list, exact merges, the JSON form."""

from __future__ import annotations

import math
import random

import pytest

from client.histogram import Histogram, bucket_bounds, bucket_of


def exact(ordered: list[int], fraction: float) -> int:
    return ordered[min(max(1, math.ceil(round(fraction * len(ordered), 6))), len(ordered)) - 1]


def seeded_latencies(count: int, seed: int) -> list[int]:
    """Nanoseconds over six decades: a log-normal body around 200 us and a 1% tail of stalls."""
    rng = random.Random(seed)
    body = [int(rng.lognormvariate(math.log(200_000), 1.0)) for _ in range(count - count // 100)]
    tail = [rng.randrange(50_000_000, 2_000_000_000) for _ in range(count // 100)]
    return body + tail + [rng.randrange(0, 2048) for _ in range(10)]


def test_every_value_falls_in_its_bucket_and_buckets_are_under_a_thousandth_wide() -> None:
    rng = random.Random(7)
    for value in [*range(0, 5000), *(rng.randrange(1, 1 << 50) for _ in range(20_000))]:
        low, high = bucket_bounds(bucket_of(value))
        assert low <= value < high
        assert high - low == 1 or (high - low) / low <= 1 / 1024
    assert [bucket_of(v) for v in (2047, 2048, 2049, 2050, 4095, 4096)] == [2047, 2048, 2048, 2049, 3071, 3072]


def test_percentiles_of_a_million_samples_are_within_a_thousandth_of_the_sorted_list() -> None:
    samples = seeded_latencies(1_000_000, seed=22)
    histogram = Histogram()
    for value in samples:
        histogram.record(value)
    ordered = sorted(samples)
    assert histogram.total == len(samples)
    assert histogram.max == ordered[-1] and histogram.min == ordered[0]
    for fraction in (0.0, 0.001, 0.1, 0.5, 0.9, 0.99, 0.995, 0.999, 0.9999, 1.0):
        want = exact(ordered, fraction)
        got = histogram.value_at(fraction)
        assert abs(got - want) <= max(want * 0.001, 1), (fraction, got, want)


def test_a_merge_of_four_histograms_equals_the_histogram_of_the_union() -> None:
    parts = [seeded_latencies(50_000, seed=seed) for seed in range(4)]
    histograms = []
    for part in parts:
        histogram = Histogram()
        for value in part:
            histogram.record(value)
        histograms.append(histogram)
    union = Histogram()
    for value in (v for part in parts for v in part):
        union.record(value)
    merged = Histogram.merged(histograms)
    assert merged == union
    assert merged.summary_ms() == union.summary_ms()
    assert merged != histograms[0]


def test_json_round_trip_and_a_broken_document_is_refused() -> None:
    histogram = Histogram()
    for value in seeded_latencies(1000, seed=1):
        histogram.record(value)
    assert Histogram.from_json(histogram.to_json()) == histogram
    document = histogram.to_json()
    document["total"] += 1
    with pytest.raises(ValueError, match="do not add up"):
        Histogram.from_json(document)
    with pytest.raises(ValueError, match="not a histogram"):
        Histogram.from_json({"counts": "x"})


def test_an_empty_histogram_reports_zeros() -> None:
    assert Histogram().summary_ms() == {"p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0}
