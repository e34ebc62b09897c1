"""The server-side round logic shared by the simulator and the Flower ServerApp: planning, aggregation with
failures and fl.min_clients, metrics rows, checkpoints."""

from __future__ import annotations

import pytest
import torch
from fixtures.fake_policy import FakePolicy

from fedspear.config import load_config
from fedspear.federation.partition import client_seed
from fedspear.federation.server import ClientReport, FederatedServer, sum_client_metrics
from fedspear.records import RunRecord


def _server(tmp_path, **overrides):
    items = {"data.num_clients": 4, "fl.clients_per_round": 3, "fl.rounds": 2, "data.seed": 5, **overrides}
    cfg = load_config(None, [f"{k}={v}" for k, v in items.items()])
    policy = FakePolicy({"w": torch.tensor([1.0, 1.0])})
    return FederatedServer(cfg, RunRecord(tmp_path / "run"), policy, [])


def test_plan_is_a_function_of_config_and_round(tmp_path):
    server = _server(tmp_path)
    a, b = server.plan_round(2), server.plan_round(2)
    assert a.selected == b.selected and len(a.selected) == 3 and a.selected == sorted(a.selected)
    assert a.seeds == {c: client_seed(5, 2, c) for c in a.selected}
    job = a.job(a.selected[0], [])
    assert (job.round_idx, job.lr, job.seed) == (2, a.lr, a.seeds[a.selected[0]])


def test_aggregate_weights_by_wins_and_excludes_failures(tmp_path):
    server = _server(tmp_path)
    plan = server.plan_round(1)
    c0, c1, c2 = plan.selected
    reports = [
        ClientReport(c0, {"w": torch.tensor([3.0, 0.0])}, 1.0, {"wins": 1, "prompts": 2, "wins_y0": 1}),
        ClientReport(c1, {"w": torch.tensor([0.0, 6.0])}, 2.0, {"wins": 2, "prompts": 2}, details={"node_id": 9}),
        ClientReport.failure(c2, "node went offline during the round", details={"node_id": 7}),
    ]
    row = server.aggregate_round(plan, reports).to_dict()
    # FedAvg over the two successful clients, weights 1 and 2: (3*1 + 0*2)/3 = 1, (0*1 + 6*2)/3 = 4.
    torch.testing.assert_close(server.global_state["w"], torch.tensor([1.0, 4.0]))
    assert row["aggregation"]["num_aggregated"] == 2 and row["aggregation"]["num_failed_clients"] == 1
    failed = [c for c in row["clients"] if "error" in c]
    assert failed == [{"client_id": c2, "node_id": 7, "weight": 0.0, "error": "node went offline during the round",
                       "metrics": {}, "bytes_down": 8, "bytes_up": 0}]
    # traffic: the 2-float global adapter (8 bytes) went to each of the 3 clients, two sent 8 bytes back
    assert [(c["bytes_down"], c["bytes_up"]) for c in row["clients"]] == [(8, 8), (8, 8), (8, 0)]
    assert row["resources"] == {"bytes_down": 24, "bytes_down_per_client": 8.0, "bytes_up": 16,
                                "bytes_up_per_client": 16 / 3}
    assert row["clients"][1]["node_id"] == 9
    assert row["aggregate"]["wins"] == 3 and row["aggregate"]["y0_accuracy"] == 0.25
    assert row["selected_clients"] == plan.selected and row["round"] == 1


def test_missing_report_counts_as_failure(tmp_path):
    server = _server(tmp_path)
    plan = server.plan_round(1)
    row = server.aggregate_round(plan, [ClientReport(plan.selected[0], {"w": torch.tensor([5.0, 5.0])}, 1.0)]).to_dict()
    assert row["aggregation"]["num_failed_clients"] == 2
    torch.testing.assert_close(server.global_state["w"], torch.tensor([5.0, 5.0]))


def test_min_clients_keeps_global_adapter(tmp_path):
    server = _server(tmp_path, **{"fl.min_clients": 2})
    plan = server.plan_round(1)
    reports = [ClientReport(plan.selected[0], {"w": torch.tensor([9.0, 9.0])}, 1.0)]
    reports += [ClientReport.failure(c, "boom") for c in plan.selected[1:]]
    row = server.aggregate_round(plan, reports).to_dict()
    torch.testing.assert_close(server.global_state["w"], torch.tensor([1.0, 1.0]))
    assert "fl.min_clients=2" in row["aggregation"]["skipped_round"]
    assert row["aggregation"]["num_aggregated"] == 0 and row["aggregation"]["num_failed_clients"] == 2


