"""The registry: name -> class, each algorithm built with its own section only, registration rules."""

from __future__ import annotations

import inspect
import re
from dataclasses import replace

import pytest

from fedspear import config
from fedspear.algorithms import registry
from fedspear.algorithms.base import Algorithm
from fedspear.algorithms.spear import Spear
from fedspear.config import ConfigError, load_config
from fedspear.tasks import get_task


def test_the_registry_and_the_config_list_the_same_built_in_algorithms():
    assert tuple(registry.ALGORITHMS)[: len(config.ALGORITHMS)] == config.ALGORITHMS
    for name, cls in registry.ALGORITHMS.items():
        assert cls.name == name and issubclass(cls, Algorithm)


@pytest.mark.parametrize(("name", "section"), [("spear", "spear"), ("grpo", "grpo"), ("opsd", "distill"),
                                               ("rltf_sd", "rltf_sd")])
def test_each_algorithm_gets_its_own_section(name, section):
    cfg = load_config(None, [f"algorithm.name={name}"])
    algo = registry.build_algorithm(cfg, get_task("world"))
    assert type(algo).section == section and algo.settings is getattr(cfg, section)
    assert algo.run.fl is cfg.fl and algo.run.max_seq_len == cfg.model.max_seq_len


def test_feedback_sft_is_spear_with_lambda_lose_zero_and_the_config_is_not_written():
    cfg = load_config(None, ["algorithm.name=feedback_sft", "spear.lambda_lose=0.3", "spear.lambda_anchor=0.2"])
    algo = registry.build_algorithm(cfg, get_task("world"))
    assert isinstance(algo, Spear) and algo.settings == replace(cfg.spear, lambda_lose=0.0)
    assert cfg.spear.lambda_lose == 0.3  # a copy was changed, not the shared config
    assert len(algo.regularisers()) == 1  # the anchor (no FedProx at mu = 0)


def test_no_algorithm_file_reads_the_run_config():
    for cls in registry.ALGORITHMS.values():
        source = inspect.getsource(inspect.getmodule(cls))
        assert not re.search(r"\bcfg\.|\.cfg\b", source), cls.__name__  # settings come from self.settings / run


def test_unknown_name_and_duplicate_registration_are_errors(monkeypatch):
    cfg = load_config(None)
    monkeypatch.setattr(cfg.algorithm, "name", "nope")
    with pytest.raises(ConfigError, match="unknown algorithm 'nope'"):
        registry.build_algorithm(cfg, get_task("world"))

    class Other(Spear):
        name = "spear"

    with pytest.raises(ValueError, match="already registered"):
        registry.register_algorithm(Other)


def test_an_algorithm_may_not_take_over_a_built_in_section(monkeypatch, tmp_path):
    # the newcomer's mistake: section = "spear" with settings of its own used to pass `check` and fail every round
    monkeypatch.setattr(config, "EXTRA_ALGORITHMS", [])
    monkeypatch.setattr(config, "EXTRA_SECTIONS", {})
    monkeypatch.setattr(registry, "ALGORITHMS", dict(registry.ALGORITHMS))
    (tmp_path / "clash_algo.py").write_text(
        "from dataclasses import dataclass\n"
        "from fedspear.algorithms.spear import Spear\n"
        "from fedspear.config_sections import SpearSettings\n"
        "@dataclass\nclass Own:\n    k: int = 1\n"
        "class Clash(Spear):\n    name = 'clash'\n    section = 'fl'\n    Settings = Own\n"
        "class Variant(Spear):\n    name = 'variant'\n    section = 'spear'\n    Settings = SpearSettings\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="names section 'fl', which is fedspear's own"):
        load_config(None, ["algorithm.name=clash_algo:Clash"])
    assert load_config(None, ["algorithm.name=clash_algo:Variant"]).algorithm.name == "clash_algo:Variant"

    class Clash2(Spear):
        name = "clash2"
        section = "spear"
        Settings = type("Own", (), {})

    with pytest.raises(ValueError, match="names section 'spear', which is fedspear's own"):
        registry.register_algorithm(Clash2)
    assert "clash2" not in registry.ALGORITHMS


def test_a_dotted_path_without_its_colon_names_the_form():
    with pytest.raises(ConfigError, match=r"named module:Class, e\.g\. my_pkg\.algo:PG$"):
        load_config(None, ["algorithm.name=my_pkg.algo.PG"])
