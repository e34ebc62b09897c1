"""End to end through the real console entry point: `fedspear run` of 2 rounds x 2 clients on ARC rows."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import require_shared_data, tiny_overrides


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
