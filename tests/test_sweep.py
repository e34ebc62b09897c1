"""fedspear sweep: grid parsing, the statistics on hand-computed inputs, and a tiny grid through the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from conftest import FAST_EVAL, require_shared_data, tiny_overrides

from fedspear.cli import main
from fedspear.config import ConfigError
from fedspear.sweep import (
    Cell,
    adjust_sweep,
    cluster_bootstrap,
    compare_cells,
    holm,
    mcnemar_items,
    mean_ci,
    paired_tests,
    parse_grid,
    reference_of,
    resolve_reference,
    write_sweep,
)


def test_parse_grid_and_its_errors():
    assert parse_grid("spear.lambda_lose=0,0.1 gen.num_revisions=1") == [
        ("spear.lambda_lose", ["0", "0.1"]), ("gen.num_revisions", ["1"])]
    assert parse_grid("") == []
    for bad, message in [("spear.lambda_lose", "is not KEY=V1,V2"), ("a=1 a=2", "a is given twice"),
                         ("data.seed=1,2", "data.seed is set by --seeds"), ("x=1,1", "lists a value twice")]:
        with pytest.raises(ConfigError, match=message):
            parse_grid(bad)


def test_mean_and_t_interval_by_hand():
    # mean 0.6, s = 0.1, sem = 0.1/sqrt(3), t(0.975, df=2) = 4.302653 -> half-width 0.248413
    ci = mean_ci([0.5, 0.6, 0.7])
    assert ci["mean"] == pytest.approx(0.6) and ci["n"] == 3
    assert ci["low"] == pytest.approx(0.6 - 0.248413, abs=1e-6) and ci["high"] == pytest.approx(0.848413, abs=1e-6)
    assert mean_ci([0.4]) == {"mean": 0.4, "low": None, "high": None, "n": 1}
    assert mean_ci([0.3, 0.3]) == {"mean": 0.3, "low": 0.3, "high": 0.3, "n": 2}


def test_paired_tests_by_hand():
    # differences 0.1, 0.2, 0.3: t = 0.2 / (0.1 / sqrt 3) = 3.4641, df = 2; two-sided p = 1 - t / sqrt(2 + t^2)
    out = paired_tests([0.6, 0.7, 0.9], [0.5, 0.5, 0.6])
    assert out["diff"]["mean"] == pytest.approx(0.2)
    assert out["t_test"]["statistic"] == pytest.approx(3.464102, abs=1e-5)
    assert out["t_test"]["pvalue"] == pytest.approx(1 - 3.464102 / math.sqrt(14), abs=1e-5)  # 0.074180
    assert "paired t over seeds" in out["t_test"]["name"] and "wilcoxon" in out["wilcoxon"]["name"]
    # Wilcoxon, exact, n = 3 all positive: W- = 0 and p = 2 / 2^3 = 0.25 (the smallest possible with 3 seeds)
    assert out["wilcoxon"]["statistic"] == 0 and out["wilcoxon"]["pvalue"] == pytest.approx(0.25)
    same = paired_tests([0.5, 0.6], [0.5, 0.6])
    assert same["t_test"]["pvalue"] is None and same["t_test"]["reason"] == "no variance: every seed's difference is +0"
    assert same["wilcoxon"] is None and same["diff"]["mean"] == 0
    one = paired_tests([0.7], [0.5])  # one seed: no test at all (scipy's Wilcoxon would say p = 1)
    assert one["t_test"] is None and one["wilcoxon"] is None and one["diff"]["mean"] == pytest.approx(0.2)


def test_a_constant_gain_has_no_variance_and_no_p():
    from scipy import stats

    cell, ref = [27 / 50, 28 / 50, 29 / 50], [26 / 50, 27 / 50, 28 / 50]  # every seed gains one item of 50
    assert stats.ttest_rel(cell, ref).pvalue < 1e-20  # as floats the differences differ in the last bit
    for items in (None, [50, 50, 50]):  # by tolerance, and on item counts
        out = paired_tests(cell, ref, items)
        assert out["t_test"]["pvalue"] is None and out["t_test"]["statistic"] is None
        assert out["t_test"]["reason"] == "no variance: every seed's difference is +0.02"
        assert out["diff"] == {"mean": pytest.approx(0.02), "low": out["diff"]["mean"], "high": out["diff"]["mean"],
                               "n": 3}
        assert out["wilcoxon"]["pvalue"] == pytest.approx(0.25)
    # gains of 1, 1 and 2 items: t = (4/3) / (sqrt(1/3) / sqrt 3) = 4, df = 2, p = 1 - 4 / sqrt(18) = 0.057191
    out = paired_tests([27 / 50, 28 / 50, 30 / 50], ref, [50, 50, 50])
    assert out["t_test"]["statistic"] == pytest.approx(4.0) and out["t_test"]["pvalue"] == pytest.approx(
        1 - 4 / math.sqrt(18))
    assert mean_ci([0.02 + 1e-17, 0.02, 0.02 - 1e-17])["low"] == pytest.approx(0.02, abs=1e-15)


def test_mcnemar_by_hand_within_one_seed():
    # items right only in the cell: 3, only in the reference: 1 -> b = 3, c = 1
    out = mcnemar_items("11100", "00010")
    assert (out["cell_only"], out["ref_only"], out["items"]) == (3, 1, 5)
    assert out["exact"] and "exact binomial" in out["name"]
    assert out["pvalue"] == pytest.approx(2 * (1 + 4) / 16)  # two-sided binomial(4, 1/2), k <= 1
    big = mcnemar_items("1" * 30 + "0" * 10, "0" * 30 + "1" * 10)  # 30 vs 10 discordant: chi-square
    assert not big["exact"] and big["statistic"] == pytest.approx((abs(30 - 10) - 1) ** 2 / 40)


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.20 (m = 4): 4 * 0.01, 3 * 0.03, max(0.09, 2 * 0.04), max(0.09, 0.20)
    assert holm([0.01, 0.04, 0.03, None, 0.20]) == pytest.approx([0.04, 0.09, 0.09, None, 0.20])
    assert holm([None, None]) == [None, None] and holm([0.3]) == [0.3]
    # the 12-01 testbed's six SPEAR ablations (seed 0, McNemar, as issue 24 quotes them): λ_lose = 0's p = 0.0386 was the one
    # below 0.05; over the six it is 6 x 0.0386 = 0.23
    recorded = [0.5, 1.0, 0.23013934, 1.0, 0.03857422, 1.0]
    adjusted = holm(recorded)
    assert adjusted[4] == pytest.approx(6 * 0.03857422) and adjusted[4] == pytest.approx(0.2314, abs=1e-4)
    assert adjusted[2] == pytest.approx(min(1.0, 5 * 0.23013934)) and adjusted[0] == 1.0


def _evals(correct: dict[int, str]) -> dict[str, object]:
    return {"evals": {s: {"accuracy": c.count("1") / len(c), "n": len(c), "correct": c, "items": "abc", "groups": {}}
                      for s, c in correct.items()}, "groups": {}}


def test_mcnemar_is_per_seed_never_pooled_and_holm_is_per_family():
    a, b, r = Cell("a"), Cell("b"), Cell("ref")
    stats = {a: _evals({0: "11100", 1: "1111000000"}), b: _evals({0: "11000", 1: "0000000000"}),
             r: _evals({0: "00010", 1: "0000000001"})}
    first = compare_cells(a, r, stats)
    assert first["mcnemar"] == {"0": mcnemar_items("11100", "00010"), "1": mcnemar_items("1111000000", "0000000001")}
    assert [m["items"] for m in first["mcnemar"].values()] == [5, 10]  # one seed's items each, never 15
    assert first["bootstrap"] is None  # 2 seeds: below the cluster bootstrap's minimum
    second = compare_cells(b, r, stats)
    adjust_sweep([first, second])
    for seed in ("0", "1"):  # one Holm family per seed's McNemar, over the two comparisons
        raw = [first["mcnemar"][seed]["pvalue"], second["mcnemar"][seed]["pvalue"]]
        assert [first["mcnemar"][seed]["pvalue_holm"], second["mcnemar"][seed]["pvalue_holm"]] == holm(raw)
    assert first["t_test"]["pvalue_holm"] == holm([first["t_test"]["pvalue"], second["t_test"]["pvalue"]])[0]


def test_cluster_bootstrap_is_seeded_and_right_on_extremes():
    seeds = [("1" * 20, "0" * 20)] * 5  # the cell right on every item, the reference on none
    out = cluster_bootstrap(seeds, resamples=500)
    assert (out["mean"], out["low"], out["high"], out["seeds"]) == (1.0, 1.0, 1.0, 5)
    assert out["pvalue"] == pytest.approx(1 / 501)  # no resample as far from +1 as +1 is from 0
    mixed = [("1100110011", "1010101010"), ("1111100000", "1111000000"), ("0101010101", "0101010100"),
             ("1110001110", "1100011100"), ("1000000001", "1000000000")]
    assert cluster_bootstrap(mixed) == cluster_bootstrap(mixed)  # deterministic
    same = cluster_bootstrap([(c, c) for c, _ in mixed])
    assert same["mean"] == 0 and same["pvalue"] == 1.0
    assert cluster_bootstrap(mixed[:4]) is None


def test_primary_test_holds_its_level_where_pooled_mcnemar_does_not():
    """A null with run-to-run variance: both methods have the same item difficulties, and every training run
    (method, seed) shifts all its items' log-odds by its own N(0, 0.3) draw, plus one N(0, 0.3) shared by the
    seed's two runs (seed-to-seed accuracy spread about
    0.05; the testbed measured 0.01-0.04). 400 simulated 3-seed comparisons on 144 items: the paired t rejects
    6.75%, pooled McNemar 21%."""
    import numpy as np
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(7)
    seeds, items, sweeps = 3, 144, 400
    difficulty = rng.normal(2.0, 1.5, size=items)
    t_rejects = pooled_rejects = 0
    for _ in range(sweeps):
        shift = rng.normal(0, 0.3, size=(2, seeds, 1)) + rng.normal(0, 0.3, size=(1, seeds, 1))
        right = rng.random((2, seeds, items)) < 1 / (1 + np.exp(-(difficulty + shift)))
        acc = right.mean(axis=2)
        p = paired_tests(list(acc[0]), list(acc[1]), [items] * seeds)["t_test"]["pvalue"]
        t_rejects += p is not None and p < 0.05
        b, c = int((right[0] & ~right[1]).sum()), int((~right[0] & right[1]).sum())
        pooled_rejects += mcnemar([[0, c], [b, 0]], exact=b + c < 25, correction=True).pvalue < 0.05
    assert t_rejects / sweeps <= 0.08
    assert pooled_rejects / sweeps > 0.12


def test_write_sweep_prints_no_variance_holm_and_per_seed_mcnemar(tmp_path):
    ref_items = {0: "1100000000", 1: "1110000000", 2: "1111000000"}
    gain = {0: "1110000000", 1: "1111000000", 2: "1111100000"}  # one more item right on every seed
    dirs = {}
    for cell, correct in ((Cell("spear"), ref_items), (Cell("grpo"), gain)):
        for seed, c in correct.items():
            run = tmp_path / cell.algorithm / f"seed{seed}"
            run.mkdir(parents=True)
            row = {"round": 1, "eval": {"accuracy": c.count("1") / 10, "n": 10, "correct": c, "items": "d1"}}
            (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
            dirs[(cell, seed)] = run
    text = write_sweep(tmp_path / "report", [], ["spear", "grpo"], [0, 1, 2], dirs).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| grpo | spear |"))
    assert "| +0.100 [+0.100, +0.100] | no variance | 0.25 (0.25) | - | s0: 1/0 1 (1); s1: 1/0 1 (1); s2: 1/0 1 (1) |" in row
    assert "paired t p (Holm)" in text and "never pooled over seeds" in text


def test_reference_resolution():
    grid = [("spear.lambda_lose", ["0.1", "0.3"])]
    assert resolve_reference(None, ["spear", "grpo"], grid) == ("algorithm", "spear", "")
    assert resolve_reference(None, ["spear"], grid) == ("value", "spear.lambda_lose", "0.1")
    assert resolve_reference("spear.lambda_lose=0.3", ["spear"], grid) == ("value", "spear.lambda_lose", "0.3")
    with pytest.raises(ConfigError, match="--reference: 'spear.lambda_lose=9'"):
        resolve_reference("spear.lambda_lose=9", ["spear"], grid)
    cell = Cell("grpo", (("spear.lambda_lose", "0.3"),))
    assert reference_of(cell, ("algorithm", "spear", "")) == Cell("spear", cell.params)
    assert reference_of(cell, ("value", "spear.lambda_lose", "0.3")) is None


def test_sweep_cli_runs_a_tiny_grid_reuses_runs_and_reports(tiny_qwen, tmp_path, capsys):
    require_shared_data()
    out = tmp_path / "sweep"
    overrides = tiny_overrides(tiny_qwen, out, **{**FAST_EVAL, "fl.rounds": 1})
    argv = ["sweep", "--grid", "spear.lambda_lose=0,0.1", "--algorithms", "spear", "--seeds", "0,1", "--no-progress",
            *overrides]
    assert main(argv) == 0
    report = out / "sweep.md"
    assert capsys.readouterr().out.strip().endswith(str(report))
    data = json.loads((out / "sweep.json").read_text())
    assert [c["label"] for c in data["cells"]] == ["spear spear.lambda_lose=0", "spear spear.lambda_lose=0.1"]
    for cell in data["cells"]:  # the statistics are those of the per-seed final accuracies
        accs = [cell["per_seed"][s]["accuracy"] for s in ("0", "1")]
        assert cell["accuracy"] == mean_ci(accs)
    comp = data["comparisons"][0]
    assert comp["reference"]["label"] == "spear spear.lambda_lose=0" and comp["seeds"] == [0, 1]
    assert [m["items"] for m in comp["mcnemar"].values()] == [4, 4]  # per seed, 4 items each, paired by id
    text = report.read_text()
    assert "| spear spear.lambda_lose=0.1 | spear spear.lambda_lose=0 |" in text and "McNemar" in text
    assert (out / "plots" / "accuracy_vs_spear.lambda_lose.png").is_file()
    # the same partition and client schedule per seed: both cells' seed-0 runs selected the same clients
    def schedule(cell: str, seed: int) -> list:
        rows = [json.loads(line) for line in (out / "spear" / cell / f"seed{seed}" / "metrics.jsonl").read_text()
                .splitlines() if line.strip()]
        return [r.get("selected_clients") for r in rows if r.get("round", 0) >= 1]

    assert schedule("spear.lambda_lose=0", 0) == schedule("default", 0)
    # 0.1 is the default preset's value: that cell's runs live in spear/default (shared with any sweep's default)
    metrics = out / "spear" / "default" / "seed1" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    assert main(argv) == 0  # everything reused: no run touched, the same report
    assert metrics.stat().st_mtime_ns == before
    assert json.loads((out / "sweep.json").read_text()) == data
    # bad input: one line, exit 2, nothing run
    assert main(["sweep", "--grid", "spear.lambda_lose=0,-1", "--algorithms", "spear", "--seeds", "0",
                 *overrides]) == 2
    assert "spear.lambda_lose: must be >= 0" in capsys.readouterr().err
    assert main(["sweep", "--algorithms", "spear,nope", "--seeds", "0", *overrides]) == 2
    assert "--algorithms: unknown nope" in capsys.readouterr().err
    assert main(["sweep", "--algorithms", "spear", "--seeds", "0,x", *overrides]) == 2


# --------------------------------------------------------------------------- issue 23 class 6


def test_seeds_are_integers_each_once_after_parsing():
    from fedspear.sweep import parse_seeds

    assert parse_seeds("0, 1,2") == [0, 1, 2] and parse_seeds("-1,+2") == [-1, 2]
    for text, message in [("0,0", "--seeds: 0 listed more than once"),
                          ("0,00", r"--seeds: 0 \(0 and 00\) listed more than once"),
                          ("1,+1,2", r"--seeds: 1 \(1 and \+1\) listed more than once"),
                          ("0,x", "'x' is not an integer"), ("1_0", "'1_0' is not an integer"),
                          (" , ", "give at least one integer")]:
        with pytest.raises(ConfigError, match=message):
            parse_seeds(text)


def test_grid_values_equal_once_typed_are_refused(tmp_path):
    from fedspear.sweep import plan

    over = [f"output_dir={tmp_path / 'sw'}"]
    with pytest.raises(ConfigError, match=r"--grid: spear.lambda_lose=0,0.0 are one value once typed \(0.0\)"):
        plan(None, over, parse_grid("spear.lambda_lose=0,0.1,0.0"), ["spear"], [0])
    with pytest.raises(ConfigError, match=r"gen.num_revisions=1,01 are one value once typed \(1\)"):
        plan(None, over, parse_grid("gen.num_revisions=1,01"), ["spear"], [0])
    _, runs = plan(None, over, parse_grid("spear.lambda_lose=0,0.1"), ["spear"], [0])
    assert len(runs) == 2


def test_sweep_without_an_output_dir_has_a_stable_folder(tmp_path, monkeypatch):
    import time

    from fedspear.sweep import plan

    template = [f"output_dir={tmp_path / 'runs' / '{dataset}-{algorithm}-{time}'}"]  # as the default preset
    grid = parse_grid("spear.lambda_lose=0,0.1")
    monkeypatch.setattr(time, "strftime", lambda *a: "20260101-000000")
    base, runs = plan(None, template, grid, ["spear"], [0, 1])
    monkeypatch.setattr(time, "strftime", lambda *a: "20260101-000107")  # a rerun a minute later: the same folder
    assert plan(None, template, grid, ["spear"], [0, 1])[0] == base
    assert base.parent == tmp_path / "runs" and re.fullmatch(r"sweep-default-[0-9a-f]{10}", base.name)
    assert runs[(Cell("spear", (("spear.lambda_lose", "0"),)), 1)].output_dir == str(
        base / "spear" / "spear.lambda_lose=0" / "seed1")
    # another definition (grid, seeds, algorithms or config) is another sweep, in another folder
    others = {plan(None, template, parse_grid("spear.lambda_lose=0,0.3"), ["spear"], [0, 1])[0],
              plan(None, template, grid, ["spear"], [0])[0],
              plan(None, template, grid, ["spear", "grpo"], [0, 1])[0],
              plan(None, [*template, "fl.rounds=2"], grid, ["spear"], [0, 1])[0]}
    assert len(others) == 4 and base not in others
    # the same values written differently are the same sweep
    assert plan(None, template, parse_grid("spear.lambda_lose=0.0,0.10"), ["spear"], [0, 1])[0] == base
    # an output_dir without {time} is used as given, as before
    assert plan(None, [f"output_dir={tmp_path / 'mine'}"], grid, ["spear"], [0])[0] == tmp_path / "mine"


def test_interrupted_sweep_prints_its_folder_and_the_command_that_continues_it(tmp_path, monkeypatch, capsys):
    import shlex

    import fedspear.compare
    import fedspear.sweep

    done: list[str] = []
    interrupted: list[bool] = []

    def fake_run(cfg):
        if len(done) == 1 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # Ctrl-C during the second run of the first try
        done.append(cfg.output_dir)
        return cfg.output_dir

    monkeypatch.setattr(fedspear.compare, "run_or_reuse", fake_run)
    monkeypatch.setattr(fedspear.sweep, "write_sweep", lambda base, *a, **k: base / "sweep.md")
    argv = ["sweep", "--grid", "spear.lambda_lose=0,0.1", "--seeds", "0", "--no-progress",
            f"output_dir={tmp_path / 'runs' / '{time}'}"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    folder, command = re.fullmatch(r"fedspear: interrupted; the sweep's finished runs are kept in (\S+); continue "
                                   r"it with: (.+)", err).groups()
    assert re.fullmatch(r"sweep-default-[0-9a-f]{10}", Path(folder).name) and len(done) == 1
    words = shlex.split(command)
    assert words[:2] == ["fedspear", "sweep"] and words[-1] == f"output_dir={folder}"
    assert main(words[1:]) == 0  # the printed command continues the same sweep in the same folder
    assert capsys.readouterr().out.strip() == str(Path(folder) / "sweep.md")
    assert done == [str(Path(folder) / "spear" / "spear.lambda_lose=0" / "seed0"),
                    str(Path(folder) / "spear" / "spear.lambda_lose=0" / "seed0"),
                    str(Path(folder) / "spear" / "default" / "seed0")]
