"""Feedback-SFT client update: SPEAR without unlikelihood (SPEAR.md section 4).

Objective, per micro-step of B wins W (drawn with replacement when fewer):

    L = λ_win · ( − Σ_{i∈W} Σ_t log p_θ(y_t | x0_i, y_<t) / Σ_{i∈W} |y_i| ) + λ_anchor · Σ_k mean((θ_k − θ_global,k)²)

Wins are correct first answers (x0, y0) and feedback-guided revisions trained under the original prompt
(x0, y'). Wrong answers that no revision fixed are discarded. A client with no wins returns no update.

Run: ``fedspear run --config arc_challenge-qwen2.5-1.5b algorithm.name=feedback_sft``.
"""

from __future__ import annotations

from fedspear.algorithms import spear
from fedspear.algorithms.base import ClientJob, LocalUpdateResult
from fedspear.models import Engine

FeedbackRollout = spear.FeedbackRollout


def rollout(engine: Engine, jobs: list[ClientJob]) -> list[FeedbackRollout]:
    """The same rollout as SPEAR: first answers, verification, feedback-guided revisions."""
    return spear.feedback_rollout(engine, jobs)


def train(engine: Engine, job: ClientJob, data: FeedbackRollout) -> LocalUpdateResult:
    """Likelihood on the wins only (λ_lose = 0, lose traces unused)."""
    return spear.train(engine, job, data, lambda_lose=0.0)


def local_update(engine: Engine, job: ClientJob) -> LocalUpdateResult:
    """One client's whole feedback-SFT round."""
    return train(engine, job, rollout(engine, [job])[0])
