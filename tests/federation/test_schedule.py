"""Round learning-rate schedule and evaluation rounds."""

from __future__ import annotations

import math

import pytest

from fedspear.config import DataConfig, OptimConfig
from fedspear.federation.schedule import round_lr, should_evaluate

LR, LR_MIN = 2e-4, 1e-5


def test_constant_without_warmup():
    cfg = OptimConfig(lr=LR, lr_min=LR_MIN, warmup_ratio=0.1, use_warmup=False)
    assert {round_lr(r, 100, cfg) for r in (1, 10, 55, 100)} == {LR}


def test_warmup_then_cosine_rounds_100():
    cfg = OptimConfig(lr=LR, lr_min=LR_MIN, warmup_ratio=0.1, use_warmup=True)
    # w = int(0.1 * 100) = 10 warm-up rounds
    assert round_lr(1, 100, cfg) == pytest.approx(0.1 * LR)
    assert round_lr(5, 100, cfg) == pytest.approx(0.5 * LR)
    assert round_lr(10, 100, cfg) == pytest.approx(LR)
    # round 55: (55 - 10) / 90 = 0.5, cos(pi / 2) = 0 -> halfway between lr and lr_min
    assert round_lr(55, 100, cfg) == pytest.approx(LR_MIN + (LR - LR_MIN) / 2)
    assert round_lr(11, 100, cfg) == pytest.approx(LR_MIN + (LR - LR_MIN) * 0.5 * (1 + math.cos(math.pi / 90)))
    assert round_lr(100, 100, cfg) == pytest.approx(LR_MIN)
    lrs = [round_lr(r, 100, cfg) for r in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # decays monotonically after warm-up


def test_no_warmup_rounds_is_pure_cosine():
    cfg = OptimConfig(lr=LR, lr_min=LR_MIN, warmup_ratio=0.0, use_warmup=True)
    assert round_lr(0, 4, cfg) == pytest.approx(LR)
    assert round_lr(2, 4, cfg) == pytest.approx(LR_MIN + (LR - LR_MIN) / 2)  # progress 2/4
    assert round_lr(4, 4, cfg) == pytest.approx(LR_MIN)


def test_all_warmup_guard():
    cfg = OptimConfig(lr=LR, lr_min=LR_MIN, warmup_ratio=1.0, use_warmup=True)
    # w = 5 = rounds: no cosine phase, and no division by rounds - w = 0
    assert round_lr(3, 5, cfg) == pytest.approx(0.6 * LR)
    assert round_lr(5, 5, cfg) == pytest.approx(LR)
    assert round_lr(6, 5, cfg) == pytest.approx(LR)


def _evaluated(rounds: int, **kwargs) -> list[int]:
    cfg = DataConfig(**kwargs)
    return [r for r in range(rounds + 1) if should_evaluate(r, rounds, cfg)]


def test_should_evaluate_rounds():
    assert _evaluated(20, eval_every=5, eval_every_round_up_to=3) == [0, 1, 2, 3, 5, 10, 15, 20]
    assert _evaluated(7, eval_every=5, eval_every_round_up_to=1) == [0, 1, 5, 7]
    assert _evaluated(6, eval_every=0, eval_every_round_up_to=0) == [0, 6]
    assert _evaluated(4, eval_every=5, eval_every_round_up_to=10) == [0, 1, 2, 3, 4]
