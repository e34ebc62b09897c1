"""The authors' schema is translated in one place: ignored keys are reported, RLTF-SD's old keys are mapped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from fedspear.config import ConfigError, config_from_dict, load_config
from fedspear.config_compat import translate

PRESETS = Path(__file__).resolve().parents[1] / "fedspear" / "configs"


def test_ignored_keys_are_dropped_and_named_in_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    data = {"data": {"max_attempts": 3, "num_clients": 4}, "distill": {"kl_weight": 1.0, "temperature": 3.0}}
    with caplog.at_level(logging.WARNING, logger="fedspear"):
        out = translate(data, "a.yaml")
    assert out["data"] == {"num_clients": 4} and out["distill"] == {"temperature": 3.0}
    assert data["data"] == {"max_attempts": 3, "num_clients": 4}  # the input is not changed
    (record,) = caplog.records
    assert record.getMessage() == ("a.yaml: ignored keys of the authors' schema that fedspear does not use: "
                                   "data.max_attempts, distill.kl_weight")


def test_nothing_to_translate_warns_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fedspear"):
        assert translate({"fl": {"rounds": 3}}, "override") == {"fl": {"rounds": 3}}
    assert not caplog.records


def test_rltf_sd_takes_the_old_grpo_and_distill_keys_unless_it_sets_its_own() -> None:
    cfg = load_config(None, ["grpo.num_generations=6", "grpo.beta_kl=0.5", "grpo.reward_scale=2",
                             "distill.feedback_max_chars=40"])
    r = cfg.rltf_sd
    assert (r.num_generations, r.beta_kl, r.reward_scale, r.feedback_max_chars) == (6, 0.5, 2.0, 40)
    assert (cfg.grpo.num_generations, cfg.grpo.beta_kl) == (6, 0.5)  # GRPO keeps its own values too
    own = load_config(None, ["grpo.num_generations=6", "rltf_sd.num_generations=3"])
    assert (own.grpo.num_generations, own.rltf_sd.num_generations) == (6, 3)


def test_every_preset_file_loads_and_reports_its_ignored_keys(caplog: pytest.LogCaptureFixture) -> None:
    for path in sorted(PRESETS.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fedspear"):
            cfg = load_config(path)
        ignored = [f"{s}.{k}" for s, keys in (("data", ("max_attempts", "dirichlet_num_classes")),
                                             ("distill", ("kl_weight", "anchor_weight", "num_demos",
                                                          "demo_max_chars")))
                   for k in keys if k in (raw.get(s) or {})]
        messages = [r.getMessage() for r in caplog.records]
        assert bool(ignored) == bool(messages), path.name
        if ignored:
            assert messages[0].endswith(", ".join(ignored))
        if "grpo" in raw and "num_generations" in raw["grpo"]:
            assert cfg.rltf_sd.num_generations == raw["grpo"]["num_generations"]


def test_unknown_keys_stay_errors_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'distill\.kl_weigth'"):
        load_config(None, ["distill.kl_weigth=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'rltf_sd\.num_generation'"):
        load_config(None, ["rltf_sd.num_generation=1"])


def test_a_stored_config_round_trips_with_rltf_sd_keys() -> None:
    cfg = load_config(None, ["algorithm.name=rltf_sd", "rltf_sd.num_generations=3", "grpo.num_generations=5"])
    again = config_from_dict(yaml.safe_load(cfg.to_yaml()))
    assert (again.rltf_sd.num_generations, again.grpo.num_generations) == (3, 5)
    assert "feedback_max_chars" not in cfg.to_dict()["distill"] and "max_attempts" not in cfg.to_dict()["data"]

