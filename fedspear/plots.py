"""PNG plots of a run's metrics (matplotlib, Agg canvas, imported only when a plot is drawn).

Figures are built as ``matplotlib.figure.Figure`` objects on an Agg canvas, never through pyplot, so
plotting touches no global state and needs no display. Each function returns the written path, or None
(writing nothing) when the metrics hold nothing to plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedspear.federation.rounds import RoundRow

Point = tuple[float, float]


def nested_get(row: Any, *keys: str) -> Any:
    """``row[k1][k2]...``, or None where a level is missing or not a mapping."""
    value: Any = row
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def points(metrics: list[RoundRow], getter: Callable[[RoundRow], Any]) -> list[Point]:
    """(round, value) for every round row where ``getter(row)`` is a finite number.

    Args:
        metrics: a run's rows (:meth:`fedspear.records.RunRecord.read_rows`); rows without a round are left out.
        getter: extracts the value from a row; may return None.

    Returns:
        The points in row order.
    """
    out: list[Point] = []
    for row in metrics:
        value = getter(row)
        if row.round is not None and _is_number(value):
            out.append((float(row.round), float(value)))
    return out


def plot_series(series: dict[str, list[Point]], title: str, xlabel: str, ylabel: str, path: Path,
                spread: dict[str, list[float]] | None = None) -> Path | None:
    """Line plot of several named series, one line with markers each.

    Args:
        series: label -> [(x, y), ...]; empty series are left out of the plot and legend.
        title: figure title.
        xlabel: x-axis label.
        ylabel: y-axis label.
        path: PNG file to write (parent folders are created).
        spread: optional label -> one half-width per point (e.g. the std over seeds), drawn as a band y ± w.

    Returns:
        ``path``, or None when every series is empty (nothing written).
    """
    nonempty = {label: pts for label, pts in series.items() if pts}
    if not nonempty:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.0, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for label, pts in nonempty.items():
        xs, ys = zip(*pts, strict=True)
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=label)
        width = (spread or {}).get(label)
        if width and len(width) == len(ys):
            ax.fill_between(xs, [y - w for y, w in zip(ys, width)], [y + w for y, w in zip(ys, width)],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if all(float(x).is_integer() for pts in nonempty.values() for x, _ in pts):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds: no 0.5 ticks
    if len(nonempty) > 1:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_accuracy(metrics: list[RoundRow], path: Path) -> Path | None:
    """Evaluation accuracy per round, plus one line per ``eval.groups`` entry when present.

    Args:
        metrics: a run's rows.
        path: PNG file to write.

    Returns:
        ``path``, or None when no row has an evaluation accuracy.
    """
    series: dict[str, list[Point]] = {"overall": points(metrics, lambda r: r.value("eval", "accuracy"))}
    group_names: list[str] = []
    for row in metrics:
        groups = row.value("eval", "groups")
        if isinstance(groups, dict):
            group_names.extend(name for name in groups if name not in group_names)
    for name in group_names:
        series[f"group: {name}"] = points(metrics, lambda r, n=name: nested_get(r.eval, "groups", n))
    if not series["overall"]:
        return None
    return plot_series(series, "Evaluation accuracy", "round", "accuracy", path)


def plot_revisions(metrics: list[RoundRow], path: Path) -> Path | None:
    """Successful revisions and samples needing revision per round (summed over the round's clients).

    Args:
        metrics: a run's rows.
        path: PNG file to write.

    Returns:
        ``path``, or None when no row reports either count.
    """
    series = {
        "revision successes": points(metrics, lambda r: r.value("aggregate", "revision_successes")),
        "samples needing revision": points(metrics, lambda r: r.value("aggregate", "needs_revision")),
    }
    return plot_series(series, "Feedback-guided revisions", "round", "samples", path)