def test_clients_without_wins_send_no_update_but_count_toward_min_clients(tmp_path):
    server = _server(tmp_path, **{"fl.min_clients": 3})
    plan = server.plan_round(1)
    reports = [ClientReport(plan.selected[0], {"w": torch.tensor([4.0, 2.0])}, 2.0)]
    reports += [ClientReport(c, None, 0.0, {"skipped_no_wins": 1}) for c in plan.selected[1:]]
    row = server.aggregate_round(plan, reports).to_dict()
    torch.testing.assert_close(server.global_state["w"], torch.tensor([4.0, 2.0]))
    assert row["aggregation"]["num_without_update"] == 2 and row["aggregate"]["skipped_no_wins"] == 2


def test_fedadam_state_survives_checkpoint(tmp_path):
    server = _server(tmp_path, **{"fl.aggregation": "fedadam"})
    plan = server.plan_round(1)
    server.aggregate_round(plan, [ClientReport(c, {"w": torch.tensor([2.0, 0.0])}, 1.0) for c in plan.selected])
    server.save_checkpoint(1)
    after_one = {k: v.clone() for k, v in server.global_state.items()}
    again = _server(tmp_path, **{"fl.aggregation": "fedadam"})
    assert again.has_checkpoint() and again.load_checkpoint() == 1
    torch.testing.assert_close(again.global_state["w"], after_one["w"])
    assert again.server_opt.num_steps == 1
    torch.testing.assert_close(again.server_opt.m["w"], server.server_opt.m["w"])


def test_sum_client_metrics_handles_no_prompts():
    agg = sum_client_metrics([{}, {"wins": 2}])
    assert agg["wins"] == 2 and agg["y0_accuracy"] is None and agg["needs_revision_pct"] is None


@pytest.mark.parametrize("bad", ["{nope}", "{0}"])
def test_expand_output_dir_rejects_unknown_placeholders(bad):
    from fedspear.config import ConfigError
    from fedspear.federation.server import expand_output_dir

    cfg = load_config(None, [f"output_dir=runs/{bad}"])
    with pytest.raises(ConfigError):
        expand_output_dir(cfg)


