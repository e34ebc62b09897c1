"""Who watches a run's rounds: the :class:`RoundObserver` protocol and the observers every run has.

A :class:`~fedspear.federation.server.FederatedServer` makes each round's :class:`~fedspear.federation.rounds.RoundRow`
and hands it to its observers, in their order (``server.observers``):

1. :class:`RecordWriter`: appends the row to metrics.jsonl, then commits the checkpoint that records it (the order a
   resume relies on: a checkpoint never names a row that is not on disk);
2. :class:`fedspear.tracking.Trackers`: the ``logging.report_to`` trackers (TensorBoard, W&B);
3. :class:`ConsoleSummary`: one line per round on the console (:func:`summary_line`);
4. the observers given to the server (``FederatedServer(..., observers=[...])``), e.g. a notebook's live plot.

Observers run in the round loop's process and thread; an exception in one stops the run as any other failure does
(the run folder keeps what was committed, ``fedspear run --resume`` continues it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm.auto import tqdm

from fedspear.federation.rounds import RoundRow, as_row

if TYPE_CHECKING:
    from fedspear.records import RunRecord


class RoundObserver(Protocol):
    """What the server tells an observer. Subclass it and define the hooks you need (the others do nothing).

    Order: :meth:`on_start` once, then :meth:`on_round` for every round this process runs (round 0 of a new run,
    or the rounds after a resumed checkpoint), then :meth:`on_finish`; or :meth:`on_abort` when the run stops,
    fails or is interrupted (possibly before any :meth:`on_start`).
    """

    def on_start(self) -> None:
        """The run is about to run its first round in this process (the server calls it before round 0 or the
        first resumed round, at the latest right before this observer's first :meth:`on_round`). A tracker opens
        here, so one that cannot start stops the run before any work."""

    def on_round(self, row: RoundRow) -> None:
        """A round ended: ``row`` is its row (with its evaluation, if the round had one), as metrics.jsonl holds
        it. Observers after the :class:`RecordWriter` see a row that is already on disk and checkpointed."""

    def on_finish(self, final_adapter: Path, report: Path) -> None:
        """The run finished: ``final_adapter`` is the folder of the last round's global adapter, ``report`` the
        run's report.md (both written)."""

    def on_abort(self, reason: str) -> None:
        """The run stopped (``fl.max_idle_rounds``), failed or was interrupted: ``reason`` is
        ``"ExceptionType: message"``."""


class RecordWriter(RoundObserver):
    """Writes each round's row to the run folder's metrics.jsonl (flushed and fsync-ed), then commits the
    checkpoint that records it.

    Args:
        record: the run folder.
        checkpoint: called as ``checkpoint(round)`` right after the row is written (the server's
            :meth:`~fedspear.federation.server.FederatedServer.save_checkpoint`); None = rows only.
    """

    def __init__(self, record: RunRecord, checkpoint: Callable[[int], None] | None = None) -> None:
        self.record = record
        self.checkpoint = checkpoint

    def on_round(self, row: RoundRow) -> None:
        self.record.append_metrics(row)
        if self.checkpoint is not None and row.round is not None:
            self.checkpoint(row.round)


class ConsoleSummary(RoundObserver):
    """One line per round (:func:`summary_line`) and the run's last line, printed above the progress bar.

    Args:
        rounds: the run's ``fl.rounds``.
        run_dir: the run folder (named by the last line).
    """

    def __init__(self, rounds: int, run_dir: Path) -> None:
        self.rounds = rounds
        self.run_dir = run_dir

    def on_round(self, row: RoundRow) -> None:
        tqdm.write(summary_line(row, self.rounds))

    def on_finish(self, final_adapter: Path, report: Path) -> None:
        tqdm.write(f"run finished: {self.run_dir} (report: {report})")


def summary_line(row: RoundRow | Mapping[str, Any], rounds: int) -> str:
    """One human-readable line for a round row (printed after every round; a metrics.jsonl dict works too)."""
    row = as_row(row)
    agg, ev = row.aggregate or {}, row.eval
    parts = [f"round {row.round:>3}/{rounds}"]
    if agg:
        y0 = agg.get("y0_accuracy")
        parts += [f"lr {row.lr:.2e}", f"y0 acc {y0:.2f}" if y0 is not None else "y0 acc -"]
        if agg.get("samples_y0"):  # group methods (GRPO, RLTF-SD): samples and revisions, no wins or losses
            parts.append(f"samples {agg['samples_y0']}" + (f" (revised {agg['needs_revision']}, fixed "
                                                            f"{agg['revision_successes']})"
                                                            if agg.get("needs_revision") else ""))
        else:
            parts += [f"wins {agg['wins']} (rev {agg['wins_revision']})", f"losses {agg['losses']}"]
        parts.append(f"{row.value('time', 'round_s'):.1f}s")
        failed = row.value("aggregation", "num_failed_clients")
        if failed:
            parts.append(f"{failed} failed")
    if ev and ev.get("diverged"):
        parts.append("eval DIVERGED (non-finite scores, no accuracy)")
    elif ev and isinstance(ev.get("accuracy"), (int, float)):
        groups = " ".join(f"{g} {a:.2f}" for g, a in ev.get("groups", {}).items() if isinstance(a, (int, float)))
        parts.append(f"eval {ev['accuracy']:.3f}" + (f" ({groups})" if groups else ""))
    if row.stopped:
        parts.append(f"STOPPED: {row.stopped}")
    return " | ".join(parts)
