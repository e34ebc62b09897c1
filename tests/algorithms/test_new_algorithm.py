"""A new algorithm is one file plus one registry entry: REINFORCE (tests/fixtures) run end to end by the CLI."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest
import yaml

from fedspear import config
from fedspear.algorithms import registry
from fedspear.cli import main

FIXTURE = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "reinforce_algorithm.py"


@pytest.fixture()
def reinforce(tmp_path, monkeypatch):
    """Import the fixture file from a folder outside fedspear; the registries are restored afterwards."""
    monkeypatch.setattr(registry, "ALGORITHMS", dict(registry.ALGORITHMS))
    monkeypatch.setattr(config, "EXTRA_ALGORITHMS", list(config.EXTRA_ALGORITHMS))
    monkeypatch.setattr(config, "EXTRA_SECTIONS", dict(config.EXTRA_SECTIONS))
    path = shutil.copy(FIXTURE, tmp_path / "my_reinforce.py")
    spec = importlib.util.spec_from_file_location("my_reinforce", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "my_reinforce", module)
    spec.loader.exec_module(module)
    return module


def test_group_mean_baseline_by_hand(reinforce):
    # group [1, 0, 0]: mean 1/3 -> [2/3, -1/3, -1/3]; group [1, 1, 1]: no signal
    adv = reinforce.advantages([1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3)
    assert adv == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0.0, 0.0, 0.0])


def test_reinforce_runs_end_to_end_through_the_cli(reinforce, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--config", "default", "algorithm.name=reinforce", "reinforce.num_samples=3",
                 "fl.rounds=2", "fl.clients_per_round=2", "data.num_clients=4", "fl.local_rollout_steps=4",
                 "fl.local_train_steps=2", "data.max_eval_examples=8", f"output_dir={out}"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["aggregation"]["num_aggregated"] == 2
        for client in row["clients"]:
            m = client["metrics"]
            # P = 4 prompts, G = 3 samples each; n_eff = P; S = 2 steps
            assert (m["prompts"], m["samples_y0"], client["weight"], m["steps"]) == (4, 12, 4.0, 2)
            assert m["tokens_trained"] > 0 and "loss_pg" in m
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert stored["algorithm"]["name"] == "reinforce" and stored["reinforce"] == {"num_samples": 3}
    assert (out / "adapters" / "round_0002" / "adapter_config.json").is_file()


def test_an_unregistered_name_is_a_user_error(capsys):
    assert main(["check", "algorithm.name=reinforce"]) == 2
    assert "algorithm.name: 'reinforce' is not one of" in capsys.readouterr().err
