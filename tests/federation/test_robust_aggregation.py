"""Coordinate-wise median, trimmed mean and (multi-)Krum: hand-computed values, and one bad client in a federation."""

from __future__ import annotations

import pytest
import torch

from fedspear.config import ConfigError, FLConfig, load_config
from fedspear.federation.aggregation import (
    aggregate,
    build_server_optimizer,
    coordinate_median,
    krum_scores,
    multi_krum,
    trimmed_mean,
)


def _s(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32)}


def test_median_odd_and_even_counts():
    states = [_s(1, 10), _s(2, -5), _s(100, 0)]
    assert coordinate_median(states)["w"].tolist() == [2.0, 0.0]
    # even: mean of the two middle values per coordinate: (2+3)/2, (0+10)/2
    assert coordinate_median([*states, _s(3, 20)])["w"].tolist() == [2.5, 5.0]


def test_trimmed_mean_drops_b_from_each_end():
    states = [_s(v) for v in (1, 2, 3, 4, 100)]
    # beta 0.2 of 5 clients: b = 1, mean of 2, 3, 4
    assert trimmed_mean(states, 0.2)["w"].tolist() == [3.0]
    # beta 0.1: b = floor(0.5) = 0, the plain mean 110 / 5
    assert trimmed_mean(states, 0.1)["w"].tolist() == [22.0]
    with pytest.raises(ValueError, match="trim_ratio"):
        trimmed_mean(states, 0.5)


def test_krum_scores_and_selection_by_hand():
    # 1-D points 0, 1, 2, 10, 11; n=5, f=1: each score sums the n-f-2 = 2 smallest squared distances
    states = [_s(v) for v in (0, 1, 2, 10, 11)]
    assert krum_scores(states, 1) == pytest.approx([1 + 4, 1 + 1, 1 + 4, 1 + 64, 1 + 81])
    krum, chosen = multi_krum(states, 1, m=1)
    assert chosen == [1] and krum["w"].tolist() == [1.0]
    avg, chosen = multi_krum(states, 1, m=3)
    assert chosen == [0, 1, 2] and avg["w"].tolist() == [1.0]
    with pytest.raises(ValueError, match="more than 2f"):
        krum_scores(states[:4], 1)


def _federation(attack: str) -> tuple[dict[str, torch.Tensor], list[tuple[dict[str, torch.Tensor], float]]]:
    """Six honest clients moving the global (0, 0, 0) to about (1, 1, 1); client 0 attacks."""
    torch.manual_seed(0)
    honest = [{"w": torch.ones(3) + 0.05 * torch.randn(3)} for _ in range(6)]
    bad = {"w": -10.0 * torch.ones(3)} if attack == "sign_flip" else {"w": 50.0 * torch.ones(3)}
    global_state = {"w": torch.zeros(3)}
    return global_state, [(bad, 1.0)] + [(s, 1.0) for s in honest]


@pytest.mark.parametrize("attack", ["sign_flip", "scaled"])
def test_one_bad_client_pulls_fedavg_away_but_not_the_robust_rules(attack):
    global_state, results = _federation(attack)
    avg, _ = aggregate(global_state, results, None, FLConfig(aggregation="fedavg"))
    assert (avg["w"] - 1).abs().max() > 1.0  # FedAvg moved off the honest consensus
    for rule in ("median", "trimmed_mean", "krum", "multi_krum"):
        fl = FLConfig(aggregation=rule, trim_ratio=0.2, krum_f=1)
        new, info = aggregate(global_state, results, build_server_optimizer(fl), fl)
        assert (new["w"] - 1).abs().max() < 0.15, rule
        assert info["aggregation_rule"] == rule and info["num_aggregated"] == 7
        if "krum" in rule:
            assert 0 not in info["krum_selected"]


def test_krum_falls_back_to_median_with_too_few_updates_and_says_so():
    fl = FLConfig(aggregation="krum", krum_f=1)
    new, info = aggregate({"w": torch.zeros(1)}, [(_s(1), 1.0), (_s(2), 1.0), (_s(9), 1.0)], None, fl)
    assert new["w"].tolist() == [2.0] and info["aggregation_rule"].startswith("median (krum needs > 4")


def test_config_checks_robust_keys():
    with pytest.raises(ConfigError, match="fl.krum_f=2: Krum needs"):
        load_config(None, ["fl.aggregation=krum", "fl.krum_f=2", "fl.clients_per_round=5"])
    with pytest.raises(ConfigError, match="fl.trim_ratio"):
        load_config(None, ["fl.trim_ratio=0.5"])
    with pytest.raises(ConfigError, match="dp.mode: central DP"):
        load_config(None, ["fl.aggregation=median", "dp.mode=central"])
