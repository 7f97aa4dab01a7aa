"""Log-bucketed histograms of durations: about 2% resolution in a few kilobytes.

A histogram is a ``Counter`` of bucket numbers, so partial histograms from worker
processes pickle small and merge with ``Counter.update``. Used by the log analytics
(server.analyze) and by the load generator (client.loadgen). Pure functions: any
thread or process may call them.
"""

from __future__ import annotations

import math
from collections import Counter

BUCKETS_PER_OCTAVE = 32  # resolution: 2 ** (1/32) ~ 2.2%


def bucket(seconds: float) -> int:
    """The bucket of a duration (anything under a microsecond counts as one)."""
    return int(math.log2(max(seconds * 1e6, 1.0)) * BUCKETS_PER_OCTAVE)


def percentile(histogram: Counter[int], fraction: float) -> float:
    """The duration (seconds) below which ``fraction`` of the samples fall; 0 if empty."""
    total = sum(histogram.values())
    if not total:
        return 0.0
    rank = fraction * total
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return float(2 ** ((index + 0.5) / BUCKETS_PER_OCTAVE) / 1e6)
    return 0.0
