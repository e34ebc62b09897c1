"""Client-update algorithms: one module per algorithm, each exposing ``rollout``, ``train``, ``local_update``."""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module path; every module has the same rollout/train/local_update signatures (see base.py).
ALGORITHMS = {
    "spear": "fedspear.algorithms.spear",
    "feedback_sft": "fedspear.algorithms.feedback_sft",
    "grpo": "fedspear.algorithms.grpo",
    "opsd": "fedspear.algorithms.opsd",
    "rltf_sd": "fedspear.algorithms.rltf_sd",
}


def get_algorithm(name: str) -> ModuleType:
    """Import the module implementing algorithm ``name``."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{name}'; choose one of {', '.join(ALGORITHMS)}")
    return importlib.import_module(ALGORITHMS[name])
