"""The algorithm registry: ``algorithm.name`` -> the class implementing it.

Every caller (simulator, Flower ClientApp, serving, bench) builds its algorithm with :func:`build_algorithm`.
A new algorithm is one file with an :class:`~fedspear.algorithms.base.Algorithm` subclass plus one entry:
either a line in :data:`ALGORITHMS` below or, from outside fedspear, ``register_algorithm(MyAlgorithm)``, which
also lets the config accept the algorithm's name and its settings section. See docs/algorithms.md.
"""

from __future__ import annotations

from typing import Any

from fedspear import config as config_module
from fedspear.algorithms.base import Algorithm
from fedspear.algorithms.feedback_sft import FeedbackSFT
from fedspear.algorithms.grpo import GRPO
from fedspear.algorithms.opsd import OPSD
from fedspear.algorithms.rltf_sd import RLTFSD
from fedspear.algorithms.spear import Spear
from fedspear.config import Config, ConfigError
from fedspear.tasks.base import Task

ALGORITHMS: dict[str, type[Algorithm[Any]]] = {
    "spear": Spear,
    "feedback_sft": FeedbackSFT,
    "grpo": GRPO,
    "opsd": OPSD,
    "rltf_sd": RLTFSD,
}


def register_algorithm(cls: type[Algorithm[Any]]) -> type[Algorithm[Any]]:
    """Add ``cls`` to :data:`ALGORITHMS` under ``cls.name`` and let the config accept it (usable as a decorator).

    The config then accepts ``algorithm.name=<cls.name>`` and, when ``cls.section`` is set and new, the keys of
    ``cls.Settings`` (a dataclass of typed fields with defaults) under that section.

    Raises:
        ValueError: ``cls.name`` is already taken by another class, or ``cls.section`` names a section
            that is not new and not ``cls.Settings``'s.
    """
    name = cls.name
    if ALGORITHMS.get(name, cls) is not cls:
        raise ValueError(f"algorithm '{name}' is already registered as {ALGORITHMS[name].__name__}")
    section = cls.section
    if section is not None and section not in Config.__dataclass_fields__:
        known = config_module.EXTRA_SECTIONS.get(section, cls.Settings)
        if known is not cls.Settings or cls.Settings is None:
            raise ValueError(f"section '{section}' of algorithm '{name}' needs a Settings dataclass of its own")
        config_module.EXTRA_SECTIONS[section] = cls.Settings
    ALGORITHMS[name] = cls
    if name not in config_module.ALGORITHMS and name not in config_module.EXTRA_ALGORITHMS:
        config_module.EXTRA_ALGORITHMS.append(name)
    return cls


def build_algorithm(cfg: Config, task: Task) -> Algorithm[Any]:
    """The algorithm ``cfg.algorithm.name`` names, built from ``cfg`` (its own section and the shared ones).

    Raises:
        ConfigError: no algorithm of that name is registered.
    """
    cls = ALGORITHMS.get(cfg.algorithm.name)
    if cls is None:
        raise ConfigError(f"algorithm.name: unknown algorithm '{cfg.algorithm.name}'; choose one of "
                          f"{', '.join(ALGORITHMS)}")
    return cls.from_config(cfg, task)
