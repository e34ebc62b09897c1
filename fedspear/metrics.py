"""One registry of metric names: what a client update may report, declared where the metrics are made.

Declarations (docs/algorithms.md, "Metrics"):

- every :class:`~fedspear.algorithms.base.Algorithm` subclass declares the names its rollout and training add in a
  class attribute ``metrics: tuple[str, ...]``; a class inherits its bases' declarations (the base class declares
  the training loop's ``steps``, ``skipped_steps``, ``tokens_trained``, ``training_s`` and the loss terms
  ``loss_*``), so a subclass lists only what it adds;
- the feedback user model declares its ``feedback_*`` counts (:data:`fedspear.feedback_noise.METRICS`);
- every client update's memory figures (:data:`fedspear.federation.resources.MEMORY_KEYS`);
- a name may be a pattern: ``*`` stands for 1-40 characters of ``[a-z0-9_]`` (``loss_*``), ``#`` for a number
  of one or two digits (``revision_attempts_#``).

Readers: the Flower wire's allow-list (:func:`is_declared`, every registered algorithm), the round's
``aggregate`` (:data:`ROUND_COUNTS`), the trackers (:data:`TRACKED`), the round summary line (the
``aggregate`` keys), the report (:data:`REPORTED`) and ``fedspear compare``'s totals (:data:`TOTALS`). A client's metric that no
declaration names still reaches the simulator's rows, but the wire drops it with a warning.

This module imports no torch: the algorithm registry is imported only when every algorithm's declarations are
asked for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from fedspear import feedback_noise
from fedspear.federation import resources  # the client update's memory figures (no torch)

# A metric name: lower-case letters, digits and underscores, at most 64 characters.
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_WILDCARDS = {"*": "[a-z0-9_]{1,40}", "#": "[0-9]{1,2}"}

# The round's "aggregate": these client metrics are summed over the round's clients, in this order (then
# y0_accuracy and needs_revision_pct are derived from them; fedspear.federation.server.sum_client_metrics).
ROUND_COUNTS = ("prompts", "samples_y0", "generations", "wins", "wins_y0", "wins_revision", "losses", "losses_used",
                "losses_fixed", "losses_unfixed", "revision_successes", "needs_revision", "tokens_generated",
                "tokens_trained", "tokens_forward", "steps", "skipped_steps", "skipped_no_wins",
                "generation_s", "feedback_s", "training_s")
# Ratios derived from ROUND_COUNTS in the aggregate.
DERIVED = ("y0_accuracy", "needs_revision_pct")
# Aggregate keys the trackers log as train/<key> (fedspear.tracking.round_scalars).
TRACKED = ("prompts", "wins", "wins_y0", "wins_revision", "losses", "losses_used", "revision_successes",
           "needs_revision", "y0_accuracy", "needs_revision_pct", "tokens_generated", "tokens_trained",
           "steps", "skipped_steps")
# Aggregate counts report.md totals over a run: (label, key) (fedspear.report).
REPORTED = (("tokens generated", "tokens_generated"), ("tokens trained", "tokens_trained"),
            ("successful revisions", "revision_successes"), ("samples needing revision", "needs_revision"))
# Client metrics fedspear compare totals over a run's training rounds (fedspear.compare.run_totals).
TOTALS = ("generations", "tokens_generated", "tokens_trained", "tokens_forward")


def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(_WILDCARDS.get(c, re.escape(c)) for c in pattern))


def matches(name: str, declared: Iterable[str]) -> bool:
    """Whether ``name`` is a well-formed metric name (:data:`NAME`) that one of ``declared`` names or matches."""
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        return False
    for pattern in declared:
        if pattern == name or (("*" in pattern or "#" in pattern) and _regex(pattern).fullmatch(name)):
            return True
    return False


def class_metrics(algorithm_cls: type) -> set[str]:
    """The names (and patterns) ``algorithm_cls`` and its bases declare in their ``metrics`` class attributes."""
    out: set[str] = set()
    for klass in algorithm_cls.__mro__:
        out.update(vars(klass).get("metrics", ()))
    return out


def declared_metrics(algorithm_cls: type | None = None) -> set[str]:
    """Every metric name (or pattern) a client update may report.

    Args:
        algorithm_cls: one algorithm class: its declarations (with its bases'); None: those of every algorithm in
            the registry (:data:`fedspear.algorithms.registry.ALGORITHMS`, built-ins and registered ones).

    Returns:
        The algorithm's declarations plus the feedback user model's ``feedback_*`` counts and the memory figures.
    """
    if algorithm_cls is None:
        from fedspear.algorithms.registry import ALGORITHMS  # imports torch

        classes: list[type] = list(ALGORITHMS.values())
    else:
        classes = [algorithm_cls]
    out = set(feedback_noise.METRICS) | set(resources.MEMORY_KEYS)
    for cls in classes:
        out |= class_metrics(cls)
    return out


def is_declared(name: str, algorithm_cls: type | None = None) -> bool:
    """Whether a client may report a metric called ``name`` (:func:`declared_metrics`, :func:`matches`)."""
    return matches(name, declared_metrics(algorithm_cls))


def numeric(value: Any) -> int | float | None:
    """``value`` as one finite number (bool as int, numpy/torch 0-d scalars unwrapped); None for anything else."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return numeric(item())
    return None
