"""fedspear: online federated fine-tuning of LLMs from real-time feedback (SPEAR and its baselines).

Start with the command line (``fedspear --help``, :mod:`fedspear.cli`) or, in Python, with
``fedspear.load_config(preset_or_file, overrides)`` and ``fedspear.run(config)`` (:mod:`fedspear.api`). Importing
this package is cheap: the API is imported on first use, and torch and transformers only by the modules that
need them. The design: ``docs/architecture.md``.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("fedspear")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Library code logs to the "fedspear" logger; the CLI attaches a handler, a library user may attach their own.
logging.getLogger("fedspear").addHandler(logging.NullHandler())

__all__ = ["RunResult", "__version__", "load_config", "run"]

_API = ("RunResult", "load_config", "run")


def __getattr__(name: str) -> Any:
    """``fedspear.run``, ``fedspear.load_config`` and ``fedspear.RunResult``, imported from :mod:`fedspear.api` on
    first use (PEP 562), so ``import fedspear`` imports neither the config machinery nor torch."""
    if name in _API:
        from fedspear import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedspear' has no attribute {name!r}")
