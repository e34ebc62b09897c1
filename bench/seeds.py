"""Summaries over seeds shared by the learning benches (``quality.py``, ``compare_world.py``)."""

from __future__ import annotations

import statistics

Point = tuple[float, float]


def mean_std(values: list[float], spec: str = ".3f") -> str:
    """``mean ± std`` of ``values`` formatted with ``spec`` (the std without a sign); one value alone; "-" for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.mean(values), spec)} ± {format(statistics.stdev(values), spec.lstrip('+'))}"


def mean_curve(curves: list[list[Point]]) -> tuple[list[Point], list[float] | None]:
    """The pointwise mean of ``curves`` (cut to the shortest, x from the first) and the pointwise std (None for one
    curve)."""
    n = min(len(c) for c in curves)
    ys = [[c[i][1] for c in curves] for i in range(n)]
    mean = [(curves[0][i][0], statistics.mean(v)) for i, v in enumerate(ys)]
    return mean, [statistics.stdev(v) for v in ys] if len(curves) > 1 else None
