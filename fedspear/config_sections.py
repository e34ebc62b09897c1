"""The configuration's sections (one dataclass per YAML section) and the names they accept.

:class:`fedspear.config.Config` holds one of each, including the built-in algorithms' sections (``spear``, ``grpo``,
``distill``, ``rltf_sd``: :class:`SpearSettings` ...; also importable from :mod:`fedspear.algorithms.settings`);
``fedspear.config`` parses, overrides and validates them. Every field carries its help text (``fedspear check
--list``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The built-in algorithms (fedspear.algorithms.registry.ALGORITHMS maps each to its class; a test keeps the two
# in step). register_algorithm adds others with the config section of their settings (fedspear.config.EXTRA_*).
ALGORITHMS = ("spear", "feedback_sft", "grpo", "opsd", "rltf_sd")
TASKS = ("arc_challenge", "hellaswag", "math_mcqa", "strategy_qa", "world")
AGGREGATIONS = ("fedavg", "fedadam", "fedyogi", "median", "trimmed_mean", "krum", "multi_krum")
DP_MODES = ("off", "central", "local")
TRACKERS = ("tensorboard", "wandb")
DTYPES = ("fp32", "bf16", "fp16", "auto")
CHAT_TEMPLATE_MODES = ("auto", "on", "off")
# gen.revision_template: the section orders of a revision prompt (fedspear.tasks.prompts builds them).
REVISION_TEMPLATES = ("instructions_first", "authors")
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # integers are stored in 64 bits (numpy, torch.manual_seed, safetensors)


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names the key and the fix."""


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors dataclasses.field(metadata={"help": ...})
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class AlgorithmConfig:
    name: str = _f("spear", f"client update: one of {', '.join(ALGORITHMS)}, a registered name, or your own "
                            "class as pkg.mod:Class (docs/extending.md)")


@dataclass
class ModelConfig:
    model_name: str = _f("fedspear/world-base", "Hugging Face model id or local folder ('fedspear/world-base' = built-in)")
    tokenizer_name: str | None = _f(None, "tokenizer id or folder; None = model_name")
    trust_remote_code: bool = _f(False, "allow custom modelling code from the hub")
    max_seq_len: int = _f(2048, "prompt + completion tokens kept; prompts are left-truncated to fit")
    dtype: str = _f("bf16", "weight dtype: fp32 | bf16 | fp16 | auto (bf16 stays bf16)")
    device_map: str = _f("auto", "'auto' = CUDA when present else CPU, or an explicit device such as 'cpu', 'cuda:1'")
    torch_threads: str = _f("auto", "torch CPU threads: auto (the cores other processes leave free, less one, judged "
                            "once from the load average; OMP_NUM_THREADS if set) | N (docs/performance.md)")
    load_in_4bit: bool = _f(False, "4-bit base weights via bitsandbytes (CUDA only)")
    gradient_checkpointing: bool = _f(True, "recompute activations in backward to save memory")
    chat_template: str = _f("auto", "(fedspear) wrap every prompt in the tokenizer's chat template: auto (= on when "
                            "the tokenizer has one) | on | off (raw prompts, as the paper's base-model presets)")


@dataclass
class LoraConfig:
    r: int = _f(16, "LoRA rank")
    alpha: float = _f(32, "LoRA alpha (scaling = alpha / r)")
    dropout: float = _f(0.05, "LoRA dropout")
    bias: str = _f("none", "LoRA bias: none | all | lora_only")
    last_n_layers: int = _f(6, "adapt only the last N transformer blocks (>= number of layers = all)")
    target_modules: list[str] = _f([], "module-name suffixes to adapt; [] = auto-detect by family")


