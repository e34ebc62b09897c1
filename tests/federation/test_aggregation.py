"""FedAvg, FedAdam/FedYogi and the server round, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedspear.config import FLConfig
from fedspear.federation.aggregation import (
    ServerOptimizer,
    aggregate,
    build_server_optimizer,
    fedavg,
    is_finite_state,
)


def _state(w, b) -> dict[str, torch.Tensor]:
    return {"lora_A.weight": torch.tensor(w, dtype=torch.float32), "lora_B.bias": torch.tensor(b, dtype=torch.float32)}


def _ptrs(*states) -> set[int]:
    return {t.data_ptr() for s in states for t in s.values()}


def test_fedavg_of_distinct_updates_is_their_weighted_mean():
    a = _state([[1.0, 2.0], [3.0, 4.0]], [0.0, 8.0])
    b = _state([[5.0, 6.0], [7.0, 8.0]], [4.0, 0.0])
    avg = fedavg([a, b], [1.0, 3.0])
    # (1 * a + 3 * b) / 4: [[1+15, 2+18], [3+21, 4+24]] / 4 and [0+12, 8+0] / 4
    torch.testing.assert_close(avg["lora_A.weight"], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    torch.testing.assert_close(avg["lora_B.bias"], torch.tensor([3.0, 2.0]))
    # the reference's bug would return the last client's adapter
    assert not torch.equal(avg["lora_A.weight"], b["lora_A.weight"])


def test_k_identical_clients_equal_one():
    a = _state([[0.1, -0.3], [2.5, 1e-3]], [7.0, -1.25])
    avg = fedavg([a, a, a], [2.0, 5.0, 11.0])
    for key in a:
        torch.testing.assert_close(avg[key], a[key])


def test_zero_weight_and_missing_state_do_not_move_the_result():
    a = _state([[1.0, 2.0], [3.0, 4.0]], [0.0, 8.0])
    b = _state([[100.0, 100.0], [100.0, 100.0]], [100.0, 100.0])
    avg = fedavg([a, b, None], [3.0, 0.0, 5.0])
    for key in a:
        torch.testing.assert_close(avg[key], a[key])
    assert fedavg([None, b], [1.0, 0.0]) is None
    assert fedavg([], []) is None


def test_fedavg_rejects_bad_weights_and_layouts():
    a = _state([[1.0]], [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        fedavg([a, a], [1.0, -1.0])
    with pytest.raises(ValueError, match="weights"):
        fedavg([a], [1.0, 2.0])
    with pytest.raises(ValueError, match="keys differ"):
        fedavg([a, {"other": torch.zeros(1)}], [1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        fedavg([a, _state([[1.0, 2.0]], [1.0])], [1.0, 1.0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_result_shares_no_memory_with_inputs_and_keeps_dtype(dtype):
    a = {"w": torch.tensor([1.0, 2.0], dtype=dtype)}
    b = {"w": torch.tensor([2.0, 4.0], dtype=dtype)}
    single = fedavg([a], [2.0])
    both = fedavg([a, b], [1.0, 1.0])
    assert single["w"].dtype == dtype and both["w"].dtype == dtype
    assert not (_ptrs(single, both) & _ptrs(a, b))
    a["w"].add_(10.0)  # an in-place change of an input after aggregation
    b["w"].zero_()
    torch.testing.assert_close(single["w"], torch.tensor([1.0, 2.0], dtype=dtype))
    torch.testing.assert_close(both["w"], torch.tensor([1.5, 3.0], dtype=dtype))


def test_is_finite_state():
    assert is_finite_state(_state([[1.0]], [2.0]))
    assert not is_finite_state(_state([[1.0]], [float("nan")]))
    assert not is_finite_state(_state([[float("-inf")]], [0.0]))
    assert is_finite_state({"steps": torch.tensor([3], dtype=torch.int64)})


def test_aggregate_excludes_and_counts_nonfinite_clients():
    glob = _state([[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0])
    a = _state([[1.0, 2.0], [3.0, 4.0]], [0.0, 8.0])
    b = _state([[5.0, 6.0], [7.0, 8.0]], [4.0, 0.0])
    bad = _state([[float("nan"), 0.0], [0.0, 0.0]], [0.0, 0.0])
    new, info = aggregate(glob, [(a, 1.0), (bad, 5.0), (None, 0.0), (b, 3.0), (a, float("nan"))], None)
    torch.testing.assert_close(new["lora_A.weight"], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    torch.testing.assert_close(new["lora_B.bias"], torch.tensor([3.0, 2.0]))
    assert info == {"num_aggregated": 2, "num_excluded_nonfinite": 2, "num_without_update": 1, "total_weight": 4.0}


def test_aggregate_without_updates_returns_a_copy_of_global():
    glob = _state([[1.0, -1.0]], [0.5])
    opt = ServerOptimizer("fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=0.1)
    new, info = aggregate(glob, [(None, 0.0), (_state([[float("inf"), 0.0]], [0.0]), 2.0)], opt)
    assert info["num_aggregated"] == 0 and info["num_excluded_nonfinite"] == 1 and info["total_weight"] == 0.0
    for key in glob:
        assert torch.equal(new[key], glob[key])
    assert not (_ptrs(new) & _ptrs(glob))
    assert opt.num_steps == 0 and not opt.m  # the server optimizer did not step


def test_fedadam_one_step_by_hand():
    glob = {"w": torch.tensor([0.0, 1.0])}
    avg = {"w": torch.tensor([0.5, 0.0])}
    opt = ServerOptimizer("fedadam", lr=0.01, beta1=0.9, beta2=0.99, tau=0.1)
    new = opt.step(glob, avg)
    # delta = [0.5, -1.0]; m = 0.1 * delta = [0.05, -0.1]
    # v = 0.99 * tau^2 + 0.01 * delta^2 = 0.0099 + [0.0025, 0.01] = [0.0124, 0.0199]
    # new = global + 0.01 * m / (sqrt(v) + 0.1)
    expected = [0.0 + 0.01 * 0.05 / (math.sqrt(0.0124) + 0.1), 1.0 + 0.01 * -0.1 / (math.sqrt(0.0199) + 0.1)]
    torch.testing.assert_close(opt.m["w"], torch.tensor([0.05, -0.1]))
    torch.testing.assert_close(opt.v["w"], torch.tensor([0.0124, 0.0199]))
    torch.testing.assert_close(new["w"], torch.tensor(expected))
    assert opt.num_steps == 1
    assert glob["w"].tolist() == [0.0, 1.0]  # inputs untouched


def test_fedyogi_sign_rule_by_hand():
    glob = {"w": torch.tensor([0.0, 0.0])}
    avg = {"w": torch.tensor([0.05, 0.5])}
    opt = ServerOptimizer("fedyogi", lr=0.01, beta1=0.9, beta2=0.99, tau=0.1)
    new = opt.step(glob, avg)
    # v0 = tau^2 = 0.01; delta^2 = [0.0025, 0.25]
    # element 0: v0 > delta^2, sign +1 -> v = 0.01 - 0.01 * 0.0025 = 0.009975 (Adam would give 0.009925)
    # element 1: v0 < delta^2, sign -1 -> v = 0.01 + 0.01 * 0.25 = 0.0125
    torch.testing.assert_close(opt.v["w"], torch.tensor([0.009975, 0.0125]))
    m = [0.005, 0.05]
    expected = [0.01 * m[0] / (math.sqrt(0.009975) + 0.1), 0.01 * m[1] / (math.sqrt(0.0125) + 0.1)]
    torch.testing.assert_close(new["w"], torch.tensor(expected))


def test_aggregate_applies_the_server_optimizer_to_the_fedavg_mean():
    glob = {"w": torch.tensor([0.0, 1.0])}
    results = [({"w": torch.tensor([1.0, 0.0])}, 1.0), ({"w": torch.tensor([0.0, 0.0])}, 1.0)]
    opt = ServerOptimizer("fedadam", lr=0.01, beta1=0.9, beta2=0.99, tau=0.1)
    new, info = aggregate(glob, results, opt)
    # the mean [0.5, 0.0] is the avg of test_fedadam_one_step_by_hand
    expected = [0.01 * 0.05 / (math.sqrt(0.0124) + 0.1), 1.0 - 0.01 * 0.1 / (math.sqrt(0.0199) + 0.1)]
    torch.testing.assert_close(new["w"], torch.tensor(expected))
    assert info["num_aggregated"] == 2 and info["total_weight"] == 2.0


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi"])
def test_server_state_round_trip_continues_identically(kind, tmp_path):
    cfg = FLConfig(aggregation=kind, server_lr=0.05, server_tau=0.01)
    glob0 = _state([[0.1, -0.2], [0.3, 0.0]], [1.0, 2.0])
    avgs = [_state([[0.3, -0.1], [0.0, 0.5]], [1.5, 1.0]), _state([[0.2, 0.2], [0.1, -0.4]], [0.0, 2.5])]
    straight = ServerOptimizer.from_config(cfg)
    g1 = straight.step(glob0, avgs[0])
    g2 = straight.step(g1, avgs[1])

    first = ServerOptimizer.from_config(cfg)
    h1 = first.step(glob0, avgs[0])
    save_file({**h1, **first.to_tensors()}, str(tmp_path / "ckpt.safetensors"))
    loaded = load_file(str(tmp_path / "ckpt.safetensors"))
    resumed = ServerOptimizer.from_config(cfg).from_tensors(loaded)
    assert resumed.num_steps == 1
    h2 = resumed.step({k: loaded[k] for k in glob0}, avgs[1])
    for key in glob0:
        assert torch.equal(h2[key], g2[key])
        assert torch.equal(resumed.m[key], straight.m[key]) and torch.equal(resumed.v[key], straight.v[key])

    via_dict = ServerOptimizer.from_config(cfg)
    via_dict.load_state_dict(first.state_dict())
    assert torch.equal(via_dict.step(h1, avgs[1])["lora_A.weight"], g2["lora_A.weight"])


def test_server_optimizer_config_and_errors():
    assert build_server_optimizer(FLConfig(aggregation="fedavg")) is None
    opt = build_server_optimizer(FLConfig(aggregation="fedyogi", server_lr=0.02, server_beta1=0.8))
    assert (opt.kind, opt.lr, opt.beta1, opt.beta2, opt.tau) == ("fedyogi", 0.02, 0.8, 0.99, 5e-3)
    with pytest.raises(ValueError, match="one of"):
        ServerOptimizer("fedavg", 0.1, 0.9, 0.99, 0.1)
    adam = ServerOptimizer("fedadam", 0.1, 0.9, 0.99, 0.1)
    with pytest.raises(ValueError, match="fedadam"):
        adam.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="no server optimizer state"):
        adam.from_tensors({"w": torch.zeros(1)})


def _write_rule(tmp_path, monkeypatch, body: str) -> str:
    """A user's module ``user_agg_rules`` with ``body`` in it, importable for this test only."""
    import sys

    (tmp_path / "user_agg_rules.py").write_text("import torch\n\n" + body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_agg_rules", raising=False)
    return "user_agg_rules"


def test_a_users_aggregation_rule_by_dotted_path_replaces_fedavg(tmp_path, monkeypatch):
    """fl.aggregation=module:function: the rule gets the usable states (non-finite and weight-0 dropped) and their
    weights; its result is the new global adapter (fresh memory, input dtype), its figures go into info."""
    from fedspear.config import FLConfig

    mod = _write_rule(tmp_path, monkeypatch, "def cmax(states, weights, fl_cfg):\n"
                      "    return {k: torch.stack([s[k] for s in states]).amax(0) for k in states[0]}, "
                      "{'seen_weights': weights}\n")
    g = {"a": torch.zeros(2)}
    results = [({"a": torch.tensor([1.0, -5.0])}, 2.0), ({"a": torch.tensor([0.0, 3.0])}, 1.0),
               ({"a": torch.tensor([float("nan"), 9.0])}, 1.0), ({"a": torch.tensor([7.0, 7.0])}, 0.0)]
    new, info = aggregate(g, results, None, FLConfig(aggregation=f"{mod}:cmax"))
    assert new["a"].tolist() == [1.0, 3.0] and new["a"].dtype == torch.float32
    assert info["aggregation_rule"] == f"{mod}:cmax" and info["seen_weights"] == [2.0, 1.0]
    assert info["num_aggregated"] == 2 and info["num_excluded_nonfinite"] == 1


def test_a_users_rule_returning_another_layout_stops_with_its_name(tmp_path, monkeypatch):
    from fedspear.config import FLConfig

    mod = _write_rule(tmp_path, monkeypatch, "def bad(states, weights, fl_cfg):\n    return {'b': states[0]['a']}\n")
    with pytest.raises(ValueError, match=f"fl.aggregation={mod}:bad: adapter keys differ"):
        aggregate({"a": torch.zeros(2)}, [({"a": torch.ones(2)}, 1.0)], None, FLConfig(aggregation=f"{mod}:bad"))


def test_check_refuses_a_rule_that_is_not_a_function_or_does_not_import(tmp_path, monkeypatch):
    from fedspear.config import ConfigError, load_config

    mod = _write_rule(tmp_path, monkeypatch, "class NotAFunction:\n    pass\n\n\n"
                      "def ok(states, weights, fl_cfg):\n    return states[0]\n")
    with pytest.raises(ConfigError, match=f"fl.aggregation.*{mod}.NotAFunction, not a function"):
        load_config(None, [f"fl.aggregation={mod}:NotAFunction"])
    with pytest.raises(ConfigError, match="fl.aggregation=no_such_pkg_xyz:f: cannot import 'no_such_pkg_xyz'"):
        load_config(None, ["fl.aggregation=no_such_pkg_xyz:f"])
    with pytest.raises(ConfigError, match="central DP adds noise to the sum"):
        load_config(None, [f"fl.aggregation={mod}:ok", "dp.mode=central"])
    assert load_config(None, [f"fl.aggregation={mod}:ok"]).fl.aggregation == f"{mod}:ok"


def test_a_run_aggregates_with_the_users_rule(tmp_path, monkeypatch, tiny_qwen):
    """End to end through the simulator: the rule's result is the new global adapter of every round (here a rule
    that keeps the round-start adapter's layout but zeroes it), and each row names the rule."""
    from conftest import require_shared_data, run_tiny
    from safetensors.torch import load_file as load

    require_shared_data()
    mod = _write_rule(tmp_path, monkeypatch, "def zero(states, weights, fl_cfg):\n"
                      "    return {k: torch.zeros_like(t) for k, t in states[0].items()}\n")
    run_dir, rows = run_tiny(tiny_qwen, tmp_path / "run", **{"fl.rounds": 1, "fl.aggregation": f"{mod}:zero"})
    trained = [r for r in rows if r["round"] == 1]
    assert trained and trained[0]["aggregation"]["aggregation_rule"] == f"{mod}:zero"
    final = load(str(next(run_dir.glob("**/adapter_model.safetensors"))))
    assert final and all(float(t.abs().max()) == 0.0 for t in final.values())
