"""The default preset on the built-in world: SPEAR raises held-out accuracy (the `make run` job, shortened)."""

from __future__ import annotations

import pytest

from fedspear.cli import resolve_config
from fedspear.config import load_config
from fedspear.federation import simulator
from fedspear.records import RunRecord


@pytest.mark.slow
def test_spear_on_the_world_raises_held_out_accuracy(tmp_path):
    # 8 of the default 20 rounds: by then SPEAR has taught part of the misconceptions away (~0.60-0.65 vs 0.50)
    cfg = load_config(resolve_config(None), ["fl.rounds=8", f"output_dir={tmp_path / 'run'}"])
    run_dir = simulator.run(cfg)
    evals = [r["eval"] for r in RunRecord(run_dir).read_metrics() if r.get("eval")]
    first, last = evals[0], evals[-1]
    assert first["accuracy"] == pytest.approx(0.5, abs=0.02)  # the base: known facts right, misconceptions wrong
    assert first["groups"]["misconception"] < 0.05
    assert last["accuracy"] >= first["accuracy"] + 0.05
    assert last["groups"]["misconception"] >= 0.15  # learned from feedback-guided revisions