@dataclass
class DataConfig:
    dataset: str = _f("arc_challenge", f"task: one of {', '.join(TASKS)}, or your Task class as module:Class")
    path: str | None = _f(None, "(fedspear) local file or folder with the data; None = the hub id")
    split: str = _f("train", "training split name")
    eval_split: str | None = _f(None, "evaluation split name; None = the task's default")
    eval_fraction: float = _f(0.02, "share of training rows carved out for eval when no eval split exists")
    num_clients: int = _f(20, "number of clients N (1 = centralized)")
    dirichlet_alpha: float = _f(0.3, "Dirichlet concentration of the non-IID partition")
    max_examples_per_client: int = _f(500, "cap per client, a random subsample across classes")
    seed: int = _f(42, "seed for data shuffling, partition, client sampling and every client update")
    eval_every: int = _f(5, "evaluate every N rounds (and at round 0 and the last round)")
    eval_every_round_up_to: int = _f(10, "also evaluate every round up to this one")
    max_eval_examples: int = _f(10000, "(fedspear) cap on evaluation rows (a seeded subsample)")
    eval_method: str = _f("auto", "(fedspear) auto | generative | log_likelihood | both (MC tasks support both)")
    groups: list[str] = _f([], "(fedspear) world: keep only these fact groups (known, misconception, uncertain, "
                           "decoy); [] = all; other tasks have no groups and ignore it")
    long_prompts: str = _f("skip", "(fedspear) skip | truncate | error: a task prompt longer than model.max_seq_len "
                           "minus its new tokens is dropped, cut from the left, or refused; counted in data_stats.json")


@dataclass
class FLConfig:
    rounds: int = _f(20, "federated rounds")
    clients_per_round: int = _f(5, "clients K sampled per round")
    local_train_steps: int = _f(50, "optimizer steps S per client-round")
    local_rollout_steps: int = _f(25, "rollout prompts P per client-round")
    aggregation: str = _f("fedavg", "fedavg | fedadam | fedyogi | median | trimmed_mean | krum | multi_krum "
                          "(the last four are robust to a few bad clients; docs/privacy-and-robustness.md), or module:function, "
                          "your own rule (docs/extending.md)")
    trim_ratio: float = _f(0.1, "(fedspear) trimmed_mean: share of clients dropped at each end, per coordinate")
    krum_f: int = _f(1, "(fedspear) krum / multi_krum: number of Byzantine clients f tolerated")
    multi_krum_m: int | None = _f(None, "(fedspear) multi_krum: updates averaged; None = clients - f")
    fedprox_mu: float = _f(0.0, "FedProx proximal weight (mu/2 * ||theta - theta_global||^2)")
    server_lr: float = _f(1e-2, "FedAdam/FedYogi server learning rate")
    server_beta1: float = _f(0.9, "FedAdam/FedYogi beta1")
    server_beta2: float = _f(0.99, "FedAdam/FedYogi beta2")
    server_tau: float = _f(5e-3, "FedAdam/FedYogi adaptivity tau (v starts at tau^2)")
    min_clients: int = _f(1, "(fedspear) fewest successful client results a round needs to aggregate")
    max_idle_rounds: int = _f(5, "(fedspear) stop the run (non-zero exit) after this many consecutive rounds in which "
                              "clients failed or sent non-finite updates and none was usable; 0 = never stop")
    batch_clients: bool = _f(True, "(fedspear) one batched rollout for all of a round's clients (faster); "
                             "false = each client generates alone from its own seed, as a Flower client does")


@dataclass
class GenConfig:
    max_new_tokens_y0: int = _f(256, "new tokens for first answers")
    max_new_tokens_y1: int = _f(256, "new tokens for revisions")
    num_revisions: int = _f(1, "revision attempts R per wrong answer")
    do_sample: bool = _f(False, "sample rollouts (False = greedy)")
    temperature: float = _f(0.7, "rollout sampling temperature")
    top_p: float = _f(0.95, "rollout nucleus sampling")
    top_k: int = _f(50, "(fedspear) top-k when sampling (rollouts, and evaluation when it samples); 50 = transformers' "
                    "default that the authors' runs sampled with alongside top_p; 0 disables")
    rollout_batch_size: int = _f(8, "prompts per generation batch")
    eval_batch_size: int = _f(8, "prompts per evaluation batch")
    eval_do_sample: bool = _f(False, "(fedspear) sample during evaluation")
    eval_temperature: float = _f(1.0, "(fedspear) evaluation temperature when sampling")
    eval_top_p: float = _f(1.0, "(fedspear) evaluation top_p when sampling")
    eval_max_new_tokens: int | None = _f(None, "(fedspear) evaluation new tokens; None = max_new_tokens_y0")
    merge_lora: bool = _f(True, "(fedspear) fold LoRA into the base weights while generating (faster; exact restore)")
    revision_template: str = _f("instructions_first", "(fedspear) revision prompt section order: instructions_first "
                                "(constant block first, cached once per call) | authors (the reference's order)")
    scheduler: str = _f("batched", "(fedspear) feedback-guided rollouts: batched (one wave per revision attempt; "
                        "bit-reproducible) | continuous (transformers continuous batching; for GPUs)")
    cache: str = _f("dynamic", "(fedspear) KV cache while generating: dynamic | static (preallocated; on CUDA "
                    "transformers compiles the decode step with CUDA graphs)")
    prefix_cache: bool = _f(True, "(fedspear) compute the token prefix shared by every prompt of a generation call "
                            "once, and reuse a revision attempt's cached prompt start (instructions, task) in the "
                            "next attempt (same completions up to float rounding)")


