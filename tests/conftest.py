"""Shared fixtures: tiny Qwen2 / Llama models with a small real BPE tokenizer, built in-process."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

# Every test process, and the processes tests start, computes with two torch threads: model.torch_threads=auto
# judges the machine's load, so without this the thread count (and with it the float reduction order that the
# equality tests compare, e.g. the fast path against the plain path, Flower against the simulator) would depend
# on what else the machine runs. A value the caller exported is kept.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# Fixtures several test folders share (tests/fixtures): Flower test processes, a user's algorithm from outside.
pytest_plugins = ["fixtures.processes", "fixtures.outside_algorithm"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ARC_DIR = SHARED_DATA / "arc_challenge"


def require_shared_data() -> Path:
    if not ARC_DIR.is_dir():
        pytest.skip(f"offline benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


def real_model_dir() -> Path:
    """The cached SmolLM2-135M-Instruct folder (``make model``), or skip the calling test when it is not fetched."""
    from fedspear.model_fetch import DEFAULT_MODEL, MODELS, FetchError, check_cached, default_cache_dir

    folder = default_cache_dir()
    try:
        if check_cached(folder, MODELS[DEFAULT_MODEL]):
            return folder
    except FetchError as exc:
        pytest.skip(f"real model not fetched: run `make model` ({exc})")
    pytest.skip(f"real model not fetched: run `make model` (nothing at {folder})")


def _corpus() -> list[str]:
    rng = random.Random(0)
    lines = []
    if ARC_DIR.is_dir():
        with open(ARC_DIR / "ARC-Challenge-Dev.jsonl") as f:
            for line in f:
                row = json.loads(line)
                lines.append(row["question"]["stem"] + " " + " ".join(c["text"] for c in row["question"]["choices"]))
    words = "the answer is option letter question choose correct incorrect hint feedback solution yes no".split()
    for _ in range(300):
        lines.append(" ".join(rng.choice(words) for _ in range(12)) + f" Answer: {rng.choice('ABCDE')}")
    lines += [f"A. B. C. D. E. Answer: {c} Answer: {c}" for c in "ABCDE" for _ in range(50)]
    return lines


def build_tokenizer(out_dir: Path, bos: bool):
    """A byte-level BPE tokenizer (vocab ~600) saved to ``out_dir``; Llama-style adds a BOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<s>"]
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    kwargs = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
        kwargs["bos_token"] = "<s>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: Path, family: str) -> Path:
    """Save a 2-layer random model of ``family`` ('qwen2' or 'llama') with its tokenizer to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out_dir, bos=(family == "llama"))
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(bos_token_id=tok.bos_token_id, **common))
    _teach_answer_format(model, tok)
    model.save_pretrained(out_dir)
    return out_dir


def _teach_answer_format(model, tok, steps: int = 80) -> None:
    """A few steps so the random model answers an ARC-style prompt ending in "Answer:" with " <letter>" + EOS
    (about chance accuracy), which gives SPEAR wins and losses to train on."""
    import torch

    rng = random.Random(1)
    words = "which best describes the plant water energy light heat earth sun option rock gas".split()

    def sample() -> str:
        options = "".join(f"\n{c}. " + " ".join(rng.choice(words) for _ in range(3)) for c in "ABCD")
        question = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
        return f"Answer with the letter.\n\nQuestion: {question}{options}\nAnswer:"

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        prompts = [sample() for _ in range(16)]
        answers = [" " + rng.choice("ABCD") + tok.eos_token for _ in prompts]
        enc = [tok(p)["input_ids"] + tok(a, add_special_tokens=False)["input_ids"] for p, a in zip(prompts, answers)]
        width = max(map(len, enc))
        ids = torch.full((len(enc), width), tok.pad_token_id)
        labels = torch.full((len(enc), width), -100)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e)
            labels[i, len(e) - 2 : len(e)] = torch.tensor(e[-2:])  # only the letter and EOS
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


def tiny_overrides(model_dir: Path, out_dir: Path, **extra: object) -> list[str]:
    """Overrides for a fast run on ARC rows from ../shared/data with a tiny model."""
    base = {
        "model.model_name": str(model_dir), "model.dtype": "fp32", "model.max_seq_len": 512,
        "model.gradient_checkpointing": False, "model.device_map": "cpu",
        "lora.r": 4, "lora.alpha": 8, "lora.dropout": 0.0, "lora.last_n_layers": 2,
        "data.dataset": "arc_challenge", "data.path": str(ARC_DIR), "data.num_clients": 2,
        "data.max_examples_per_client": 16, "data.max_eval_examples": 16, "data.seed": 0,
        "data.eval_every": 1, "fl.rounds": 2, "fl.clients_per_round": 2, "fl.local_rollout_steps": 6,
        "fl.local_train_steps": 2, "gen.max_new_tokens_y0": 3, "gen.max_new_tokens_y1": 3, "gen.do_sample": True,
        "gen.temperature": 1.0, "gen.top_p": 1.0, "gen.num_revisions": 1, "gen.rollout_batch_size": 16,
        "gen.eval_batch_size": 32, "optim.batch_size": 2, "optim.grad_accum_steps": 1, "optim.lr": 1e-3,
        "output_dir": str(out_dir),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


# A fast evaluation for end-to-end runs: 4 examples, every 2 rounds (round 0 included).
FAST_EVAL = {"data.max_eval_examples": 4, "data.eval_every": 2, "data.eval_every_round_up_to": 0}


def run_tiny(model_dir: Path, out_dir: Path, **extra: object) -> tuple[Path, list[dict]]:
    """Run the simulator on :func:`tiny_overrides` + :data:`FAST_EVAL` + ``extra``; (run folder, metrics rows)."""
    from fedspear.config import load_config
    from fedspear.federation import simulator
    from fedspear.records import RunRecord

    run_dir = simulator.run(load_config(None, tiny_overrides(model_dir, out_dir, **{**FAST_EVAL, **extra})))
    return run_dir, RunRecord(run_dir).read_metrics()



def build_rig(cfg, task):
    """A Policy for ``cfg`` (``models.build_policy``) carrying, for the tests that read them from one object, the
    config fitted to it (``models.fit_config``) as ``.cfg`` and ``task`` as ``.task``; the package never does."""
    from fedspear.models import fit_config, load_policy

    policy = load_policy(cfg)
    policy.cfg, policy.task = fit_config(cfg, policy), task
    return policy
