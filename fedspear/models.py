"""Models: loading any causal LM, LoRA placement on the last layers, and adapter state.

The global model is a frozen base plus one LoRA adapter ("default"). Adapter state travels as
``dict[str, Tensor]`` keyed by PEFT's state-dict names (``get_peft_model_state_dict``), always as CPU copies
that share no memory with the live model, so FedAvg sees distinct client updates (docs/deviations.md).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedspear.config import ConfigError
from fedspear.preflight import adapter_error

logger = logging.getLogger("fedspear")

BUILTIN_MODELS = {"fedspear/world-base": Path(__file__).parent / "assets" / "world-base"}
# Real models ``fedspear fetch-model`` builds into its cache: model name -> fetch-model name (fedspear.model_fetch).
FETCHED_MODELS = {"fedspear/smollm2-135m-instruct": "smollm2-135m-instruct"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Projection-name families, most specific first: (family, suffixes).
LORA_FAMILIES = (
    ("llama/qwen/mistral", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    ("phi-3", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    ("phi", ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")),
    ("gpt-2", ("c_attn", "c_proj", "c_fc")),
    ("gpt-neox", ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),
)


def resolve_model_path(name: str) -> str:
    """Map the built-in model names to their folders; other names pass through unchanged.

    ``fedspear/world-base`` is packaged; the names in :data:`FETCHED_MODELS` are the folders ``fedspear
    fetch-model`` builds (docs/real-models.md), found in its cache (``$FEDSPEAR_CACHE``).

    Raises:
        FileNotFoundError: a built-in model is missing (the message says how to build or fetch it).
    """
    fetched = FETCHED_MODELS.get(name)
    if fetched is not None:
        return str(fetched_model_dir(name, fetched))
    path = BUILTIN_MODELS.get(name)
    if path is None:
        return name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the built-in model '{name}' is missing at {path}; rebuild it with `fedspear make-base --out {path}`"
        )
    return str(path)


def fetched_model_dir(name: str, fetched: str) -> Path:
    """The cached folder of a ``fedspear fetch-model`` model, verified by its manifest.

    Raises:
        FileNotFoundError: not fetched yet, or the cache folder is not a finished fetch of it.
    """
    from fedspear.model_fetch import MODELS, FetchError, check_cached, default_cache_dir

    folder = default_cache_dir(fetched)
    try:
        ready = check_cached(folder, MODELS[fetched])
    except FetchError as exc:
        raise FileNotFoundError(f"model.model_name={name}: {exc}") from None
    if not ready:
        raise FileNotFoundError(f"model.model_name={name} is not fetched yet: run `fedspear fetch-model --name "
                                f"{fetched}` (or `make model`) once, which puts it in {folder}")
    return folder


def pretrained_revision_template(name: str) -> str | None:
    """The revision prompt order (``gen.revision_template``) a built-in model was pretrained on, from its
    ``build_info.json`` (bases built before the key existed used the authors' order); None for other models."""
    path = BUILTIN_MODELS.get(name)
    info = path / "build_info.json" if path is not None else None
    if info is None or not info.is_file():
        return None
    return json.loads(info.read_text(encoding="utf-8")).get("config", {}).get("revision_template", "authors")


def warn_on_template_mismatch(cfg: Any) -> None:
    """Log a warning when a built-in base is used with another revision template than it was pretrained on: its
    revisions then fix few answers, which is a property of the prompt, not of the algorithm."""
    trained = pretrained_revision_template(cfg.model.model_name)
    if trained is not None and trained != cfg.gen.revision_template:
        logger.warning("model.model_name=%s was pretrained on gen.revision_template=%s, but this run uses %s, so "
                       "its revisions will rarely fix an answer; set gen.revision_template=%s or rebuild the base "
                       "with `fedspear make-base`", cfg.model.model_name, trained, cfg.gen.revision_template, trained)


def resolve_device(device_map: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; otherwise the named device."""
    if device_map in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device_map)


def _hf_kwargs(cfg: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code}
    if cfg.hf.model_cache_dir:
        kwargs["cache_dir"] = cfg.hf.model_cache_dir
    if cfg.hf.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        kwargs["local_files_only"] = True
    if cfg.hf.hf_home:
        os.environ.setdefault("HF_HOME", cfg.hf.hf_home)
    return kwargs


def load_tokenizer(cfg: Any) -> Any:
    """Load the tokenizer: pad := eos when missing, left padding and truncation (prompts keep their end)."""
    from transformers import AutoTokenizer

    name = resolve_model_path(cfg.model.tokenizer_name or cfg.model.model_name)
    tok = AutoTokenizer.from_pretrained(name, **_hf_kwargs(cfg))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ConfigError(f"tokenizer of {name} has no EOS token; set model.tokenizer_name to one that has")
    if not tok("Answer: A", add_special_tokens=False)["input_ids"]:  # e.g. a model folder without tokenizer files
        raise ConfigError(f"the tokenizer of {name} turns text into no tokens (vocabulary of {len(tok)}): the folder "
                          "has no tokenizer files; set model.tokenizer_name to the model's tokenizer")
    tok.padding_side = "left"
    tok.truncation_side = "left"
    return tok


def load_base_model(cfg: Any, device: torch.device) -> nn.Module:
    """Load the base causal LM in the configured dtype ('auto' keeps the checkpoint's dtype)."""
    from transformers import AutoModelForCausalLM

    kwargs = _hf_kwargs(cfg)
    kwargs["dtype"] = "auto" if cfg.model.dtype == "auto" else DTYPES[cfg.model.dtype]
    if cfg.model.load_in_4bit:
        if device.type != "cuda":
            raise ConfigError("model.load_in_4bit needs CUDA; set model.load_in_4bit=false on CPU")
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if cfg.model.dtype in ("bf16", "auto") else DTYPES[cfg.model.dtype]
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": device.index or 0}
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model.model_name), **kwargs)
    if not cfg.model.load_in_4bit:
        model.to(device)
    model.config.use_cache = False
    return model


def check_not_adapter(cfg: Any) -> None:
    """Refuse a ``model.model_name`` that is a PEFT adapter (a local folder or a Hub repository with
    ``adapter_config.json``): transformers would load its base with the adapter merged in, and the adapters fedspear
    saves would not reproduce the evaluated model.

    Raises:
        ConfigError: the name holds ``adapter_config.json`` (:func:`fedspear.preflight.adapter_error`).
    """
    from transformers.utils import find_adapter_config_file

    name = resolve_model_path(cfg.model.model_name)
    kwargs = {k: v for k, v in _hf_kwargs(cfg).items() if k in ("cache_dir", "local_files_only")}
    found = find_adapter_config_file(name, **kwargs)
    if found is not None:
        raise adapter_error(cfg.model.model_name, found)


def _local_model_config(cfg: Any) -> Any | None:
    """The model's transformers config when it is on this machine (a folder, the built-in base or the local
    cache); None when it would have to be downloaded or cannot be read (the run checks again when it loads)."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code, "local_files_only": True}
    if cfg.hf.model_cache_dir:
        kwargs["cache_dir"] = cfg.hf.model_cache_dir
    try:
        return AutoConfig.from_pretrained(resolve_model_path(cfg.model.model_name), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        logger.debug("lora.target_modules not checked before loading: %s", exc)
        return None


def check_lora_targets(cfg: Any) -> None:
    """Check ``lora.target_modules`` (when set) against the model's module names without loading its weights:
    the model is built from its config on PyTorch's ``meta`` device and :func:`lora_target_modules` applied, as
    the run will. Skipped (the run checks when it loads) when the model's config is not on this machine.

    Raises:
        ConfigError: a name matches no module of the last ``lora.last_n_layers`` layers (the message lists the
            available names), as :func:`fedspear.models.lora_target_modules` raises at load time.
    """
    if not cfg.lora.target_modules:
        return
    model_config = _local_model_config(cfg)
    if model_config is None:
        return
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=cfg.model.trust_remote_code)
    except (ValueError, KeyError, TypeError, RuntimeError, NotImplementedError) as exc:
        logger.debug("lora.target_modules not checked before loading: %s", exc)
        return
    lora_target_modules(model, cfg.lora)


def find_layer_stack(model: nn.Module) -> tuple[str, int]:
    """Return (dotted name of the transformer block list, number of blocks).

    Picks the largest ``nn.ModuleList`` whose name ends in ``layers``/``h``/``blocks``, else the largest ModuleList.
    """
    best: tuple[str, int] | None = None
    fallback: tuple[str, int] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("layers", "h", "blocks") and (best is None or len(module) > best[1]):
                best = (name, len(module))
            if fallback is None or len(module) > fallback[1]:
                fallback = (name, len(module))
    found = best or fallback
    if found is None:
        raise ConfigError("could not find the transformer layer stack; set lora.target_modules explicitly")
    return found


def lora_target_modules(model: nn.Module, lora_cfg: Any) -> tuple[list[str], str]:
    """Full module names to adapt: the chosen projection suffixes inside the last ``last_n_layers`` blocks.

    Returns:
        (module names, family description).
    """
    stack, num_layers = find_layer_stack(model)
    first = max(0, num_layers - max(1, lora_cfg.last_n_layers))
    pattern = re.compile(rf"^{re.escape(stack)}\.(\d+)\.")
    candidates: dict[str, str] = {}  # full name -> suffix
    for name, module in model.named_modules():
        match = pattern.match(name)
        if match and int(match.group(1)) >= first and _is_adaptable(module):
            candidates[name] = name.rsplit(".", 1)[-1]
    suffixes = set(candidates.values())
    if lora_cfg.target_modules:
        chosen, family = set(lora_cfg.target_modules), "explicit"
        missing = chosen - suffixes
        if missing:
            raise ConfigError(
                f"lora.target_modules: {', '.join(sorted(missing))} is not a module of the last "
                f"{lora_cfg.last_n_layers} layers (lora.last_n_layers) of this model; available: "
                f"{', '.join(sorted(suffixes)) or 'none'}"
            )
    else:
        family, best = "first linear layers", ()
        for fam, names in LORA_FAMILIES:
            if sum(n in suffixes for n in names) > sum(n in suffixes for n in best):
                family, best = fam, names
        chosen = set(best) if best else set(sorted(suffixes)[:4])
    names = sorted(n for n, s in candidates.items() if s in chosen)
    if not names:
        raise ConfigError("no LoRA target modules found; set lora.target_modules explicitly")
    return names, family


def _is_adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")


def attach_lora(model: nn.Module, cfg: Any, seed: int) -> nn.Module:
    """Wrap the base model in a PEFT LoRA model on the last ``lora.last_n_layers`` layers (seeded init)."""
    from peft import LoraConfig, get_peft_model

    targets, family = lora_target_modules(model, cfg.lora)
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for n, m in model.named_modules() if n in set(targets))
    peft_cfg = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, bias=cfg.lora.bias,
        target_modules=targets, task_type="CAUSAL_LM", fan_in_fan_out=fan_in_fan_out,
    )
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # peft 0.21's PeftModel.__init__ reads the base model's `is_gradient_checkpointing`, which transformers 5
        # deprecated (FutureWarning on every run); the value it reads is the same as `is_activation_checkpointing`.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, peft_cfg)
    if cfg.model.gradient_checkpointing:
        peft_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()
    logger.info("LoRA on %d modules (%s family), %d trainable parameters", len(targets), family,
                sum(p.numel() for p in peft_model.parameters() if p.requires_grad))
    return peft_model


@dataclass
class AdapterHandle:
    """Maps PEFT state-dict names to the live LoRA parameters, for fast get/set without copies of the base."""

    params: dict[str, nn.Parameter] = field(default_factory=dict)

    @classmethod
    def from_model(cls, peft_model: nn.Module) -> AdapterHandle:
        from peft import get_peft_model_state_dict

        live = dict(peft_model.named_parameters())
        params = {}
        for key in get_peft_model_state_dict(peft_model):
            param_name = re.sub(r"\.(lora_[AB]|lora_embedding_[AB])\.", r".\1.default.", key)
            if param_name not in live:
                param_name = key  # e.g. bias terms keep their name
            params[key] = live[param_name]
        return cls(params)

    def get(self) -> dict[str, torch.Tensor]:
        """CPU copies of the adapter tensors (never aliasing the live weights)."""
        return {k: p.detach().to("cpu", copy=True) for k, p in self.params.items()}

    def set(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.params) - set(state)
        if missing:
            raise KeyError(f"adapter state lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state[k].to(p.device, p.dtype))


@dataclass
class Policy:
    """The model being trained: live PEFT model, tokenizer, adapter handle and sequence limit.

    It holds no config, no task and no global adapter: an algorithm gets the first two itself (``Algorithm.task``,
    ``Algorithm.run``) and each client job carries the round-start adapter it trains from
    (``ClientJob.start_state``, owned by the server); the few model-side settings generation needs are typed
    fields fixed when the model is loaded.

    Attributes:
        model: the PEFT model (base frozen, LoRA "default" trainable).
        tokenizer: the tokenizer (left padding).
        device: where the model lives.
        adapter: handle on the live LoRA parameters.
        model_name: the base model's name (``model.model_name``), for fingerprints.
        max_seq_len: prompt + completion tokens kept (``model.max_seq_len``).
        gen_batch_size: prompts per generation batch (``gen.rollout_batch_size``).
        merge_lora: fold LoRA into the base weights while generating (``gen.merge_lora``; off for 4-bit).
        prefix_cache: compute the token prefix shared by every prompt of a generation call once (``gen.prefix_cache``).
        cache_implementation: ``dynamic`` or ``static`` KV cache while generating (``gen.cache``).
        encoded: prompt text -> token ids, filled by :meth:`encode`.
        fingerprint: the serving fingerprint once computed (``serve.adapters.model_fingerprint``).
        chat_template: every prompt text is sent as one user turn of the tokenizer's chat template, ending with
            the assistant header (``model.chat_template``; see docs/real-models.md).
        end_of_turn_ids: ids that end an assistant turn under the chat template (e.g. ``<|im_end|>``); generation
            stops on them and unlikelihood never penalises them. Empty without the template.
    """

    model: nn.Module
    tokenizer: Any
    device: torch.device
    adapter: AdapterHandle
    model_name: str = ""
    max_seq_len: int = 2048
    gen_batch_size: int = 8
    merge_lora: bool = True
    prefix_cache: bool = True
    cache_implementation: str = "dynamic"
    encoded: dict[str, list[int]] = field(default_factory=dict)
    fingerprint: str | None = None
    chat_template: bool = False
    end_of_turn_ids: tuple[int, ...] = ()

    @functools.cached_property
    def bos_id(self) -> int | None:
        """The id every encoded prompt starts with (the tokenizer's BOS; under the chat template, the template's
        first token when it is the same for every prompt), or None; :func:`left_truncate` keeps it when a prompt
        is cut."""
        if self.chat_template:
            first, second = self.encode("a"), self.encode("b")
            return first[0] if first and second and first[0] == second[0] else None
        ids = self.tokenizer("", add_special_tokens=True)["input_ids"]
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return ids[0] if ids and bos is not None and ids[0] == bos else None

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, cached: the tokenizer's ids with its special tokens (e.g. BOS), or under
        :attr:`chat_template` the ids of ``text`` as one user turn followed by the assistant header."""
        ids = self.encoded.get(text)
        if ids is None:
            ids = self.encoded[text] = encode_prompt(self.tokenizer, text, self.chat_template)
        return ids

    def continuation(self, text: str) -> str:
        """A scored continuation as the model writes it after a prompt: under the chat template the assistant
        turn starts on a fresh line, so the leading space of e.g. " B" (which follows "Answer:") is dropped."""
        return text.lstrip(" ") if self.chat_template else text


def encode_prompt(tokenizer: Any, text: str, chat_template: bool) -> list[int]:
    """Token ids of one prompt.

    Args:
        tokenizer: a Hugging Face tokenizer.
        text: the prompt text (a task prompt, a revision prompt, a teacher prompt...).
        chat_template: send ``text`` as one user message of ``tokenizer.chat_template`` with the generation
            prompt (the assistant header) appended; the template places BOS and the system turn itself, so the
            rendered text is tokenized without adding special tokens again.

    Returns:
        The prompt's token ids.
    """
    if not chat_template:
        return tokenizer(text, add_special_tokens=True)["input_ids"]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def resolve_chat_template(mode: str, tokenizer: Any, name: str) -> bool:
    """Whether prompts go through the tokenizer's chat template (``model.chat_template``).

    Args:
        mode: ``auto`` (on exactly when the tokenizer defines a chat template), ``on`` or ``off``.
        tokenizer: the loaded tokenizer.
        name: the tokenizer's name, for the error.

    Raises:
        ConfigError: ``on`` for a tokenizer without a chat template.
    """
    has = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has:
        from fedspear.config import ConfigError

        raise ConfigError(f"model.chat_template=on but the tokenizer of {name} has no chat template; "
                          "use model.chat_template=off (raw prompts) or a tokenizer that has one")
    return has if mode == "auto" else mode == "on"


_TURN_PROBE = "\u2402fedspear-turn-probe\u2403"


def end_of_turn_ids(tokenizer: Any) -> tuple[int, ...]:
    """The special token(s) the chat template writes right after an assistant message (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``...), found by rendering a probe conversation; () when none is special.

    Only the first token after the message counts, and only when it is one of the tokenizer's special tokens
    (a template that ends a turn with plain text, e.g. a newline, gives ()).
    """
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _TURN_PROBE}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that refuses this conversation shape: fall back to the EOS ids alone
        return ()
    tail = rendered.split(_TURN_PROBE, 1)[-1] if _TURN_PROBE in rendered else ""
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
                if getattr(t, "special", False)}
    return (ids[0],) if ids and ids[0] in special else ()


