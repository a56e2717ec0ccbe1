"""Summary statistics for the benchmark: percentiles, spreads, histogram quantiles, a line fit."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) with linear interpolation between ranks.

    This is numpy's default ("linear") method. Raises ValueError on an empty sequence.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Count, centre and spread of a sample, in the sample's unit."""

    count: int
    min: float
    p50: float
    p99: float
    max: float
    iqr: float  # p75 - p25
    mean: float

    def as_dict(self, digits: int = 3) -> dict[str, Any]:
        return {
            key: (round(value, digits) if isinstance(value, float) else value)
            for key, value in asdict(self).items()
        }


def summarize(values: Sequence[float]) -> Summary | None:
    """Summarize a sample; None when it is empty."""
    if not values:
        return None
    return Summary(
        count=len(values),
        min=min(values),
        p50=percentile(values, 50),
        p99=percentile(values, 99),
        max=max(values),
        iqr=percentile(values, 75) - percentile(values, 25),
        mean=sum(values) / len(values),
    )


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Estimate the ``q`` quantile (0..1) from cumulative histogram buckets, as PromQL does.

    ``buckets`` maps each upper bound ``le`` (with ``math.inf`` for +Inf) to the cumulative
    count. Returns None when there are no observations. A quantile that falls in the +Inf
    bucket returns the largest finite bound, as PromQL's histogram_quantile does.
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (
                count - previous_count
            )
        previous_bound, previous_count = bound, count
    return previous_bound


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Fit y = intercept + slope * x by least squares; None with fewer than two distinct x."""
    if len(xs) != len(ys):
        raise ValueError(f"{len(xs)} x values but {len(ys)} y values")
    if len(set(xs)) < 2:
        return None
    n = len(xs)
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    return mean_y - slope * mean_x, slope
