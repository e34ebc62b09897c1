"""End to end through the real console entry point: `fedspear run` of 2 rounds x 2 clients on ARC rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import FAST_EVAL, require_shared_data, tiny_overrides


def test_fedspear_run_cli_end_to_end(tiny_qwen, tmp_path):
    require_shared_data()
    out = tmp_path / "run-{algorithm}"
    proc = subprocess.run([sys.executable, "-m", "fedspear", "run", *tiny_overrides(tiny_qwen, out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = tmp_path / "run-spear"
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    assert "round   2/2" in proc.stdout + proc.stderr  # one summary line per round
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["data"]["train"] == 1119 and rows[0]["eval"]["n"] == 16
    for r in rows[1:]:
        assert r["selected_clients"] == [0, 1]
        agg = r["aggregate"]
        assert agg["prompts"] == 12 and agg["wins"] + agg["losses"] <= agg["prompts"] * 2
        assert agg["needs_revision"] == agg["prompts"] - agg["wins_y0"]
    assert (run_dir / "adapters" / "round_0002" / "adapter_config.json").is_file()
    assert (run_dir / "plots" / "accuracy.png").stat().st_size > 0
    report = (run_dir / "report.md").read_text()
    assert "accuracy" in report.lower()

    again = subprocess.run([sys.executable, "-m", "fedspear", "report", str(run_dir)], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "report.md" in again.stdout


# Three `fedspear run`s whose {time} expands to the same second: time.strftime is fixed in each process.
_SAME_SECOND = ("import sys, time; time.strftime = lambda *a: '20260101-000000'; from fedspear.cli import main; "
                "sys.exit(main(sys.argv[1:]))")


@pytest.mark.slow
def test_runs_started_in_the_same_second_each_own_a_folder(tiny_qwen, tmp_path):
    require_shared_data()
    template = tmp_path / "runs" / "{dataset}-{algorithm}-{time}"
    args = ["run", *tiny_overrides(tiny_qwen, template, **FAST_EVAL, **{"fl.rounds": 1})]
    procs = [subprocess.Popen([sys.executable, "-c", _SAME_SECOND, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1500:] for _, err in outs]
    base = tmp_path / "runs" / "arc_challenge-spear-20260101-000000"
    folders = [base, base.with_name(base.name + "-1"), base.with_name(base.name + "-2")]
    assert sorted(out.strip().splitlines()[-1] for out, _ in outs) == sorted(map(str, folders))
    for folder in folders:
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        assert cfg["output_dir"] == str(folder)  # its own config
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [0, 1]  # exactly its own rows
    assert sorted(p.name for p in base.parent.iterdir()) == sorted(f.name for f in folders)


def test_run_into_a_folder_a_live_run_holds_is_one_line_exit_2(tmp_path, capsys):
    from fedspear import cli
    from fedspear.records import RunRecord

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("fl: {rounds: 1}\n")  # a live run that has not finished round 0
    with RunRecord(folder) as live:
        live.lock()
        assert cli.main(["run", f"output_dir={folder}", "fl.rounds=1"]) == 2
        assert cli.main(["run", "--resume", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2:] == [f"fedspear: error: output folder {folder} is in use by a running fedspear process (pid "
                        f"{os.getpid()}); wait for it to end or choose another output_dir"] * 2
    assert (folder / "config.yaml").read_text() == "fl: {rounds: 1}\n"  # nothing of the live run was removed
