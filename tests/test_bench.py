"""The bench scripts run end to end on small settings and print or write what they promise (no timing asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SHARED_BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench"
sys.path.insert(0, str(BENCH))


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    if not (SHARED_BENCH / "make_bench.py").is_file():
        pytest.skip("../shared/bench is not next to this checkout")
    import round_time

    return round_time.build_bench(tmp_path_factory.mktemp("bench"))


def test_round_time_json(bench_dir, capsys):
    import round_time

    summary = round_time.main(["--bench-dir", str(bench_dir), "--rounds", "2", "--json"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["spear_round_s"] == summary["spear_round_s"] > 0 and printed["grpo_round_s"] > 0
    spear = printed["results"]["spear"]
    assert spear["rounds_timed"] == 1 and spear["generations_per_round"] > 0
    assert spear["generation_s"] + spear["training_s"] <= spear["round_s"]


def test_profile_round_reports_calls_and_floor(bench_dir, capsys):
    import profile_round

    profile_round.main(["--bench-dir", str(bench_dir), "--rounds", "1", "--algorithms", "spear"])
    out = capsys.readouterr().out
    assert "first answers" in out and "revision 1" in out and "floor with these prompts" in out


def test_compare_world_aggregates_seeds(tmp_path, capsys):
    import compare_world

    report = tmp_path / "cmp.md"
    compare_world.main(["--seeds", "0", "1", "--centralized", "--out-dir", str(tmp_path / "runs"), "--report", str(report),
                        "fl.rounds=1", "fl.local_rollout_steps=4", "fl.local_train_steps=1",
                        "data.max_eval_examples=8", "gen.max_new_tokens_y0=4", "gen.max_new_tokens_y1=4"])
    text = report.read_text()
    for algorithm in compare_world.ALGORITHMS:
        assert f"| {algorithm} | " in text
    assert (tmp_path / "cmp" / "accuracy.png").is_file() and (tmp_path / "cmp" / "centralized_accuracy.png").is_file()
    assert "## Centralized" in text
    summary = json.loads(report.with_suffix(".json").read_text())
    assert [r["seed"] for r in summary["federated"]["spear"]] == [0, 1] and summary["federated"]["spear"][0]["rounds"] == 1
    assert [r["seed"] for r in summary["centralized"]["grpo"]] == [0, 1]
    assert (tmp_path / "runs" / "seed-1" / "comparison.md").is_file()

    # quality.py on the same folder reuses those SPEAR runs (same config) and adds the untrained baseline
    import quality

    spear_metrics = tmp_path / "runs" / "seed-0" / "spear" / "metrics.jsonl"
    before = spear_metrics.stat().st_mtime_ns
    quality.main(["--seeds", "0", "1", "--methods", "spear,none", "--out-dir", str(tmp_path / "runs"),
                  "--report", str(tmp_path / "q.md"), "fl.rounds=1", "fl.local_rollout_steps=4",
                  "fl.local_train_steps=1", "data.max_eval_examples=8", "gen.max_new_tokens_y0=4",
                  "gen.max_new_tokens_y1=4"])
    assert spear_metrics.stat().st_mtime_ns == before
    table = (tmp_path / "q.md").read_text()
    assert "| spear | " in table and "| none | " in table and (tmp_path / "q.png").is_file()
    none = [json.loads(line) for line in (tmp_path / "runs" / "seed-0" / "none" / "metrics.jsonl").open()]
    assert none[1]["aggregate"].get("steps", 0) == 0  # the untrained baseline took no optimizer step


def test_compare_baseline_ignores_times_and_catches_any_other_difference(tmp_path):
    import torch
    from compare_baseline import main as compare_main
    from safetensors.torch import save_file

    def run(name, rows, weight):
        folder = tmp_path / name
        (folder / "adapters" / "round_0001").mkdir(parents=True)
        (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        save_file({"w": torch.tensor([weight])}, str(folder / "adapters" / "round_0001" / "adapter_model.safetensors"))
        return str(folder)

    row = {"round": 1, "time": {"round_s": 1.0}, "clients": [{"metrics": {"wins": 3, "training_s": 0.5}}]}
    slower = {"round": 1, "time": {"round_s": 9.0}, "clients": [{"metrics": {"wins": 3, "training_s": 7.0}}]}
    other = {"round": 1, "time": {"round_s": 1.0}, "clients": [{"metrics": {"wins": 4, "training_s": 0.5}}]}
    a = run("a", [row], 1.0)
    assert compare_main([a, run("b", [slower], 1.0)]) == 0  # only times differ
    assert compare_main([a, run("c", [other], 1.0)]) == 1  # a metric differs
    assert compare_main([a, run("d", [row], 1.0 + 1e-7)]) == 1  # an adapter tensor differs in the last bits


def test_same_results_compare_prints_the_first_differing_key_and_fails(tmp_path, capsys):
    """Two hand-made fingerprints: equal ones are SAME (exit 0); one float off in its last bit, or one tensor
    changed, is printed with both values (and the tensor's max |diff|) and exits 1. No run is started."""
    import torch
    from safetensors.torch import save_file
    from same_results import main as same_main

    def fingerprint(name: str, loss: float, weight: float) -> str:
        out = tmp_path / name
        (out / "spear" / "adapters").mkdir(parents=True)
        file = "adapters/a.safetensors"
        save_file({"w": torch.tensor([weight, 2.0])}, str(out / "spear" / file))
        rows = [{"round": 0, "eval": {"accuracy": 0.5}}, {"round": 1, "clients": [{"metrics": {"loss": loss}}]}]
        tensors = {file: {"w": "f00d" if weight == 1.0 else "beef"}}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"out": str(out), "runs": {"spear": {"rows": rows, "tensors": tensors}}}))
        return str(path)

    base = fingerprint("base", 0.1, 1.0)
    assert same_main(["--fingerprint", fingerprint("same", 0.1, 1.0), "--compare", base]) == 0
    assert "spear: SAME" in capsys.readouterr().out
    assert same_main(["--fingerprint", fingerprint("float", 0.1 + 2**-56, 1.0), "--compare", base]) == 1
    out = capsys.readouterr().out
    assert "spear: DIFFERENT" in out and "rows[1].clients[0].metrics.loss: base 0.1 != now 0.10000000000000002" in out
    assert same_main(["--fingerprint", fingerprint("tensor", 0.1, 1.5), "--compare", base]) == 1
    out = capsys.readouterr().out
    assert "tensor adapters/a.safetensors :: w: base f00d != now beef (1 of 1 tensors differ, max |diff| 0.5)" in out


