"""The presets shipped in ``fedspear/configs/`` and how ``--config`` finds its YAML file.

A leaf module (it imports only :mod:`fedspear.config`), so the CLI, ``fedspear serve``, ``fedspear flower-config``
and the public API (:func:`fedspear.load_config`) all resolve ``--config`` the same way without importing each
other. See ``docs/configuration.md``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from fedspear.config import ConfigError

PRESETS_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_PRESET = "default"


def list_presets() -> list[str]:
    """Names of the presets shipped in ``fedspear/configs/`` (file stems, sorted)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config(name: str | Path | None) -> Path:
    """Find the YAML file for ``--config``.

    Args:
        name: a path to a YAML file, a preset name with or without ``.yaml``, or None for the default preset.

    Returns:
        The path of the file to load.

    Raises:
        ConfigError: no such file and no such preset; the message names the closest preset.
    """
    if name is None:
        return PRESETS_DIR / f"{DEFAULT_PRESET}.yaml"
    name = str(name)
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if Path(name).name == name:  # a bare name: look among the presets
        for candidate in (PRESETS_DIR / name, PRESETS_DIR / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    presets = list_presets()
    match = difflib.get_close_matches(Path(name).stem, presets, n=1, cutoff=0.0)
    hint = f" (did you mean '{match[0]}'?)" if match else ""
    raise ConfigError(f"--config {name}: no such file and no such preset{hint}; presets: {', '.join(presets)}")
