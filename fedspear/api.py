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


def load_config(config: str | Path | None = None, overrides: list[str] | None = None) -> _config.Config:
    """A validated run config: a YAML file or preset name (None = the default preset) plus ``KEY=VALUE`` overrides.

    Args:
        config: a YAML path, a preset name (``fedspear check --list`` shows the keys), or None for ``default``.
        overrides: ``SECTION.KEY=VALUE`` items, as on the command line.

    Returns:
        The Config, with any dotted-path task or feedback source (``module:Class``) imported and checked.

    Raises:
        ConfigError: no such file or preset, an unknown key, a bad value, a dotted path that does not load,
            ``model.model_name`` naming a PEFT adapter, ``lora.target_modules`` naming no module of the model.
    """
    cfg = _config.load_config(resolve_config(config), list(overrides or []))
    _check_before_work(cfg)
    return cfg


def _check_before_work(cfg: _config.Config) -> None:
    """What ``fedspear check`` verifies beyond the values (``fedspear.cli.check_before_work``, repeated here: the
    API does not import the command line)."""
    _check_extensions(cfg)
    _check_model_path(cfg)
    _check_not_adapter(cfg)
    if cfg.lora.target_modules:
        from fedspear.models import check_lora_targets  # imports torch

        check_lora_targets(cfg)


def run(config: _config.Config | str | Path | None = None, overrides: list[str] | None = None) -> RunResult:
    """Run a federation in this process (what ``fedspear run`` does) and return its run folder and metrics.

    Args:
        config: a Config (not modified), or a YAML path / preset name / None as for :func:`load_config`.
        overrides: ``KEY=VALUE`` items applied on top of ``config``.

    Returns:
        The :class:`RunResult`.

    Raises:
        ConfigError: as :func:`load_config`. RunExistsError: ``output_dir`` already holds a run.
        DataError: the task has no training or evaluation rows.
    """
    if isinstance(config, _config.Config):
        cfg = _config.config_from_dict(config.to_dict())  # a copy: the run expands output_dir in place
        if overrides:
            _config.apply_overrides(cfg, list(overrides))
        _check_before_work(cfg)
    else:
        cfg = load_config(config, overrides)
    from fedspear.federation import simulator  # imports torch
    from fedspear.records import RunRecord

    run_dir = simulator.run(replace(cfg))
    return RunResult(run_dir, RunRecord(run_dir).read_metrics())
