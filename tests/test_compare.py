"""The comparison command: runs on one federation, reuse of finished runs, and the report from run folders."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import require_shared_data, tiny_overrides

from fedspear import compare as cmp
from fedspear.config import Config, ConfigError, load_config
from fedspear.federation import simulator
from fedspear.records import RunExistsError


def test_compare_runs_each_algorithm_on_the_same_federation_and_reuses_finished_runs(tiny_qwen, tmp_path,
                                                                                    monkeypatch):
    require_shared_data()
    over = tiny_overrides(tiny_qwen, tmp_path / "cmp", **{"fl.rounds": 1, "fl.local_rollout_steps": 2,
                                                          "fl.local_train_steps": 1, "grpo.num_generations": 2,
                                                          "data.max_eval_examples": 4})
    cfg = load_config(None, over)
    report = cmp.compare(cfg, ["opsd", "grpo"])
    assert report == tmp_path / "cmp" / "comparison.md"
    text = report.read_text()
    configs = {a: yaml.safe_load((tmp_path / "cmp" / a / "config.yaml").read_text()) for a in ("opsd", "grpo")}
    for a, c in configs.items():  # the copies differ only in algorithm.name and output_dir
        assert c["algorithm"]["name"] == a and c["output_dir"] == str(tmp_path / "cmp" / a)
        c.pop("output_dir"), c.pop("algorithm")
    assert configs["opsd"] == configs["grpo"]
    schedules = {a: [json.loads(line).get("selected_clients") for line in
                     (tmp_path / "cmp" / a / "metrics.jsonl").read_text().splitlines()] for a in configs}
    assert schedules["opsd"] == schedules["grpo"] == [None, [0, 1]]
    for name in ("accuracy", "y0_accuracy", "cumulative_round_time", "cumulative_training_time"):
        assert (tmp_path / "cmp" / "plots" / f"{name}.png").stat().st_size > 1000
        assert f"(plots/{name}.png)" in text
    assert "| opsd |" in text and "| grpo |" in text
    # neither algorithm asks for feedback, so the revision figures have no data
    assert not (tmp_path / "cmp" / "plots" / "cumulative_revision_successes.png").exists()

    # A second call reuses the finished runs (nothing is trained again) and rebuilds the report.
    monkeypatch.setattr(simulator, "run", lambda cfg: pytest.fail("a finished run was started again"))
    assert cmp.compare(cfg, ["opsd", "grpo"]) == report
    # A different configuration in the same folder is refused, not silently reused.
    with pytest.raises(RunExistsError, match="fl.local_train_steps: 1 there, 2 now"):
        cmp.compare(load_config(None, over + ["fl.local_train_steps=2"]), ["grpo"])


def test_compare_validates_every_variant_before_running(tmp_path, monkeypatch):
    monkeypatch.setattr(simulator, "run", lambda cfg: pytest.fail("nothing may run"))
    cfg = Config()
    cfg.output_dir = str(tmp_path)
    with pytest.raises(ConfigError, match="not one of"):
        cmp.compare(cfg, ["grpo", "ppo"])
    with pytest.raises(ConfigError, match="more than once"):
        cmp.compare(cfg, ["grpo", "grpo"])
    central = cmp.variant(cfg, "opsd", tmp_path / "c", centralized=True)
    assert (central.data.num_clients, central.fl.clients_per_round, central.fl.min_clients) == (1, 1, 1)
    assert central.data.max_examples_per_client == cmp.ALL_EXAMPLES and cfg.data.num_clients == 20  # cfg untouched


def _fake_run(run_dir, algorithm, rounds):
    """A run folder with config.yaml and metrics.jsonl: rounds = [(accuracy, round_s, training_s, clients)]."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"algorithm": {"name": algorithm},
                                                         "data": {"dataset": "arc_challenge", "num_clients": 2}}))
    lines = [json.dumps({"round": 0, "eval": {"accuracy": 0.25}})]
    for r, (acc, round_s, training_s, clients) in enumerate(rounds, start=1):
        lines.append(json.dumps({"round": r, "eval": {"accuracy": acc},
                                 "time": {"round_s": round_s, "training_s": training_s},
                                 "clients": [{"client_id": i, "metrics": m} for i, m in enumerate(clients)]}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def test_write_comparison_from_run_folders(tmp_path):
    spear_client = {"prompts": 10, "wins_y0": 4, "needs_revision": 6, "revision_successes": 3, "generations": 18,
                    "tokens_generated": 100, "tokens_trained": 400}
    grpo_client = {"prompts": 5, "samples_y0": 20, "wins_y0": 5, "generations": 20, "tokens_generated": 150,
                   "tokens_trained": 300, "tokens_forward": 500}
    runs = {
        "spear": _fake_run(tmp_path / "spear", "spear", [(0.5, 10.0, 4.0, [spear_client] * 2),
                                                          (0.6, 12.0, 5.0, [spear_client] * 2)]),
        "grpo": _fake_run(tmp_path / "grpo", "grpo", [(0.3, 30.0, 20.0, [grpo_client] * 2)]),
    }
    central = {"spear": _fake_run(tmp_path / "c" / "spear", "spear", [(0.7, 5.0, 2.0, [spear_client])])}
    path = cmp.write_comparison(runs, tmp_path / "out", central)
    text = path.read_text()
    # spear: final 0.6 at round 2, best 0.6, 2 rounds, 22 s total, 11 s per round, 9 s training,
    # 2 rounds x 2 clients x 18 generations = 72, x 100 = 400 tokens generated, x 400 = 1600 trained, no forward-only
    assert "| spear | 0.6000 (2) | 0.6000 | 2 | 22.0 | 11.00 | 9.0 | 72 | 400 | 1600 | - |" in text
    assert "| grpo | 0.3000 (1) | 0.3000 | 1 | 30.0 | 30.00 | 20.0 | 40 | 300 | 600 | 1000 |" in text
    assert "| spear | 0.7000 (1) | 0.7000 | 1 | 5.0 | 5.00 | 2.0 | 18 | 100 | 400 | - |" in text  # centralized
    plots = tmp_path / "out" / "plots"
    for name in ("accuracy", "y0_accuracy", "cumulative_round_time", "cumulative_training_time",
                 "cumulative_revision_successes", "cumulative_needs_revision", "needs_revision_pct",
                 "centralized_accuracy"):
        assert (plots / f"{name}.png").is_file(), name
    assert "Left out (they ask for no feedback): grpo." in text
    rows = cmp.read_rounds(runs["grpo"])
    assert cmp._ratio(rows[1], "wins_y0", "samples_y0") == 0.25  # 10 right of 40 samples, not 10 of 10 prompts
    assert cmp._ratio(cmp.read_rounds(runs["spear"])[1], "needs_revision", "samples_y0", 100.0) == 60.0
    # the public per-run curves: cumulative from (0, 0), feedback curves empty for algorithms that ask none
    series = cmp.round_series(cmp.read_rounds(runs["spear"]), "spear")
    assert series["accuracy"] == [(0.0, 0.25), (1.0, 0.5), (2.0, 0.6)]
    assert series["cumulative_round_time"] == [(0.0, 0.0), (1.0, 10.0), (2.0, 22.0)]
    assert series["cumulative_revision_successes"] == [(0.0, 0.0), (1.0, 6.0), (2.0, 12.0)]
    assert cmp.round_series(rows, "grpo")["needs_revision_pct"] == []


def test_reuse_ignores_how_output_dir_is_spelled_and_the_thread_count(tmp_path, monkeypatch, tiny_qwen):
    """A finished run reached through a relative or an absolute path, or asked for with another thread count, is the
    same run: reused, not refused; any other difference is refused naming the key."""
    require_shared_data()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, tiny_overrides(tiny_qwen, "runs/r", **{"fl.rounds": 1, "data.num_clients": 2,
                                                                     "fl.clients_per_round": 1}))
    first = cmp.run_or_reuse(cfg)
    cfg.output_dir = str(tmp_path / "runs" / "r")
    assert cmp.run_or_reuse(cfg).resolve() == first.resolve()
    cfg.model.torch_threads = "1" if str(cfg.model.torch_threads) != "1" else "2"  # how it runs, not what it is
    assert cmp.run_or_reuse(cfg).resolve() == first.resolve()
    cfg.fl.local_train_steps += 1
    with pytest.raises(RunExistsError, match="fl.local_train_steps"):
        cmp.run_or_reuse(cfg)


def test_comparison_shows_memory_and_adapter_bytes_per_client_round(tmp_path):
    runs = {name: _fake_run(tmp_path / name, name, [(0.5, 10.0, 4.0, [{"prompts": 1}])] * 2)
            for name in ("spear", "grpo")}
    for name, peaks, ups in (("spear", (400.0, 420.0), (100.0, 50.0)), ("grpo", (700.0, 650.0), (100.0, 100.0))):
        path = runs[name] / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row, peak, up in zip(rows[1:], peaks, ups):
            row["resources"] = {"peak_rss_mb_max": peak + 100, "update_rss_peak_mb_max": peak,
                                "bytes_down_per_client": 200.0, "bytes_up_per_client": up}
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    totals = cmp.run_totals(cmp.read_rounds(runs["spear"]))
    assert (totals["peak_rss_mb"], totals["update_rss_peak_mb"], totals["cuda_peak_mb"]) == (520.0, 420.0, None)
    assert (totals["bytes_down_per_client"], totals["bytes_up_per_client"]) == (200.0, 75.0)
    text = cmp.write_comparison(runs, tmp_path / "out").read_text()
    assert "| peak RSS (MB) | peak RSS in an update (MB) | peak CUDA (MB) | bytes down / up per client-round |" in text
    assert "| - | 520.0 | 420.0 | - | 200 / 75 |" in text
    assert "| - | 800.0 | 700.0 | - | 200 / 100 |" in text


def test_comparisons_started_in_the_same_second_each_get_their_own_folder(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(time, "strftime", lambda *a: "20260101-000000")
    monkeypatch.setattr(cmp, "run_or_reuse", lambda cfg: cfg.output_dir)
    monkeypatch.setattr(cmp, "write_comparison", lambda run_dirs, base, central: (base, run_dirs))
    cfg = Config()
    cfg.output_dir = str(tmp_path / "{algorithm}-{time}")
    first, second = cmp.compare(cfg, ["grpo", "opsd"]), cmp.compare(cfg, ["grpo", "opsd"])
    assert first == (tmp_path / "compare-20260101-000000",
                     {a: str(tmp_path / "compare-20260101-000000" / a) for a in ("grpo", "opsd")})
    assert second == (tmp_path / "compare-20260101-000000-1",
                      {a: str(tmp_path / "compare-20260101-000000-1" / a) for a in ("grpo", "opsd")})
    cfg.output_dir = str(tmp_path / "fixed")  # a name without {time} is the same folder each time (reuse, resume)
    assert cmp.compare(cfg, ["grpo"])[0] == cmp.compare(cfg, ["grpo"])[0] == tmp_path / "fixed"