def test_same_results_drops_times_memory_and_node_ids_only():
    from same_results import strip_row

    row = {"round": 1, "time": {"round_s": 1.0}, "resources": {"peak_rss_mb_max": 9.0, "bytes_up": 10},
           "clients": [{"node_id": 7, "wire_bytes_up": 5, "metrics": {"training_s": 0.1, "wins": 3}}]}
    dropped: set[str] = set()
    unreviewed: set[str] = set()
    assert strip_row(row, dropped, unreviewed) == {"round": 1, "resources": {"bytes_up": 10},
                                                   "clients": [{"wire_bytes_up": 5, "metrics": {"wins": 3}}]}
    assert dropped == {"time", "peak_rss_mb_max", "node_id", "training_s"} and not unreviewed
    strip_row({"started_at_time": 1}, dropped, unreviewed)
    assert unreviewed == {"started_at_time"}  # kept, but flagged for review


@pytest.mark.slow
def test_round_time_variants_and_targets(bench_dir, capsys):
    """NAME@KEY=VALUE entries run as separate variants of one algorithm in one invocation, and the targets print."""
    import round_time

    assert round_time.split_variant("spear@gen.prefix_cache=false@gen.num_revisions=1") == \
        ("spear", ["gen.prefix_cache=false", "gen.num_revisions=1"])
    summary = round_time.main(["--bench-dir", str(bench_dir), "--rounds", "2", "--algorithms",
                               "spear,spear@gen.revision_template=authors@gen.prefix_cache=false"])
    out = capsys.readouterr().out
    assert set(summary["results"]) == {"spear", "spear@gen.revision_template=authors@gen.prefix_cache=false"}
    assert "target SPEAR <= 2.0 s" in out
    # the same prompts and answers either way: the variants differ in cost, not in what they generate per prompt
    a, b = summary["results"].values()
    assert a["generations_per_round"] > 0 and b["generations_per_round"] > 0


