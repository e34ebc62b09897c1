"""Feedback-SFT client update: SPEAR without unlikelihood (docs/algorithms.md, "Feedback-SFT").

Objective, per micro-step of B wins W (drawn with replacement when fewer):

    L = λ_win · ( − Σ_{i∈W} Σ_t log p_θ(y_t | x0_i, y_<t) / Σ_{i∈W} |y_i| ) + λ_anchor · Σ_k mean((θ_k − θ_global,k)²)

Wins are correct first answers (x0, y0) and feedback-guided revisions trained under the original prompt
(x0, y'). Wrong answers that no revision fixed are discarded. A client with no wins returns no update.
It is :class:`~fedspear.algorithms.spear.Spear` built with ``lambda_lose = 0``: the same rollout, settings
section (``spear``) and training, with the losses dropped.

Run: ``fedspear run --config arc_challenge-qwen2.5-1.5b algorithm.name=feedback_sft``.
"""

from __future__ import annotations

from dataclasses import replace

from fedspear.algorithms.base import RunSettings
from fedspear.algorithms.settings import SpearSettings
from fedspear.algorithms.spear import Spear
from fedspear.tasks.base import Task


class FeedbackSFT(Spear):
    """SPEAR with ``lambda_lose = 0``: likelihood on the wins only."""

    name = "feedback_sft"

    def __init__(self, task: Task, run: RunSettings, settings: SpearSettings) -> None:
        super().__init__(task, run, replace(settings, lambda_lose=0.0))