def test_publish_hook_gets_each_new_global_and_the_kept_one(tmp_path):
    published = []
    server = _server(tmp_path, **{"fl.min_clients": 2})
    server.publish = lambda round_idx, state: published.append((round_idx, state["w"].clone()))
    plan = server.plan_round(1)
    c0, c1, _ = plan.selected
    server.aggregate_round(plan, [ClientReport(c0, {"w": torch.tensor([3.0, 0.0])}, 1.0),
                                  ClientReport(c1, {"w": torch.tensor([0.0, 6.0])}, 2.0)])
    server.aggregate_round(server.plan_round(2), [])  # no results < fl.min_clients: the global is kept
    # round 1: FedAvg (3*1 + 0*2)/3 = 1, (0*1 + 6*2)/3 = 4; round 2 publishes the same tensors again
    assert [r for r, _ in published] == [1, 2]
    torch.testing.assert_close(published[0][1], torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(published[1][1], torch.tensor([1.0, 4.0]))


def test_expand_output_dir_names_a_users_task_by_its_class():
    from fedspear.federation.server import expand_output_dir

    cfg = load_config(None, ["output_dir=runs/{dataset}-{seed}", "data.seed=3"])
    assert expand_output_dir(cfg) == "runs/arc_challenge-3"
    cfg.data.dataset = "my_pkg.tasks:MyTask"
    assert expand_output_dir(cfg) == "runs/MyTask-3"


def test_summary_line_shows_what_each_kind_of_client_update_counts():
    """SPEAR-like rounds show wins and losses; group methods (samples per prompt) show samples and revisions
    instead of wins 0 / losses 0, which they never count."""
    from fedspear.federation.observers import summary_line

    spear = sum_client_metrics([{"prompts": 10, "wins_y0": 4, "wins": 7, "wins_revision": 3, "losses": 5,
                                 "needs_revision": 6}])
    row = {"round": 2, "lr": 1e-3, "aggregate": spear, "time": {"round_s": 1.34}}
    assert summary_line(row, 5) == "round   2/5 | lr 1.00e-03 | y0 acc 0.40 | wins 7 (rev 3) | losses 5 | 1.3s"
    rltf = sum_client_metrics([{"prompts": 6, "samples_y0": 24, "wins_y0": 12, "needs_revision": 12,
                                "revision_successes": 5}])
    row = {"round": 2, "lr": 1e-3, "aggregate": rltf, "time": {"round_s": 3.0}}
    assert summary_line(row, 5) == "round   2/5 | lr 1.00e-03 | y0 acc 0.50 | samples 24 (revised 12, fixed 5) | 3.0s"
    grpo = sum_client_metrics([{"prompts": 6, "samples_y0": 24, "wins_y0": 6}])
    row = {"round": 2, "lr": 1e-3, "aggregate": grpo, "time": {"round_s": 3.0}}
    assert "| samples 24 |" in summary_line(row, 5) and "wins" not in summary_line(row, 5)


class FieldsRunner:
    """A client runner with extra row fields (like the served clients'), optionally failing."""

    def __init__(self, fail: bool = False):
        self.fail, self.fields = fail, {}

    def __call__(self, plan, global_state):
        if self.fail:
            raise RuntimeError("client page unreachable")
        self.fields = {"interface_accuracy": 0.5, "round_seen": plan.round_idx}
        return [ClientReport(c, {"w": torch.tensor([2.0, 2.0])}, 1.0, {"wins": 1, "prompts": 1})
                for c in plan.selected]


def test_run_round_merges_the_runners_fields_into_the_row(tmp_path):
    row = _server(tmp_path).run_round(2, FieldsRunner()).to_dict()
    assert row["interface_accuracy"] == 0.5 and row["round_seen"] == 2 and row["round"] == 2
    assert row["aggregation"]["num_aggregated"] == 3


def test_run_rounds_closes_the_trackers_when_a_runner_fails(tmp_path, monkeypatch):
    from fedspear.tracking import Trackers

    aborted = []
    monkeypatch.setattr(Trackers, "abort", lambda self, reason: aborted.append(reason))
    server = _server(tmp_path)
    with pytest.raises(RuntimeError, match="client page unreachable"):
        server.run_rounds(FieldsRunner(fail=True), 1)
    assert aborted == ["RuntimeError: client page unreachable"]


def test_local_dp_counts_each_clients_participations_and_a_resume_recounts_them(tmp_path):
    from fedspear import privacy

    dp = {"dp.mode": "local", "dp.noise_multiplier": 2.0, "fl.rounds": 3}
    server = _server(tmp_path, **dp)
    seen: dict[int, int] = {}
    for r in (1, 2):
        plan = server.plan_round(r)
        # a client claiming weight 5 still counts once: local DP aggregates uniformly
        row = server.aggregate_round(plan, [ClientReport(c, {"w": torch.tensor([2.0, 0.0])}, 5.0)
                                            for c in plan.selected]).to_dict()
        assert [c["weight"] for c in row["clients"]] == [1.0] * 3
        for c in plan.selected:
            seen[c] = seen.get(c, 0) + 1
        server.record.append_metrics(row)
        server.save_checkpoint(r)
    assert server.participations == seen and sum(seen.values()) == 6
    assert row["privacy"]["local_epsilon"] == {str(c): privacy.epsilon(1.0, 1.0, n, 1e-5) for c, n in sorted(seen.items())}
    again = _server(tmp_path, **dp)
    assert again.resume() == 2 and again.participations == seen


def test_the_server_owns_the_global_adapter_and_clients_only_get_copies(tmp_path):
    server = _server(tmp_path)
    policy = server.policy
    plan = server.plan_round(1)
    job = plan.job(plan.selected[0], [], server.global_state)
    policy.adapter.set({"w": torch.tensor([9.0, 9.0])})  # a client trained the shared policy's live adapter
    torch.testing.assert_close(server.global_state["w"], torch.tensor([1.0, 1.0]))  # the global did not move
    assert job.start_state is server.global_state
    reports = [ClientReport(c, {"w": torch.tensor([float(i), 2.0 * i])}, 1.0) for i, c in enumerate(plan.selected)]
    server.aggregate_round(plan, reports)
    # FedAvg of (0, 0), (1, 2), (2, 4) with equal weights: (1, 2), now in the server and in the live model
    torch.testing.assert_close(server.global_state["w"], torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(policy.adapter.state["w"], torch.tensor([1.0, 2.0]))
    assert not hasattr(policy, "global_state")
