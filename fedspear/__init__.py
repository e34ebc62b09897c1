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

# The errors a user fixes (the CLI prints them as one line and exits 2; RunStopped exits 3), by defining module.
_ERRORS = {
    "ConfigError": "fedspear.config_sections",  # a bad config file, key, value or command-line option
    "DataError": "fedspear.tasks.base",  # a task's data missing or unusable
    "RunExistsError": "fedspear.records",  # output_dir already holds a run
    "RunInUseError": "fedspear.records",  # a live run holds output_dir (a RunExistsError)
    "RunDirError": "fedspear.records",  # output_dir cannot hold a run
    "RunFileError": "fedspear.records",  # a damaged checkpoint or metrics.jsonl
    "RunStopped": "fedspear.federation.server",  # fl.max_idle_rounds rounds without a usable update
    "StoreError": "fedspear.serve.store",  # fedspear serve's trace store
    "OutputExistsError": "fedspear.world_base",  # make-base would overwrite files it did not write
}

_API = ("RunResult", "load_config", "run")

__all__ = ["__version__", *_API, *_ERRORS]


def __getattr__(name: str) -> Any:
    """``fedspear.run``, ``fedspear.load_config``, ``fedspear.RunResult`` (from :mod:`fedspear.api`) and the error
    classes (``fedspear.ConfigError``, ``fedspear.RunExistsError``...), imported on first use (PEP 562), so ``import
    fedspear`` imports neither the config machinery nor torch (the run-folder errors import torch when first used)."""
    if name in _API:
        from fedspear import api

        return getattr(api, name)
    if name in _ERRORS:
        from importlib import import_module

        return getattr(import_module(_ERRORS[name]), name)
    raise AttributeError(f"module 'fedspear' has no attribute {name!r}")