def is_finite_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether every floating-point tensor of an adapter ``state`` is free of NaN and +-inf (integer tensors always
    are). Used by aggregation (a non-finite aggregate is refused) and evaluation (a diverged model)."""
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point() or t.is_complex())


def left_truncate(ids: list[int], max_len: int, keep_first: int | None = None) -> list[int]:
    """The last ``max_len`` ids of a prompt; when it starts with ``keep_first`` (the tokenizer's BOS), that
    id stays first and the cut falls after it (a model trained with BOS never sees a prompt without it).

    Args:
        ids: prompt token ids.
        max_len: the most ids to keep (<= 0 keeps none).
        keep_first: the id to keep at the start (``Policy.bos_id``), or None.

    Returns:
        A new list of at most ``max_len`` ids.
    """
    ids = list(ids)
    if len(ids) <= max_len:
        return ids
    if max_len <= 0:
        return []
    if keep_first is not None and ids[0] == keep_first and max_len >= 2:
        return [ids[0], *ids[len(ids) - (max_len - 1) :]]
    return ids[len(ids) - max_len :]


def position_limit(model: nn.Module) -> int | None:
    """The most positions the model can embed (``max_position_embeddings`` / ``n_positions`` of its config)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def cap_max_seq_len(cfg: Any, model: nn.Module) -> int:
    """``model.max_seq_len`` lowered to the model's position limit (with a warning) when it is above it.

    ``cfg`` is not modified: use :func:`fit_config` for the config that carries the capped length.

    Returns:
        The length to use, in tokens (prompt + completion).

    Raises:
        ConfigError: the capped length leaves no room for the generation budgets (names the keys).
    """
    limit = position_limit(model)
    if limit is None or cfg.model.max_seq_len <= limit:
        return int(cfg.model.max_seq_len)
    logger.warning("model.max_seq_len=%d is above the model's position limit (%d); using %d",
                   cfg.model.max_seq_len, limit, limit)
    from fedspear.config import validate

    validate(replace(cfg, model=replace(cfg.model, max_seq_len=limit)))
    return limit


def load_policy(cfg: Any) -> Policy:
    """Load tokenizer, base model and LoRA for a run (``max_seq_len`` capped by :func:`cap_max_seq_len`).

    ``cfg`` is read, never written. The policy carries the capped length (``Policy.max_seq_len``); the config
    to run with it is made once, where a run is assembled (:func:`fedspear.federation.assembly.assemble`, with
    :func:`fit_config`).
    """
    from fedspear.threads import apply_threads, describe

    warn_on_template_mismatch(cfg)
    device = resolve_device(cfg.model.device_map)
    threads, reason = apply_threads(cfg.model.torch_threads)  # before loading: the load runs on them too
    logger.info("model %s on %s (%s); %s", cfg.model.model_name, device, cfg.model.dtype,
                describe(threads, reason, device.type))
    try:
        check_not_adapter(cfg)  # before the tokenizer, which an adapter folder may also hold
        tokenizer = load_tokenizer(cfg)
        base = load_base_model(cfg, device)
    except FileNotFoundError:
        raise
    except OSError as exc:  # transformers: no such model on the Hub, no network and not cached, no weights
        detail = " ".join(str(exc).split())
        raise ConfigError(f"model.model_name={cfg.model.model_name}: cannot be loaded "
                          f"({detail if len(detail) <= 240 else detail[:237] + '...'}); give a model folder or a "
                          "Hugging Face model id that is cached (hf.offline=true) or reachable") from None
    max_seq_len = cap_max_seq_len(cfg, base)
    chat = resolve_chat_template(cfg.model.chat_template, tokenizer,
                                 cfg.model.tokenizer_name or cfg.model.model_name)
    model = attach_lora(base, cfg, seed=cfg.data.seed)
    handle = AdapterHandle.from_model(model)
    return Policy(model, tokenizer, device, handle, model_name=cfg.model.model_name,
                  max_seq_len=max_seq_len, gen_batch_size=cfg.gen.rollout_batch_size,
                  merge_lora=cfg.gen.merge_lora and not cfg.model.load_in_4bit, prefix_cache=cfg.gen.prefix_cache,
                  cache_implementation=cfg.gen.cache, chat_template=chat,
                  end_of_turn_ids=end_of_turn_ids(tokenizer) if chat else ())


build_policy = load_policy  # the same function, under the name older callers use


def fit_config(cfg: Any, policy: Policy) -> Any:
    """``cfg`` with ``model.max_seq_len`` set to the policy's (capped) length: a copy when it differs,
    ``cfg`` itself otherwise (never modified in place)."""
    if cfg.model.max_seq_len == policy.max_seq_len:
        return cfg
    return replace(cfg, model=replace(cfg.model, max_seq_len=policy.max_seq_len))


def save_adapter(policy: Policy, state: dict[str, torch.Tensor], out_dir: Path) -> None:
    """Save an adapter state in PEFT's format (loadable with ``PeftModel.from_pretrained``)."""
    current = policy.adapter.get()
    policy.adapter.set(state)
    policy.model.save_pretrained(str(out_dir))
    policy.adapter.set(current)
