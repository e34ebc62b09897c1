"""DP-FedAvg: clipping and noise on known tensors, the accountant's epsilon, and a DP run on the world."""

from __future__ import annotations

import math

import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from fedspear import privacy
from fedspear.cli import resolve_config
from fedspear.config import DPConfig, load_config
from fedspear.federation import simulator
from fedspear.records import RunRecord

# A two-round world run, small enough for seconds (q = 2 of 4 clients).
WORLD_SMALL = ["fl.rounds=2", "data.num_clients=4", "fl.clients_per_round=2", "fl.local_rollout_steps=4",
               "fl.local_train_steps=2", "data.max_eval_examples=8", "gen.num_revisions=1"]


def test_clip_update_scales_the_whole_update_to_the_bound():
    update = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]])}  # global norm 5
    clipped, norm = privacy.clip_update(update, 1.0)
    assert norm == 5.0
    assert clipped["a"].tolist() == pytest.approx([0.6, 0.0]) and clipped["b"].tolist()[0] == pytest.approx([0.8])
    same, _ = privacy.clip_update(update, 10.0)  # inside the bound: unchanged
    assert same["a"].tolist() == [3.0, 0.0] and same["b"].tolist() == [[4.0]]
    with pytest.raises(ValueError, match="non-finite"):
        privacy.clip_update({"a": torch.tensor([math.nan])}, 1.0)


def test_central_dp_mean_is_clipped_sum_plus_sigma_c_noise_over_k():
    dp = DPConfig(mode="central", clip_norm=1.0, noise_multiplier=2.0, seed=7)
    global_state = {"w": torch.zeros(20000)}
    big = {"w": torch.zeros(20000)}
    big["w"][0] = 10.0  # clipped to 1
    small = {"w": torch.zeros(20000)}
    small["w"][1] = 0.5
    new, info = privacy.central_dp_mean(global_state, [big, small], dp, 4, privacy.noise_generator(dp, 3))
    expected_noise = 2.0 * 1.0 * torch.randn(20000, generator=privacy.noise_generator(dp, 3))
    expected = (torch.tensor([1.0, 0.5] + [0.0] * 19998) + expected_noise) / 4
    assert torch.allclose(new["w"], expected, atol=1e-6)
    assert info["dp_clipped"] == 1 and info["dp_mean_update_norm"] == pytest.approx(5.25)
    # the noise's empirical std is sigma * C / K = 0.5
    assert float((new["w"][2:] * 4).std()) == pytest.approx(2.0, rel=0.03)
    noiseless, _ = privacy.central_dp_mean(global_state, [big, small], DPConfig(noise_multiplier=0.0), 4,
                                           torch.Generator())
    assert noiseless["w"][:3].tolist() == [0.25, 0.125, 0.0]


def test_local_dp_state_is_global_plus_clipped_update_plus_noise():
    dp = DPConfig(mode="local", clip_norm=0.5, noise_multiplier=1.0, seed=1)
    out = privacy.local_dp_state({"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([1.0, 0.0])}, dp,
                                 privacy.noise_generator(dp, 1, 2))
    noise = 0.5 * torch.randn(2, generator=privacy.noise_generator(dp, 1, 2))
    # delta (2, 4) has norm sqrt(20); clipped to 0.5
    clipped = torch.tensor([2.0, 4.0]) * 0.5 / math.sqrt(20)
    assert torch.allclose(out["w"], torch.tensor([1.0, 0.0]) + clipped + noise, atol=1e-6)


def test_unseeded_noise_differs_between_calls():
    dp = DPConfig(seed=None)
    a = torch.randn(4, generator=privacy.noise_generator(dp, 1))
    b = torch.randn(4, generator=privacy.noise_generator(dp, 1))
    assert not torch.equal(a, b)


@pytest.mark.parametrize(("sigma", "q", "rounds", "delta"), [(1.0, 0.5, 20, 1e-5), (4.0, 0.01, 1000, 1e-6)])
def test_epsilon_equals_dp_accounting(sigma, q, rounds, delta):
    accountant = rdp_privacy_accountant.RdpAccountant(privacy.RDP_ORDERS)
    accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), rounds)
    expected = accountant.get_epsilon(delta)
    assert privacy.epsilon(sigma, q, rounds, delta) == pytest.approx(expected, rel=1e-12)
    assert 0 < expected < 100
    # more rounds spend more; more noise spends less
    assert privacy.epsilon(sigma, q, rounds + 1, delta) > expected > privacy.epsilon(2 * sigma, q, rounds, delta)


def test_epsilon_edge_cases():
    assert privacy.epsilon(1.0, 0.5, 0, 1e-5) == 0.0
    assert privacy.epsilon(0.0, 0.5, 3, 1e-5) == math.inf


def test_budget_uses_k_over_n_for_central_and_no_amplification_for_local():
    cfg = load_config(None, ["dp.mode=central", "dp.noise_multiplier=1.0", "data.num_clients=10",
                             "fl.clients_per_round=5"])
    b = privacy.budget(cfg, 20)
    assert b["sampling_rate"] == 0.5 and b["epsilon"] == pytest.approx(privacy.epsilon(1.0, 0.5, 20, 1e-5))
    cfg.dp.mode = "local"
    assert privacy.budget(cfg, 20)["epsilon"] == pytest.approx(privacy.epsilon(1.0, 1.0, 20, 1e-5))


@pytest.mark.parametrize("mode", ["central", "local"])
def test_dp_run_on_the_world_runs_end_to_end_and_reports_epsilon(tmp_path, mode):
    cfg = load_config(resolve_config(None), [*WORLD_SMALL, f"dp.mode={mode}", "dp.noise_multiplier=1.5",
                                             "dp.seed=0", "logging.report_to=[tensorboard]",
                                             f"output_dir={tmp_path / 'run'}"])
    run_dir = simulator.run(cfg)
    rows = RunRecord(run_dir).read_metrics()
    q = 0.5 if mode == "central" else 1.0
    for row in rows[1:]:
        assert row["privacy"]["epsilon"] == pytest.approx(privacy.epsilon(1.5, q, row["round"], 1e-5))
    if mode == "central":
        assert rows[1]["aggregation"]["num_aggregated"] >= 1 and "dp_clipped" in rows[1]["aggregation"]
    eps = rows[-1]["privacy"]["epsilon"]
    report = (run_dir / "report.md").read_text()
    assert f"privacy spent ({mode} DP) | epsilon {eps:.3f} at delta 1e-05 after 2 rounds" in report
    # the server's tracker hooks logged every row (rounds 0-2) and the budget
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [0, 1, 2]
    assert acc.Scalars("privacy/epsilon")[-1].value == pytest.approx(eps, rel=1e-6)
