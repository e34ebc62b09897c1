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
