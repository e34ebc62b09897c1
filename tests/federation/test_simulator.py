"""The in-process simulator end to end: run folder, PEFT adapters, resume, invariances, failing clients."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import require_shared_data, tiny_overrides
from safetensors.torch import load_file

from fedspear.algorithms.base import ClientJob
from fedspear.algorithms.spear import Spear
from fedspear.config import load_config
from fedspear.federation import simulator
from fedspear.federation.partition import client_seed, dirichlet_partition
from fedspear.federation.schedule import round_lr
from fedspear.models import build_policy
from fedspear.tasks import get_task


def _final_state(run_dir):
    tensors = load_file(str(run_dir / "checkpoint" / "state.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("global.")}


def test_run_writes_run_folder_and_peft_adapters(tiny_qwen, tmp_path):
    require_shared_data()
    run_dir = simulator.run(load_config(None, tiny_overrides(tiny_qwen, tmp_path / "run")))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all("accuracy" in r["eval"] for r in rows)
    for r in rows[1:]:
        assert len(r["clients"]) == 2 and r["aggregate"]["prompts"] == 12
        assert {"round_s", "generation_s", "feedback_s", "training_s", "aggregation_s"} <= set(r["time"])
    assert (run_dir / "config.yaml").is_file() and (run_dir / "report.md").is_file()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen)
    model = PeftModel.from_pretrained(base, str(run_dir / "adapters" / "round_0002"))
    lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    final = _final_state(run_dir)
    assert len(lora) == len(final) > 0
    for key, value in final.items():  # the saved PEFT adapter is the final global adapter
        live = key[len("global."):].replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight")
        assert torch.equal(lora[live], value)


def test_each_client_row_carries_its_adapter_bytes_and_peak_memory(tiny_qwen, tmp_path):
    require_shared_data()
    run_dir = simulator.run(load_config(None, tiny_overrides(tiny_qwen, tmp_path / "run", **{
        "fl.rounds": 1, "data.max_eval_examples": 4, "fl.batch_clients": False})))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = _final_state(run_dir)
    nbytes = sum(t.numel() * t.element_size() for t in final.values())  # the fp32 adapter: every LoRA A and B
    assert nbytes == sum(t.numel() for t in final.values()) * 4 > 0
    row = rows[1]
    for client in row["clients"]:
        assert client["bytes_down"] == nbytes
        assert client["bytes_up"] == (nbytes if client["weight"] > 0 else 0)
        memory = client["metrics"]
        assert memory["peak_rss_mb"] >= memory["update_rss_peak_mb"] > 0
    ups = [c["bytes_up"] for c in row["clients"]]
    assert row["resources"]["bytes_down"] == 2 * nbytes and row["resources"]["bytes_up"] == sum(ups)
    assert row["resources"]["peak_rss_mb_max"] == max(c["metrics"]["peak_rss_mb"] for c in row["clients"])
    assert "resources" not in rows[0]  # round 0 evaluates only
    report = (run_dir / "report.md").read_text()
    assert f"| adapter bytes per client-round, down / up (mean) | {nbytes} / {sum(ups) // 2} |" in report


def test_resume_after_crash_matches_uninterrupted(tiny_qwen, tmp_path, monkeypatch):
    require_shared_data()
    over = {"fl.rounds": 3}
    full = simulator.run(load_config(None, tiny_overrides(tiny_qwen, tmp_path / "full", **over)))

    def crash(round_idx):
        if round_idx == 1:
            raise KeyboardInterrupt("killed after round 1")

    monkeypatch.setattr(simulator, "after_round_hook", crash)
    with pytest.raises(KeyboardInterrupt):
        simulator.run(load_config(None, tiny_overrides(tiny_qwen, tmp_path / "cut", **over)))
    monkeypatch.setattr(simulator, "after_round_hook", None)
    resumed = simulator.resume(tmp_path / "cut")
    a, b = _final_state(full), _final_state(resumed)
    assert a.keys() == b.keys()
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # training really moved the adapter
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    rounds = [json.loads(line)["round"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2, 3]


def test_single_client_equals_centralized_update(tiny_qwen, tmp_path):
    """num_clients=1: the global adapter after round 1 is exactly that client's local update."""
    require_shared_data()
    over = tiny_overrides(tiny_qwen, tmp_path / "central", **{"data.num_clients": 1, "fl.clients_per_round": 1,
                                                                "fl.rounds": 1})
    cfg = load_config(None, over)
    run_dir = simulator.run(cfg)
    task = get_task(cfg.data.dataset)
    data = task.load(cfg)
    policy = build_policy(cfg)
    initial = policy.adapter.get()
    (indices,) = dirichlet_partition([ex.label for ex in data.train], 1, cfg.data.dirichlet_alpha,
                                     cfg.data.max_examples_per_client, cfg.data.seed)
    job = ClientJob(0, 1, [data.train[i] for i in indices], round_lr(1, 1, cfg.optim), client_seed(cfg.data.seed, 1, 0))
    result = Spear.from_config(cfg, task).local_update(policy, job)
    final = _final_state(run_dir)
    if result.adapter is None:  # no wins: the global adapter must stay at its initial value
        expected = initial
    else:
        expected = result.adapter
    for k, v in expected.items():
        torch.testing.assert_close(final["global." + k], v, rtol=0, atol=0)


def test_failing_client_is_recorded_and_excluded(tiny_qwen, tmp_path, monkeypatch):
    require_shared_data()
    real_train = Spear.train

    def flaky(self, policy, job, data):
        if job.client_id == 0:
            raise RuntimeError("device lost")
        return real_train(self, policy, job, data)

    monkeypatch.setattr(Spear, "train", flaky)
    run_dir = simulator.run(load_config(None, tiny_overrides(tiny_qwen, tmp_path / "flaky", **{"fl.rounds": 1})))
    row = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1]
    errors = [c for c in row["clients"] if "error" in c]
    assert len(errors) == 1 and "device lost" in errors[0]["error"]
    assert row["aggregation"]["num_failed_clients"] == 1
