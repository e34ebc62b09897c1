"""Each algorithm's own settings: one dataclass per algorithm, one config section each.

These live apart from the algorithm files so that reading a config stays cheap (no torch import); each
algorithm class names its dataclass (``Algorithm.Settings``) and its section (``Algorithm.section``), and reads
only that section plus the shared ones (``fl``, ``optim``, ``gen``, ``feedback``, ``model.max_seq_len``).
Objectives and the meaning of every key: ``docs/algorithms.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors dataclasses.field(metadata={"help": ...})
    return field(default=default, metadata={"help": help})


@dataclass
class SpearSettings:
    """``spear.*``: SPEAR's loss weights and unlikelihood mask (also feedback-SFT's, with lambda_lose = 0)."""

    lambda_win: float = _f(1.0, "weight of the likelihood term on wins")
    lambda_lose: float = _f(0.3, "weight of the unlikelihood term on losses")
    lambda_anchor: float = _f(0.01, "weight of the L2 anchor to the round-start adapter (mean per tensor)")
    unlikelihood_margin: float = _f(0.1, "penalise a lose token only where p > margin")
    ema_decay: float = _f(0.0, "theta <- ema*global + (1-ema)*theta after training (0 = off)")
    ul_answer_only: bool = _f(False, "penalise only the answer suffix of lose traces")
    ul_tail_tokens: int = _f(0, "penalise only the last N completion tokens (0 = all)")
    ul_skip_math_ops: bool = _f(False, "never penalise math operators / LaTeX structure tokens")
    max_lose_ratio: float = _f(2.0, "keep at most ratio * wins lose traces")
    confidence_fixed: float = _f(1.0, "(fedspear) confidence c of a loss a revision fixed (paper: 1.0)")
    confidence_unfixed: float = _f(0.5, "(fedspear) confidence c of a loss no revision fixed (paper: 0.5)")


@dataclass
class GRPOSettings:
    """``grpo.*``: GRPO's group size, KL weight, clipping and reward."""

    num_generations: int = _f(4, "samples G per prompt")
    beta_kl: float = _f(0.02, "weight of the k3 KL to the round-start adapter")
    clip_range: float = _f(0.2, "PPO clip epsilon")
    normalize_advantage: bool = _f(True, "divide group advantages by their std")
    reward_scale: float = _f(1.0, "reward multiplier")
    reward_clip: float | None = _f(None, "clip rewards to +-value")


@dataclass
class OPSDSettings:
    """``distill.*``: OPSD's distillation temperature and privileged-context cap."""

    temperature: float = _f(2.0, "OPSD distillation temperature T")
    priv_max_chars: int = _f(2000, "cap on the privileged teacher context")


@dataclass
class RLTFSDSettings:
    """``rltf_sd.*``: RLTF-SD's group size, reward, loss weights and feedback cap.

    The authors' files give the group size, KL weight and reward under ``grpo.*`` and the feedback cap under
    ``distill.*``; :mod:`fedspear.config_compat` copies them here when a file does not set them itself.
    """

    num_generations: int = _f(4, "samples N per prompt (from grpo.num_generations when not set)")
    beta_kl: float = _f(0.02, "weight of the k3 KL to the round-start adapter (from grpo.beta_kl when not set)")
    reward_scale: float = _f(1.0, "reward multiplier (from grpo.reward_scale when not set)")
    reward_clip: float | None = _f(None, "clip rewards to +-value (from grpo.reward_clip when not set)")
    feedback_max_chars: int = _f(800, "cap on feedback text (from distill.feedback_max_chars when not set)")
    gamma: float = _f(1.0, "discount of the revision reward")
    sd_coeff: float = _f(0.1, "weight of the self-distillation term")
    rl_coeff: float = _f(1.0, "weight of the two REINFORCE terms")
    early_termination: bool = _f(True, "correct first answers get no revision")