@dataclass
class OptimConfig:
    lr: float = _f(2e-4, "peak learning rate")
    weight_decay: float = _f(1e-3, "AdamW weight decay")
    batch_size: int = _f(1, "micro-batch size B (wins and losses each)")
    grad_accum_steps: int = _f(4, "micro-steps A per optimizer step")
    max_grad_norm: float = _f(1.0, "gradient-norm clip")
    warmup_ratio: float = _f(0.1, "share of rounds with linear warm-up")
    lr_min: float = _f(1e-5, "final learning rate of the cosine schedule")
    use_warmup: bool = _f(False, "warm-up + cosine schedule over rounds (False = constant lr)")
    micro_batch_size: int | None = _f(None, "chunk forwards to this many sequences (None = no chunking)")
    dedup_draws: bool = _f(True, "(fedspear) compute a trace drawn k times once, weighted by k (same loss and "
                           "tokens_trained, less work); exact only without dropout, so it is off when lora.dropout > 0")


@dataclass
class FeedbackConfig:
    provider: str = _f("oracle", "oracle | none | your feedback source class as module:Class (fedspear)")
    mc_hint_words: int = _f(3, "words of the correct option given as a hint")
    false_accept_rate: float = _f(0.0, "(fedspear) share of wrong answers reported correct (false wins)")
    false_reject_rate: float = _f(0.0, "(fedspear) share of right answers reported wrong, hinted toward a wrong value")
    misleading_hint_rate: float = _f(0.0, "(fedspear) share of hints pointing to a wrong value")
    no_hint_rate: float = _f(0.0, "(fedspear) share of feedback that is a bare 'incorrect', no hint")
    drop_rate: float = _f(0.0, "(fedspear) share of interactions the user never answers (dropped)")


@dataclass
class HFConfig:
    offline: bool = _f(False, "never contact the hub")
    hf_home: str | None = _f(None, "HF_HOME")
    model_cache_dir: str | None = _f(None, "model cache folder")
    dataset_cache_dir: str | None = _f(None, "dataset cache folder")
    hub_cache_dir: str | None = _f(None, "hub cache folder")


@dataclass
class DPConfig:
    mode: str = _f("off", "(fedspear) differential privacy of client updates: off | central (DP-FedAvg, noise at "
                   "the server; clients are Poisson-sampled with q = fl.clients_per_round / data.num_clients) | "
                   "local (each client clips and noises its own update)")
    clip_norm: float = _f(1.0, "(fedspear) L2 bound C on each client's update (adapter - round-start global)")
    noise_multiplier: float = _f(1.0, "(fedspear) sigma: Gaussian noise std is sigma * C")
    delta: float = _f(1e-5, "(fedspear) delta of the reported (epsilon, delta) privacy budget")
    seed: int | None = _f(None, "(fedspear) seed of the noise and of central DP's client sample; None = fresh OS "
                          "randomness (a fixed seed makes the noise removable and the sample public: tests and "
                          "benchmarks only)")


@dataclass
class LoggingConfig:
    report_to: list[str] = _f([], "(fedspear) experiment trackers: [] | [tensorboard] | [wandb] | [tensorboard,wandb]")
    wandb_project: str = _f("fedspear", "(fedspear) wandb project name")
    wandb_mode: str = _f("offline", "(fedspear) wandb mode: offline (no network; `wandb sync` later) | online")


# ---------------------------------------------------------------- the built-in algorithms' own sections
# Each algorithm class names its dataclass (``Algorithm.Settings``) and its section (``Algorithm.section``) and reads
# only that section plus the shared ones; objectives and the meaning of every key: docs/algorithms.md.


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
