"""A new algorithm is one file plus one registry entry: REINFORCE (tests/fixtures) run end to end by the CLI."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest
import yaml
from fixtures.outside_algorithm import REINFORCE_FILE as FIXTURE

from fedspear.algorithms import registry
from fedspear.cli import main


@pytest.fixture()
def reinforce(tmp_path, monkeypatch, algorithm_registries):
    """Import the fixture file from a folder outside fedspear; the registries are restored afterwards."""
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


# --------------------------------------------------------------------------- named by dotted path, everywhere

TINY = ["fl.rounds=1", "fl.clients_per_round=2", "data.num_clients=4", "fl.local_rollout_steps=2",
        "fl.local_train_steps=1", "data.max_eval_examples=4", "reinforce.num_samples=2"]


@pytest.fixture()
def outside_module(outside_algorithm):
    """The fixture algorithm as one file outside fedspear, without its registration line: the dotted path
    ``ext_reinforce:Reinforce`` is all a user writes. The registries are restored afterwards."""
    return outside_algorithm("ext_reinforce")


def _client_metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [c["metrics"] for r in rows[1:] for c in r["clients"]]


def test_a_dotted_path_algorithm_runs_from_the_command_line(outside_module, tmp_path):
    import os
    import subprocess

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(outside_module), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "fedspear", "run", "--config", "default",
                           "algorithm.name=ext_reinforce:Reinforce", *TINY, f"output_dir={out}"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (m, *_) = _client_metrics(out)
    assert (m["prompts"], m["samples_y0"]) == (2, 4) and "loss_pg" in m
    stored = yaml.safe_load((out / "config.yaml").read_text())
    assert stored["algorithm"]["name"] == "ext_reinforce:Reinforce" and stored["reinforce"] == {"num_samples": 2}


def test_a_dotted_path_algorithm_runs_in_sweep_and_compare(outside_module, tmp_path, capsys):
    spec = "ext_reinforce:Reinforce"
    assert main(["sweep", "--config", "default", "--algorithms", spec, "--seeds", "0", *TINY,
                 f"output_dir={tmp_path / 'sweep'}"]) == 0
    runs = [p.parent for p in (tmp_path / "sweep").rglob("metrics.jsonl")]
    assert len(runs) == 1 and all("loss_pg" in m for m in _client_metrics(runs[0]))
    assert main(["compare", "--config", "default", "--algorithms", f"spear,{spec}", *TINY,
                 f"output_dir={tmp_path / 'cmp'}"]) == 0
    assert all("loss_pg" in m for m in _client_metrics(tmp_path / "cmp" / spec))
    assert spec in (tmp_path / "cmp" / "comparison.md").read_text()
    capsys.readouterr()
    assert main(["sweep", "--config", "default", "--algorithms", "ext_reinforce:Nope", "--seeds", "0", *TINY]) == 2
    err = capsys.readouterr().err
    assert err == "fedspear: error: --algorithms=ext_reinforce:Nope: 'ext_reinforce' has no attribute 'Nope'\n"


def test_a_registered_algorithms_metrics_pass_the_wire(outside_module):
    wire = pytest.importorskip("fedspear.flower.wire")
    cls = registry.algorithm_class("ext_reinforce:Reinforce")
    assert registry.algorithm_class("reinforce") is cls and cls.name == "reinforce"
    assert wire.known_metric("loss_pg") and wire.known_metric("samples_y0")
