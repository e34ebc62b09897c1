"""DP values no run can use are refused when the config is checked (issue 23, class 2): sigma and the noise std
sigma*C have bounds, and epsilon never overflows."""

from __future__ import annotations

import math

import pytest

from fedspear import privacy
from fedspear.cli import main
from fedspear.config import MAX_NOISE_MULTIPLIER, ConfigError, load_config


def test_check_refuses_a_noise_multiplier_above_the_bound(capsys):
    assert main(["check", "dp.mode=central", "dp.noise_multiplier=1e308"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fedspear: error: dp.noise_multiplier: must be in [0, 10000], got 1e+308 (above 10000 the noise "
                   "erases every update and the privacy accountant leaves double precision)"]


def test_check_refuses_a_noise_std_that_float32_cannot_hold():
    with pytest.raises(ConfigError, match=r"^dp.clip_norm: times dp.noise_multiplier is the noise std sigma\*C = "
                                          r"1e\+35; keep it <= 1e\+30"):
        load_config(None, ["dp.mode=local", "dp.noise_multiplier=1e4", "dp.clip_norm=1e31"])


def test_the_bounds_themselves_are_accepted():
    cfg = load_config(None, ["dp.mode=central", f"dp.noise_multiplier={MAX_NOISE_MULTIPLIER}", "dp.clip_norm=1e26"])
    assert cfg.dp.noise_multiplier == 1e4
    load_config(None, ["dp.clip_norm=1e300"])  # without DP no noise is drawn: no bound on C


def test_epsilon_is_finite_for_any_sigma_and_uses_the_bound_above_it():
    at_bound = privacy.epsilon(MAX_NOISE_MULTIPLIER, 0.5, 10, 1e-5)
    assert math.isfinite(at_bound) and 0 <= at_bound < 1e-2
    assert privacy.epsilon(1e308, 0.5, 10, 1e-5) == at_bound  # dp-accounting alone raises OverflowError here
    assert privacy.epsilon(2.0, 0.5, 10, 1e-5) > at_bound