def test_scaling_growth_table_and_federation_rows(bench_dir):
    import scaling

    assert scaling.growth([{"value": 2, "t": 3.0}, {"value": 8, "t": 12.0}], "t") == pytest.approx(1.0)
    assert scaling.growth([{"value": 10, "t": 2.0}, {"value": 1000, "t": 2.0}], "t") == pytest.approx(0.0)
    assert scaling.growth([{"value": 1, "t": 1.0}, {"value": 16, "t": 4.0}], "t") == pytest.approx(0.5)
    folder = scaling.federation_dir(bench_dir, 20)  # 40 rows per client, at least 600
    rows = [json.loads(line) for line in (folder / "data" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 800 and len({r["id"] for r in rows}) == 800
    assert (folder / "model" / "config.json").is_file()
    point = {"value": 10, "generations_per_round": 64, "round_s": 1.0, "generation_s": 0.5, "training_s": 0.4, "generated_tokens_per_s": 100.0,
             "trained_tokens_per_s": 1000.0, "peak_rss_mb": 500.0, "setup_s": 0.2, "rows": 600, "load_s": 0.1,
             "partition_s": 0.01, "sample_ms": 0.02, "client_rows_median": 40}
    text = scaling.table({"federation": [point, {**point, "value": 1000, "round_s": 1.0}]})
    assert "| total clients N | 1,000 |" in text and "total clients N: 0.00" in text


@pytest.mark.slow
def test_scaling_point_runs_in_its_own_process(bench_dir):
    import scaling

    p = scaling.run_point(bench_dir, "federation", 10, rounds=2, threads=1)
    assert p["curve"] == "federation" and p["value"] == 10 and p["rows"] == 600 and p["round_s"] > 0
    assert p["peak_rss_mb"] > 0 and p["partition_s"] >= 0


def test_flower_scaling_point_runs_and_cleans_up(bench_dir, tmp_path, capsys):
    """One N=4 point on Flower's simulation runtime, 1 round: all rounds measured, memory polled, nothing left."""
    pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]')")
    import flower_scaling

    data, rows, cycled = flower_scaling.scaled_data(bench_dir, tmp_path / "data", 400)
    lines = (data / "train.jsonl").read_text().splitlines()
    assert (rows, cycled, len(lines)) == (800, True, 800) and json.loads(lines[612])["id"] == "train_612"
    assert json.loads(lines[612])["question"] == json.loads(lines[12])["question"]  # cycled from the 600 bench rows

    (point,) = flower_scaling.main(["--clients", "4", "--rounds", "1", "--bench-dir", str(bench_dir),
                                    "--work-dir", str(tmp_path / "runs")])
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    assert printed["ok"] and point["ok"], point.get("error")
    assert len(point["round_s"]) == 1 and point["round_s"][0] > 0 and point["failed_clients"] == 0
    assert 0 < point["first_round_start_s"] < point["first_round_end_s"] <= point["wall_s"]
    assert 0 < point["connected_s"] < point["first_round_end_s"]  # polled every 0.5 s: may pass the round start
    assert point["peak_rss_mb"]["serverapp"] > 0 and point["peak_rss_mb"]["ray"] > 0
    assert "left_behind" not in point and point["rows_cycled"] is False


def test_calibrate_scales_this_checkout_by_the_yardstick_of_the_day():
    import calibrate

    # A day 2x slower than on record: the yardstick's SPEAR round takes 5.38 s (on record 2.69 s), GRPO 4.12 s.
    result = calibrate.calibrated({"spear": [3.0, 3.6, 3.2], "grpo": [4.0, 4.4, 4.2]},
                                  {"spear": [5.38, 5.0, 6.0], "grpo": [4.12, 4.2, 4.0]})
    assert result["spear"]["round_s"] == 3.2 and result["spear"]["yardstick_round_s"] == 5.38
    assert result["spear"]["slowdown"] == pytest.approx(2.0)
    assert result["spear"]["calibrated_round_s"] == pytest.approx(1.6)  # 3.2 s today / 2.0
    assert result["grpo"]["slowdown"] == pytest.approx(2.0)
    assert result["grpo"]["calibrated_round_s"] == pytest.approx(2.1)  # 4.2 s today / 2.0


def test_calibrate_names_the_fix_when_the_yardstick_commit_is_missing(monkeypatch, tmp_path):
    import calibrate

    monkeypatch.setattr(calibrate.tempfile, "gettempdir", lambda: str(tmp_path))
    with pytest.raises(SystemExit, match="cannot check out the yardstick commit 0000000.*full clone"):
        calibrate.yardstick_checkout("0000000")


def test_threads_table_states_slowdown_and_fair_share(tmp_path):
    import threads

    results = [
        {"busy": 0, "threads": "1", "load_before": 0.5, "wall_s": 20.0, "round_s": 10.0,
         "header": "model m on cpu (fp32); torch threads 1 (model.torch_threads; set model.torch_threads=N to choose)"},
        {"busy": 3, "threads": "1", "load_before": 3.5, "wall_s": 41.0, "round_s": 21.0, "header": ""},
        {"busy": 3, "threads": "2", "load_before": 3.5, "wall_s": None, "timed_out": 600.0},
    ]
    path = tmp_path / "threads.md"
    threads.write_markdown(results, path, rounds=2, started="now", load_start=(0.5, 0.4, 0.3))
    text = path.read_text()
    cores = __import__("os").cpu_count()
    assert ("| 0 | 1 | torch threads 1 (model.torch_threads; set model.torch_threads=N to choose) | 0.50 | 20.0 | "
            "10.0 | - | - |") in text
    assert f"| 3 | 1 | - | 3.50 | 41.0 | 21.0 | 2.10x | {4 / cores:.2f}x |" in text
    assert "| 3 | 2 | - | 3.50 | > 600 (stopped) | - | - |" in text


def test_testbed_adjusts_the_ablations_together_with_holm():
    import testbed

    def comparison(label: str, diff: float, b: int, c: int, p: float) -> dict:
        return {"cell": {"label": label}, "reference": {"label": "spear"}, "diff": {"mean": diff}, "t_test": None,
                "mcnemar": {"0": {"cell_only": b, "ref_only": c, "pvalue": p}}}

    # the 12-01 testbed's six ablations at seed 0 (the figures issue 24 quotes): only λ_lose = 0 had p < 0.05
    summary = {"a": {"comparisons": [comparison("feedback_sft", 0.03, 1, 1, 0.001)]},  # not an ablation
               "c-confidence": {"comparisons": [comparison("conf", 0.014, 2, 0, 0.5)]},
               "c-margin": {"comparisons": [comparison("margin", 0.007, 4, 3, 1.0)]},
               "c-tail": {"comparisons": [comparison("tail", -0.049, 9, 16, 0.23013934)]},
               "c-revisions": {"comparisons": [comparison("rev", 0.007, 3, 2, 1.0)]},
               "c-lambda-lose": {"comparisons": [comparison("lose0", 0.056, 10, 2, 0.03857422),
                                                 comparison("lose1", 0.0, 10, 10, 1.0)]}}
    lines = testbed.ablation_holm(summary)
    assert "over the 6 ablations of (c)" in lines[2]
    assert "| lose0 | spear | +0.056 | McNemar within seed 0 (10/2) | 0.0386 | 0.231 |" in lines  # 6 x 0.0386
    assert "| tail | spear | -0.049 | McNemar within seed 0 (9/16) | 0.23 | 1 |" in lines  # max(0.231, 5 x 0.23)
    summary["c-tail"]["comparisons"][0]["t_test"] = {"pvalue": None}  # 3 seeds, every difference equal
    assert "| tail | spear | -0.049 | paired t: no variance | - | - |" in testbed.ablation_holm(summary)
    assert testbed.ablation_holm({"a": summary["a"]}) == []
    # the 3-seed testbed of 12-07 (bench/testbed.json): the paired t over seeds is the test; the one raw p below
    # 0.05 (whole-completion unlikelihood, 0.0342) is 6 x 0.0342 = 0.205 over the six, the others reach 1
    recorded = {"conf": 0.604, "margin": 0.697, "tail": 0.0342, "rev": 0.208, "lose0": 0.267, "lose1": 0.209}
    for entry in summary.values():
        for comp in entry["comparisons"]:
            comp["t_test"] = {"pvalue": recorded.get(comp["cell"]["label"], 0.001)}
    lines = testbed.ablation_holm(summary)
    assert "| tail | spear | -0.049 | paired t over seeds | 0.0342 | 0.205 |" in lines
    assert "| lose1 | spear | +0.000 | paired t over seeds | 0.209 | 1 |" in lines


def _real_model_run(root: Path, algorithm: str, seed: int, evals: tuple[str, str], rounds: int = 1) -> None:
    """A finished run folder as bench/real_model.py reads it: config.yaml and rows with round-0 and final evals."""
    import yaml

    run = root / algorithm / "default" / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"algorithm": {"name": algorithm}, "data": {"seed": seed},
                                                     "fl": {"rounds": rounds}}))
    ev = [{"n": len(c), "accuracy": c.count("1") / len(c), "correct": c} for c in evals]
    rows = [{"round": 0, "eval": ev[0]},
            {"round": 1, "time": {"round_s": 10.0}, "eval": ev[1],
             "aggregate": {"prompts": 4, "needs_revision": 2, "wins_revision": 1, "tokens_generated": 40,
                           "tokens_trained": 80},
             "resources": {"update_rss_peak_mb_max": 100.0, "bytes_down_per_client": 2e6, "bytes_up_per_client": 2e6}}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_real_model_summary_pairs_by_seed_and_tests_within_seeds(tmp_path):
    """Δ vs no training is end - round 0 per seed; the same gain on every seed is "no var.", never a tiny p; McNemar
    counts the items of one seed; an unfinished run stays out; a round-0 evaluation that differs between runs of a
    seed is an error."""
    import real_model

    _real_model_run(tmp_path, "spear", 0, ("1100", "1110"))
    _real_model_run(tmp_path, "spear", 1, ("1000", "1100"))
    _real_model_run(tmp_path, "grpo", 0, ("1100", "1100"), rounds=2)  # unfinished: 1 of 2 rounds
    runs = real_model.runs_of(tmp_path)
    assert sorted(runs) == [("spear", 0), ("spear", 1)]
    lines = "\n".join(real_model.summary_table(runs))
    spear = next(line for line in lines.splitlines() if line.startswith("| spear"))
    cells = [c.strip() for c in spear.split("|")[1:-1]]
    assert cells[1] == "0,1" and cells[2] == "0.375 [-1.213, 1.963]" and cells[4].startswith("+0.250")
    assert cells[5] == "no var." and cells[6] == "s0: 1/0 1; s1: 1/0 1" and cells[7] == "2/4 (50%)"
    assert "| no training (base model) | 0,1 | 0.375" in lines
    _real_model_run(tmp_path, "opsd", 0, ("0011", "0011"))
    with pytest.raises(SystemExit, match="seed 0: .*round-0 evaluation differs"):
        real_model.summary_table(real_model.runs_of(tmp_path))
