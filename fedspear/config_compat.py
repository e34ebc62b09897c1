"""The one place where the authors' YAML schema is mapped onto ours.

The authors' config files (``fedspear/configs/*-qwen2.5-1.5b.yaml`` and the like) carry keys this project
does not use, and give RLTF-SD its group size, KL weight and reward under ``grpo.*`` and its feedback cap under
``distill.*``. :func:`translate` turns one raw ``{section: {key: value}}`` mapping (a file, the overrides or
a stored config.yaml) into our schema before it is applied:

- keys listed in :data:`IGNORED` are dropped, and one warning names them all;
- each key in :data:`RLTF_SD_FROM` is copied to ``rltf_sd.*`` unless the same mapping sets that key itself
  (``distill.feedback_max_chars`` is moved, since OPSD does not read it).

Everything else passes through untouched, so an unknown key is still an error naming the key.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("fedspear")

# Keys of the authors' schema that nothing here reads: accepted so their files load, then dropped.
IGNORED: dict[str, tuple[str, ...]] = {
    "data": ("max_attempts", "dirichlet_num_classes"),
    "distill": ("kl_weight", "anchor_weight", "num_demos", "demo_max_chars"),
}

# (section, key) of the authors' schema -> RLTF-SD's own key it feeds; True = the source key is moved.
RLTF_SD_FROM: dict[tuple[str, str], tuple[str, bool]] = {
    ("grpo", "num_generations"): ("num_generations", False),
    ("grpo", "beta_kl"): ("beta_kl", False),
    ("grpo", "reward_scale"): ("reward_scale", False),
    ("grpo", "reward_clip"): ("reward_clip", False),
    ("distill", "feedback_max_chars"): ("feedback_max_chars", True),
}


def translate(data: dict[Any, Any], source: str) -> dict[Any, Any]:
    """Map one raw config mapping from the authors' schema onto ours (a new dict; ``data`` is not changed).

    Args:
        data: ``{section: {key: value}}`` as read from YAML or parsed from overrides; sections that are not
            mappings are passed through for the caller to reject.
        source: where ``data`` came from (a path, "override", "config"), for the warning.

    Returns:
        The translated mapping. Logs one warning listing the ignored keys, when there are any.
    """
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    ignored = []
    for section, keys in IGNORED.items():
        values = out.get(section)
        if isinstance(values, dict):
            for key in keys:
                if key in values:
                    del values[key]
                    ignored.append(f"{section}.{key}")
    own = out.get("rltf_sd")
    for (section, key), (target, move) in RLTF_SD_FROM.items():
        values = out.get(section)
        if not isinstance(values, dict) or key not in values:
            continue
        if own is None:
            own = out["rltf_sd"] = {}
        if isinstance(own, dict) and target not in (data.get("rltf_sd") or {}):
            own[target] = values[key]
        if move:
            del values[key]
    if ignored:
        logger.warning("%s: ignored keys of the authors' schema that fedspear does not use: %s", source,
                       ", ".join(ignored))
    return out
