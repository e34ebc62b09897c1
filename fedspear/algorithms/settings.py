"""Each algorithm's own settings: one dataclass per algorithm, one config section each.

They are defined with the other config sections (:mod:`fedspear.config_sections`), so that reading a config
imports nothing of the algorithms (no torch) and the config layer imports nothing above it; the algorithms import
them from here. Each algorithm class names its dataclass (``Algorithm.Settings``) and its section
(``Algorithm.section``), and reads only that section plus the shared ones (``fl``, ``optim``, ``gen``,
``feedback``, ``model.max_seq_len``). Objectives and the meaning of every key: ``docs/algorithms.md``.
"""

from __future__ import annotations

from fedspear.config_sections import GRPOSettings, OPSDSettings, RLTFSDSettings, SpearSettings

__all__ = ["GRPOSettings", "OPSDSettings", "RLTFSDSettings", "SpearSettings"]
