"""SPEAR's trace builder: one prompt's judged answers become wins, losses and rollout counts.

Both sources of verdicts build their traces here, with the same ``spear`` settings: the oracle rollout
(:meth:`fedspear.algorithms.spear.Spear.rollout`, verdicts and hints from the task or a feedback source) and
training from a served client's trace store (:func:`fedspear.serve.learning.rollout_from_interactions`, verdicts
and hints from people). A *chain* is one prompt x0, its first answer y0 and the revisions its hints asked for,
each with its verdict; it is closed at its first accepted answer or after its last allowed revision::

    y0 accepted                         -> win  (x0, y0)
    revision k accepted (a verified fix) -> win  (x0, y_k) and loss (x0, y0) with confidence spear.confidence_fixed
    nothing accepted                    -> loss (x0, y0) with confidence spear.confidence_unfixed

A revision is trained under the original prompt x0, so the hint is distilled into the policy. Answers are the
sampled token ids (nothing decoded and re-encoded); the unlikelihood mask and the ``model.max_seq_len`` cut of
the losses are applied when training (:meth:`fedspear.algorithms.spear.Spear.train`), the same for both sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fedspear.algorithms.base import Trace
from fedspear.algorithms.settings import SpearSettings


@dataclass
class FeedbackRollout:
    """One client's rollout with feedback-guided revisions.

    Attributes:
        wins: win traces (x0, y0) and (x0, y').
        losses: lose traces (x0, y0) with confidence 1.0 (fixed later) or 0.5 (never fixed).
        metrics: counts and timings of the rollout.
    """

    wins: list[Trace] = field(default_factory=list)
    losses: list[Trace] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def add_chain(rollout: FeedbackRollout, settings: SpearSettings, x0: list[int],
              answers: Sequence[tuple[list[int], str]], verdicts: Sequence[bool]) -> None:
    """Add one closed chain's traces (module docstring) and counts to ``rollout``.

    Counts, in ``rollout.metrics``: ``prompts``; ``wins_y0`` or ``needs_revision``; for each revision k,
    ``revision_attempts_<k>`` and, when accepted, ``revision_successes_<k>``. The outcome metrics follow from these
    once every chain is in (:func:`outcome_metrics`).

    Args:
        rollout: the client's rollout, changed in place.
        settings: the ``spear`` section (``confidence_fixed``, ``confidence_unfixed``).
        x0: the task prompt's token ids.
        answers: (sampled ids, decoded text) of y0 then of each revision, in order.
        verdicts: whether each answer was accepted; only the last may be.

    Raises:
        ValueError: answers and verdicts differ in length, there are none, or an accepted answer is not the last.
    """
    if not answers or len(answers) != len(verdicts) or any(verdicts[:-1]):
        raise ValueError("a chain is one or more answers, one verdict each, closed at its first accepted answer")
    m = rollout.metrics
    m["prompts"] = m.get("prompts", 0) + 1
    (y0_ids, y0_text), accepted = answers[0], bool(verdicts[-1])
    if len(answers) == 1 and accepted:
        m["wins_y0"] = m.get("wins_y0", 0) + 1
        rollout.wins.append(Trace(x0, y0_ids, text=y0_text))
        return
    m["needs_revision"] = m.get("needs_revision", 0) + 1
    for attempt, verdict in enumerate(verdicts[1:], start=1):
        count_revision(m, attempt, bool(verdict))
    if accepted:  # the last revision fixed y0
        fix_ids, fix_text = answers[-1]
        rollout.wins.append(Trace(x0, fix_ids, text=fix_text))
        rollout.losses.append(Trace(x0, y0_ids, confidence=settings.confidence_fixed, text=y0_text))
    else:
        rollout.losses.append(Trace(x0, y0_ids, confidence=settings.confidence_unfixed, text=y0_text))


def count_revision(metrics: dict[str, float], attempt: int, accepted: bool) -> None:
    """Count one revision (attempt index >= 1) and, when its verdict accepted it, its success, in ``metrics``
    (``revision_attempts_<attempt>``, ``revision_successes_<attempt>``)."""
    metrics[f"revision_attempts_{attempt}"] = metrics.get(f"revision_attempts_{attempt}", 0) + 1
    if accepted:
        metrics[f"revision_successes_{attempt}"] = metrics.get(f"revision_successes_{attempt}", 0) + 1


def outcome_metrics(metrics: dict[str, float], num_losses: int) -> None:
    """SPEAR's rollout outcome metrics from its counts, in place: ``y0_accuracy`` = wins_y0 / prompts,
    ``wins_revision`` = ``revision_successes`` = the sum of ``revision_successes_<k>``, ``losses_fixed`` (each
    fixed loss is the y0 of one successful revision) and ``losses_unfixed`` = num_losses - losses_fixed.

    The one definition the oracle rollout (:meth:`fedspear.algorithms.spear.Spear.rollout`) and training from
    people's feedback (:func:`fedspear.serve.learning.rollout_from_interactions`) share.
    """
    metrics["y0_accuracy"] = metrics.get("wins_y0", 0) / max(1, metrics.get("prompts", 0))
    metrics["wins_revision"] = sum(v for k, v in metrics.items() if k.startswith("revision_successes_"))
    metrics["revision_successes"] = metrics["wins_revision"]
    metrics["losses_fixed"] = metrics["wins_revision"]
    metrics["losses_unfixed"] = num_losses - metrics["wins_revision"]
