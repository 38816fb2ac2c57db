"""Small statistics helpers: percentiles and summaries of millisecond samples."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    fraction = rank - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """n, min, p50, p95, p99, max and mean of `values` (None where there are no values)."""
    return {
        "n": len(values),
        "min": min(values) if values else None,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": sum(values) / len(values) if values else None,
    }


def p50_difference_interval(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, seed: int = 1
) -> tuple[float, float] | None:
    """A 95 % bootstrap interval of p50(a) − p50(b) (each sample resampled on its own, with
    replacement; percentile interval); None if either is empty."""
    if not a or not b:
        return None
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        pa = percentile(rng.choices(a, k=len(a)), 50)
        pb = percentile(rng.choices(b, k=len(b)), 50)
        assert pa is not None and pb is not None
        diffs.append(pa - pb)
    low, high = percentile(diffs, 2.5), percentile(diffs, 97.5)
    assert low is not None and high is not None
    return low, high


def fmt_ms(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
