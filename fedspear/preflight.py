"""Light checks of a config against the files it names, before any work (no torch, no transformers).

:func:`fedspear.config.validate` checks values alone. ``fedspear check``, ``fedspear run`` and the Python API also
run :func:`check_model_path`, :func:`check_not_adapter` and, when ``lora.target_modules`` is set,
:func:`fedspear.models.check_lora_targets` (the model built on PyTorch's ``meta`` device, no weights read); see
docs/configuration.md, "Errors before round 0".

``model.model_name`` must be a base model, not a PEFT adapter folder (one with ``adapter_config.json``):
transformers would load the adapter's base and merge the adapter into it, fedspear would train its own adapter on
top, and the saved adapters would not reproduce the evaluated model. Each failure is a
:class:`~fedspear.config.ConfigError` (one line, exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path

from fedspear.config import Config, ConfigError

ADAPTER_CONFIG = "adapter_config.json"


def adapter_error(name: str, adapter_config: str | Path) -> ConfigError:
    """The error for ``model.model_name`` naming a PEFT adapter whose ``adapter_config.json`` is ``adapter_config``."""
    try:
        base = json.loads(Path(adapter_config).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        base = None
    hint = f"base_model_name_or_path={base}" if base else "see its adapter_config.json"
    return ConfigError(f"model.model_name={name} is a LoRA adapter ({ADAPTER_CONFIG}); give its base model "
                       f"({hint}); fedspear trains its own adapter on the base model")


def check_model_path(cfg: Config) -> None:
    """Refuse a ``model.model_name`` (or ``model.tokenizer_name``) written as a path (starting with ``/``, ``.``
    or ``~``) that does not exist: it would otherwise be looked up on the Hugging Face Hub and fail there.

    Raises:
        ConfigError: the folder does not exist.
    """
    for key, name in (("model.model_name", cfg.model.model_name), ("model.tokenizer_name", cfg.model.tokenizer_name)):
        if name and name.startswith(("/", ".", "~")) and not Path(name).expanduser().is_dir():
            raise ConfigError(f"{key}={name}: no such folder; give a model folder or a Hugging Face model id "
                              "such as Qwen/Qwen2.5-0.5B-Instruct")


def check_not_adapter(cfg: Config) -> None:
    """Refuse a local ``model.model_name`` folder that holds a PEFT adapter (``adapter_config.json``).

    Names on the Hugging Face Hub are checked when the model is loaded (:func:`fedspear.models.check_not_adapter`).

    Raises:
        ConfigError: the folder holds ``adapter_config.json``; the message names its base model.
    """
    path = Path(cfg.model.model_name).expanduser()
    if (path / ADAPTER_CONFIG).is_file():
        raise adapter_error(cfg.model.model_name, path / ADAPTER_CONFIG)

