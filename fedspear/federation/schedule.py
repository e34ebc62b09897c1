"""Per-round schedules: the client learning rate and the rounds that run an evaluation.

Rounds are 1-based (round 0 is the evaluation of the initial global adapter, before any training).
"""

from __future__ import annotations

import math

from fedspear.config import DataConfig, OptimConfig


def round_lr(round_idx: int, rounds: int, optim_cfg: OptimConfig) -> float:
    """The learning rate every client uses throughout round ``round_idx`` (docs/algorithms.md: every algorithm uses the ``optim.lr`` schedule).

    With ``optim.use_warmup`` false it is the constant ``optim.lr``. Otherwise, with
    ``w = int(warmup_ratio * rounds)`` warm-up rounds: ``lr * r / w`` for ``r <= w``, then a cosine from
    ``lr`` down to ``lr_min``: ``lr_min + (lr - lr_min) * (1 + cos(pi * (r - w) / (rounds - w))) / 2``,
    which reaches ``lr_min`` at the last round. E.g. rounds=100, warmup_ratio=0.1: round 1 -> 0.1 * lr,
    round 10 -> lr, round 100 -> lr_min.

    Args:
        round_idx: 1-based round index (rounds past ``rounds`` keep the last round's value).
        rounds: total rounds ``fl.rounds``.
        optim_cfg: the ``optim`` section (lr, lr_min, warmup_ratio, use_warmup).

    Returns:
        The learning rate, a float.
    """
    lr, lr_min = float(optim_cfg.lr), float(optim_cfg.lr_min)
    if not optim_cfg.use_warmup:
        return lr
    warmup = int(optim_cfg.warmup_ratio * rounds)
    if warmup > 0 and round_idx <= warmup:
        return lr * round_idx / warmup
    if rounds <= warmup:  # every round is warm-up; only reached past the last round
        return lr
    progress = min(max((round_idx - warmup) / (rounds - warmup), 0.0), 1.0)
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def should_evaluate(round_idx: int, rounds: int, data_cfg: DataConfig) -> bool:
    """Whether to evaluate the global adapter after round ``round_idx``.

    True at round 0 (the initial adapter), at the last round, at every multiple of ``data.eval_every``
    (0 or less disables this rule) and at every round up to ``data.eval_every_round_up_to``.

    Args:
        round_idx: round index, 0 for the initial adapter.
        rounds: total rounds ``fl.rounds``.
        data_cfg: the ``data`` section (eval_every, eval_every_round_up_to).

    Returns:
        True when this round is evaluated.
    """
    if round_idx == 0 or round_idx == rounds or round_idx <= data_cfg.eval_every_round_up_to:
        return True
    return data_cfg.eval_every > 0 and round_idx % data_cfg.eval_every == 0
