"""Mergeable latency histograms: log-spaced buckets, 8 per doubling of (ms + 1).

Bucket i holds the values v with 2^(i/8) <= v + 1 < 2^((i+1)/8). A percentile is reported as
its bucket's geometric middle, 2^((i+0.5)/8) - 1, so within about ±4.4 % of the exact value
(+1 ms). Stored as JSON {"i": count}: histograms of any grouping merge by adding counts, so p50
and p95 of any group come out of the rows without the samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

STEPS_PER_DOUBLING = 8


def bucket_of(ms: int) -> int:
    return math.floor(STEPS_PER_DOUBLING * math.log2(max(ms, 0) + 1))


def bucket_value(index: int) -> int:
    """The value reported for bucket `index` (ms)."""
    return round(2 ** ((index + 0.5) / STEPS_PER_DOUBLING) - 1)


def of_samples(samples: Iterable[int]) -> dict[str, int]:
    hist: dict[str, int] = {}
    for ms in samples:
        key = str(bucket_of(ms))
        hist[key] = hist.get(key, 0) + 1
    return hist


def merge_into(into: dict[str, int], other: Mapping[str, int]) -> dict[str, int]:
    for key, count in other.items():
        into[key] = into.get(key, 0) + int(count)
    return into


def percentile(hist: Mapping[str, int], p: float) -> int | None:
    """Nearest-rank percentile (0 < p <= 1) of the histogram; None when it is empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(p * total))
    seen = 0
    for index in sorted(int(k) for k in hist):
        seen += hist[str(index)]
        if seen >= rank:
            return bucket_value(index)
    raise AssertionError("unreachable")
