"""The algorithm registry: ``algorithm.name`` -> the class implementing it.

Every caller (simulator, Flower ClientApp, serving, bench) builds its algorithm with :func:`build_algorithm`.
A new algorithm is one file with an :class:`~fedspear.algorithms.base.Algorithm` subclass plus one entry:
either a line in :data:`ALGORITHMS` below or, from outside fedspear, ``register_algorithm(MyAlgorithm)``, which
also lets the config accept the algorithm's name and its settings section. A user's class can also be named by
its dotted path, ``algorithm.name=pkg.mod:Class`` (:func:`algorithm_class`), on the command line, in ``sweep``,
``compare``, the Flower apps and the Python API. See docs/extending.md.
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
from fedspear.extensions import is_dotted, load_object
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
            that is not new and not ``cls.Settings``'s (:func:`fedspear.config.claim_section`).
    """
    name = cls.name
    if ALGORITHMS.get(name, cls) is not cls:
        raise ValueError(f"algorithm '{name}' is already registered as {ALGORITHMS[name].__name__}")
    clash = config_module.claim_section(cls.section, cls.Settings, name)
    if clash is not None:
        raise ValueError(clash)
    ALGORITHMS[name] = cls
    if name not in config_module.ALGORITHMS and name not in config_module.EXTRA_ALGORITHMS:
        config_module.EXTRA_ALGORITHMS.append(name)
    return cls


def algorithm_class(name: str) -> type[Algorithm[Any]]:
    """The class ``algorithm.name`` names: a built-in or registered name, or a dotted path ``pkg.mod:Class``.

    A dotted path is imported (:func:`fedspear.extensions.load_object`), checked to be an :class:`Algorithm`
    subclass, registered under its ``name`` (unless its module did so) and remembered under the path, so the CLI,
    ``sweep``, ``compare``, the Flower apps and the Python API all accept the same string.

    Raises:
        ConfigError: an unknown name, a path that does not import, or not an Algorithm subclass.
    """
    cls = ALGORITHMS.get(name)
    if cls is not None:
        return cls
    if not is_dotted(name):
        raise ConfigError(f"algorithm.name: unknown algorithm '{name}'; choose one of {', '.join(ALGORITHMS)} "
                          "or a dotted path pkg.mod:Class")
    obj = load_object(name, "algorithm.name")
    if not (isinstance(obj, type) and issubclass(obj, Algorithm) and isinstance(getattr(obj, "name", None), str)):
        raise ConfigError(f"algorithm.name={name}: {obj!r:.60} is not a subclass of "
                          "fedspear.algorithms.base.Algorithm with a name (see docs/extending.md)")
    if ALGORITHMS.get(obj.name) is not obj:
        register_algorithm(obj)
    ALGORITHMS[name] = obj
    return obj


def build_algorithm(cfg: Config, task: Task) -> Algorithm[Any]:
    """The algorithm ``cfg.algorithm.name`` names (:func:`algorithm_class`), built from ``cfg`` (its own section
    and the shared ones).

    Raises:
        ConfigError: as :func:`algorithm_class`.
    """
    return algorithm_class(cfg.algorithm.name).from_config(cfg, task)
