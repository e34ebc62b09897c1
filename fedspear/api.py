"""The Python API for notebooks and scripts: ``fedspear.load_config`` and ``fedspear.run``.

    import fedspear
    cfg = fedspear.load_config("default", ["fl.rounds=3", "output_dir=runs/nb"])
    result = fedspear.run(cfg)
    result.run_dir, result.final_eval["accuracy"]

Both are what ``fedspear check`` and ``fedspear run`` do (the same presets, overrides, validation and run
folder), without the command line. ``import fedspear`` stays light: this module is imported on first use, and
torch only when a run starts. See ``docs/configuration.md`` and ``docs/extending.md``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fedspear import config as _config
from fedspear.extensions import check as _check_extensions
from fedspear.preflight import check_model_path as _check_model_path
from fedspear.preflight import check_not_adapter as _check_not_adapter
from fedspear.presets import resolve_config

__all__ = ["RunResult", "load_config", "run"]


@dataclass
class RunResult:
    """A finished run.

    Attributes:
        run_dir: the run folder (config.yaml, metrics.jsonl, adapters/, report.md).
        rows: the rows of ``metrics.jsonl``, one per round (round 0 = before training).
    """

    run_dir: Path
    rows: list[dict[str, Any]]

    @property
    def final_eval(self) -> dict[str, Any] | None:
        """The evaluation of the last evaluated round (``accuracy``, ``groups``...), or None."""
        evals = [r["eval"] for r in self.rows if r.get("eval")]
        return evals[-1] if evals else None


ConfigInput = _config.Config | Mapping[str, Any] | str | Path | None
Overrides = Sequence[str] | Mapping[str, Any] | None

_TAKES = ("a Config, a mapping of config values ({'fl': {'rounds': 3}} or {'fl.rounds': 3}), a YAML path, a "
          "preset name, or None for the default preset")


def _split(config: ConfigInput, overrides: Overrides, allow_config: bool) -> tuple[Any, dict[str, Any], list[str]]:
    """(YAML path or None, Python values, text overrides) for :func:`fedspear.config.load_config`.

    Raises:
        TypeError: ``config`` or ``overrides`` of a type neither function takes (the message names what they take).
    """
    values: dict[str, Any] = {}
    if allow_config and isinstance(config, _config.Config):
        path, values = None, config.to_dict()  # the whole Config: every key, on the built-in defaults
    elif isinstance(config, Mapping):
        path, values = resolve_config(None), dict(config)  # the default preset with these values
    elif config is None or isinstance(config, (str, os.PathLike)):
        path = resolve_config(config)
    else:
        what = _TAKES if allow_config else _TAKES.replace("a Config, ", "")
        raise TypeError(f"config must be {what}; got {type(config).__name__}")
    if overrides is None:
        return path, values, []
    if isinstance(overrides, Mapping):
        return path, _merge(_config.nest_values(values), _config.nest_values(overrides)), []
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence) or \
            not all(isinstance(o, str) for o in overrides):
        raise TypeError("overrides must be a list of 'SECTION.KEY=VALUE' strings (e.g. ['fl.rounds=3']) or a mapping "
                        f"{{'fl.rounds': 3}}; got {type(overrides).__name__}")
    return path, values, list(overrides)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def load_config(config: str | Path | Mapping[str, Any] | None = None, overrides: Overrides = None
                ) -> _config.Config:
    """A validated run config: a preset or YAML file (None = the default preset), or a mapping of values on the default
    preset, plus overrides.

    Args:
        config: a YAML path, a preset name (``fedspear check --list`` shows the keys), None for ``default``, or a
            mapping of config values (``{"fl": {"rounds": 3}}`` or ``{"fl.rounds": 3}``) applied on the default
            preset (a complete mapping, such as a run folder's config.yaml read with ``yaml.safe_load``, sets every
            key).
        overrides: ``SECTION.KEY=VALUE`` items, as on the command line, or a mapping ``{"fl.rounds": 3}``.

    Returns:
        The Config, with any dotted-path task or feedback source (``module:Class``) imported and checked.

    Raises:
        ConfigError: no such file or preset, an unknown key, a bad value, a dotted path that does not load,
            ``model.model_name`` naming a PEFT adapter, ``lora.target_modules`` naming no module of the model.
        TypeError: ``config`` or ``overrides`` of another type.
    """
    path, values, text = _split(config, overrides, allow_config=False)
    cfg = _config.load_config(path, text, values=values)
    check_before_work(cfg)
    return cfg


def check_before_work(cfg: _config.Config) -> None:
    """What ``check``, ``run``, ``compare`` and ``sweep`` (and :func:`load_config`, :func:`run`) verify beyond the
    values: the user's task and feedback classes; that ``model.model_name`` is an existing folder (when written as a
    path) and no PEFT adapter; and, when ``lora.target_modules`` is set, that it names modules of the model (built
    without its weights; only then are torch and transformers imported). See docs/configuration.md, "Errors before
    round 0".

    Raises:
        ConfigError: the first check that fails (one line).
    """
    _check_extensions(cfg)
    _check_model_path(cfg)
    _check_not_adapter(cfg)
    if cfg.lora.target_modules:
        from fedspear.models import check_lora_targets  # imports torch

        check_lora_targets(cfg)


def run(config: ConfigInput = None, overrides: Overrides = None, observers: Sequence[Any] = ()) -> RunResult:
    """Run a federation in this process (what ``fedspear run`` does) and return its run folder and metrics.

    Args:
        config: a Config (not modified), or what :func:`load_config` takes (a YAML path, a preset name, None, or a
            mapping of config values on the default preset).
        overrides: ``KEY=VALUE`` items, or a mapping ``{"fl.rounds": 3}``, applied on top of ``config``.
        observers: round observers (``fedspear.federation.observers.RoundObserver``), told of every round's
            ``RoundRow`` after the run's own writer, trackers and console line (docs/extending.md).

    Returns:
        The :class:`RunResult`.

    Raises:
        ConfigError: as :func:`load_config`. TypeError: ``config`` or ``overrides`` of another type.
        RunExistsError: ``output_dir`` already holds a run (RunInUseError: a live run holds it).
        DataError: the task has no training or evaluation rows.
    """
    path, values, text = _split(config, overrides, allow_config=True)
    cfg = _config.load_config(path, text, values=values)  # a new Config: the caller's is never written
    check_before_work(cfg)
    from fedspear.federation import simulator  # imports torch
    from fedspear.records import RunRecord

    run_dir = simulator.run(replace(cfg), observers=observers)
    return RunResult(run_dir, RunRecord(run_dir).read_metrics())
