"""The Python API (``fedspear.run``, ``fedspear.load_config``) takes what a notebook user passes, and exports the
error classes a caller catches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fedspear
from fedspear.config import Config, ConfigError


def test_a_mapping_is_config_values_on_the_default_preset():
    as_text = fedspear.load_config(None, ["fl.rounds=3", "data.seed=7", "lora.target_modules=[q_proj,v_proj]"])
    for values in ({"fl": {"rounds": 3}, "data": {"seed": 7}, "lora": {"target_modules": ["q_proj", "v_proj"]}},
                   {"fl.rounds": 3, "data.seed": 7, "lora.target_modules": ["q_proj", "v_proj"]},
                   {"fl": {"rounds": 3}, "data.seed": 7, "lora.target_modules": "[q_proj,v_proj]"}):
        assert fedspear.load_config(values).to_dict() == as_text.to_dict()
    # overrides as a mapping, on a preset or on a mapping (the overrides win)
    assert fedspear.load_config("default", {"fl.rounds": 3, "data": {"seed": 7},
                                            "lora.target_modules": ["q_proj", "v_proj"]}).to_dict() == as_text.to_dict()
    assert fedspear.load_config({"fl.rounds": 9, "data.seed": 7}, {"fl.rounds": 3}).fl.rounds == 3
    assert fedspear.load_config({"fl.rounds": 9}, ["fl.rounds=3"]).fl.rounds == 3
    # a complete mapping (a run folder's config.yaml as read by yaml.safe_load) is exactly that config
    cfg = fedspear.load_config(None, ["fl.rounds=2", "output_dir=runs/x"])
    assert fedspear.load_config(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_bad_mappings_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="unknown key 'fl.round'.*did you mean 'fl.rounds'"):
        fedspear.load_config({"fl": {"round": 3}})
    with pytest.raises(ConfigError, match="fl.rounds: expected an integer"):
        fedspear.load_config({"fl.rounds": "many"})
    with pytest.raises(ConfigError, match="'fl.rounds' is given twice"):
        fedspear.load_config({"fl": {"rounds": 3}, "fl.rounds": 4})
    with pytest.raises(ConfigError, match="must be SECTION.KEY"):
        fedspear.load_config({"fl.rounds.x": 3})


@pytest.mark.parametrize("config", [42, ["fl.rounds=1"], b"default", 1.5])
def test_run_of_another_type_is_a_type_error_naming_what_it_takes(config):
    with pytest.raises(TypeError, match=r"config must be a Config, a mapping of config values .* got "
                                        + type(config).__name__):
        fedspear.run(config)


def test_overrides_of_another_type_are_a_type_error():
    with pytest.raises(TypeError, match=r"overrides must be a list of 'SECTION.KEY=VALUE' strings .* got str"):
        fedspear.load_config(None, "fl.rounds=3")
    with pytest.raises(TypeError, match="got list"):
        fedspear.run(None, [("fl.rounds", 3)])
    with pytest.raises(TypeError, match=r"config must be a mapping of config values .* got Config"):
        fedspear.load_config(Config())  # load_config builds a Config; run takes one


def test_run_given_a_mapping_runs_that_config(tmp_path, monkeypatch):
    from fedspear.federation import simulator

    seen: list[Config] = []
    monkeypatch.setattr(simulator, "run", lambda cfg, observers=(): seen.append(cfg) or tmp_path)
    result = fedspear.run({"fl": {"rounds": 1}, "output_dir": str(tmp_path)}, {"data.seed": 3})
    assert result.run_dir == tmp_path and result.rows == []
    expected = fedspear.load_config(None, ["fl.rounds=1", f"output_dir={tmp_path}", "data.seed=3"])
    assert seen[0].to_dict() == expected.to_dict()
    cfg = fedspear.load_config(None, ["fl.rounds=2"])
    fedspear.run(cfg, {"fl.rounds": 1})
    assert seen[1].fl.rounds == 1 and cfg.fl.rounds == 2  # the caller's Config is not modified


def test_run_tells_the_callers_observers_every_round_after_the_record(tmp_path):
    """fedspear.run(..., observers=[...]): each observer gets every round's RoundRow, in order, after the row is in
    metrics.jsonl (the record is written first), then on_finish; the rows it saw are the run's rows."""
    from fedspear.federation.observers import RoundObserver
    from fedspear.records import RunRecord

    class Watch(RoundObserver):
        def __init__(self) -> None:
            self.rounds, self.on_disk, self.finished = [], [], 0

        def on_round(self, row) -> None:
            self.rounds.append(row.round)
            self.on_disk.append(len(RunRecord(Path(cfg.output_dir)).read_metrics()))

        def on_finish(self, final_adapter, report) -> None:
            self.finished += 1

    watch = Watch()
    cfg = fedspear.load_config(None, ["fl.rounds=2", "fl.local_rollout_steps=4", "fl.local_train_steps=2",
                                      "data.max_eval_examples=8", "model.torch_threads=1", f"output_dir={tmp_path / 'r'}"])
    result = fedspear.run(cfg, observers=[watch])
    assert watch.rounds == [0, 1, 2] and watch.on_disk == [1, 2, 3] and watch.finished == 1
    assert [r["round"] for r in result.rows] == [0, 1, 2]


def test_the_error_classes_are_exported():
    from fedspear.config import ConfigError as config_error
    from fedspear.records import RunDirError, RunExistsError, RunFileError, RunInUseError
    from fedspear.tasks.base import DataError

    assert fedspear.ConfigError is config_error
    assert (fedspear.RunExistsError, fedspear.RunInUseError, fedspear.RunDirError, fedspear.RunFileError,
            fedspear.DataError) == (RunExistsError, RunInUseError, RunDirError, RunFileError, DataError)
    assert issubclass(fedspear.RunInUseError, fedspear.RunExistsError)
    assert fedspear.RunStopped.__module__ == "fedspear.federation.server"
    for name in fedspear.__all__:
        assert getattr(fedspear, name) is not None
    assert {"ConfigError", "DataError", "RunExistsError", "RunInUseError", "RunDirError", "RunFileError",
            "RunStopped", "StoreError", "OutputExistsError"} <= set(fedspear.__all__)
    # the config error is reachable without importing torch
    code = "import sys, fedspear; fedspear.ConfigError; from fedspear import DataError; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
