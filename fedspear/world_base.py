"""Build the small base model of the built-in world (``fedspear/world-base``), deterministically.

Run it as ``fedspear make-base --out DIR [--preset default|tiny] [--seed 0]``, or from Python::

    from pathlib import Path
    from fedspear.world_base import build_base
    stats = build_base(Path("fedspear/assets/world-base"))   # the shipped model: 10-13 minutes on one CPU core
    stats = build_base(Path("/tmp/wb"), preset="tiny")       # a smoke build: a few seconds, learns nothing

What it does:

1. **Vocabulary and tokenizer.** Every word and punctuation mark that the world's prompts, answers,
   oracle feedback, revision prompt (:func:`fedspear.tasks.prompts.build_revision_prompt`) and OPSD
   context can produce, plus :data:`Preset.fresh_names` invented names used only in pretraining, each
   one token (a ``tokenizers`` WordLevel model: split on whitespace, every punctuation mark isolated),
   wrapped in a ``PreTrainedTokenizerFast`` with ``[PAD]``, ``[EOS]`` and ``[UNK]``. Decoding joins
   tokens with spaces (``"Answer : C"``), which the world's verifier accepts.
2. **Model.** A small Llama (``LlamaForCausalLM``, tied embeddings, no dropout), seeded.
3. **Corpus** (sampled on the fly from a seeded ``random.Random``), loss on completion tokens + EOS only:

   - *facts*: the world's questions (all three wordings, both parts) answered with the **belief** of each fact (:mod:`fedspear.tasks.world`): right for "known" facts, a
     consistent wrong value for "misconception" facts. The truth of a misconception never appears.
   - *revisions*: revision prompts built exactly as the policy builds them (task prompt, previous wrong
     answer, oracle feedback with a clue, instructions), answered in the first-answer format with the
     value the clue points to. The creature is either a fresh invented name with random facts (the
     hint is the only way to answer) or a world creature whose previous answer is usually its belief
     and whose target is a random other value (memory is useless, so the model learns to follow
     clues over memory without ever seeing a misconception's truth).
4. **Training.** AdamW, linear warm-up then cosine decay, gradient clipping at 1.0; batches hold either
   facts or revisions (shorter and longer sequences), drawn in a seeded order.
5. **Probe and save.** Greedy accuracy on the world's evaluation questions per group, and how many wrong
   answers one greedy feedback-guided revision fixes; then ``save_pretrained`` of model and tokenizer,
   ``build_info.json`` (preset, seed, these statistics) and a README.

The same preset, seed and torch thread count give the same weights (``torch.set_num_threads`` changes
the floating-point summation order on CPU; the builder uses :data:`Preset.threads`, one thread by default:
on a shared 2-core machine two threads contend with other processes and run several times slower).

What shaped the defaults (measured): with the options in a random order per question, a model of this size
never learned to find the letter of a value in the option list within 2000 steps (it answered "A" to
everything), so the world lists an attribute's options in one fixed order; with that, every configuration
tried learned known facts to 100% and misconceptions to 0% within about 1200 steps, and hint-following
(revision fix rate) to about 100% within about 2000. Hint-following is learned only because the target of
a pretraining revision is never what memory says.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fedspear.algorithms.opsd import format_teacher_prompt
from fedspear.tasks.base import LETTERS, Example
from fedspear.tasks.prompts import build_revision_prompt
from fedspear.tasks.world import (
    ANSWER_FORMAT,
    ATTRIBUTES,
    GROUPS,
    QUESTIONS,
    Fact,
    WorldTask,
    build_world,
    extract_answer,
    invent_names,
    mc_completion,
    mc_prompt,
    options_for,
    oracle_feedback,
    reasoning_completion,
    reasoning_prompt,
    world_examples,
)

SPECIAL_TOKENS = ("[PAD]", "[EOS]", "[UNK]")
FRESH_NAME_SEED = 7


@dataclass(frozen=True)
class Preset:
    """Model shape and pretraining schedule.

    Attributes:
        hidden: model width; layers / heads / ffn: Llama block settings.
        steps: optimizer steps; batch_size: sequences per step; lr: peak AdamW learning rate.
        warmup: linear warm-up steps; revision_share: share of steps whose batch holds revision prompts.
        teacher_share: share of steps whose batch holds OPSD teacher prompts (privileged context + question).
        world_revision_share: within revision batches, share about world creatures (the rest fresh names).
        fresh_names: invented names used only in revision examples.
        threads: torch CPU threads during the build (fixes the summation order, so the result).
        revision_template: the revision prompt order the base is pretrained on (``gen.revision_template``; the
            world preset, ``fedspear/configs/default.yaml``, must name the same one).
    """

    hidden: int
    layers: int
    heads: int
    ffn: int
    steps: int
    batch_size: int
    lr: float
    warmup: int
    revision_share: float = 0.5
    world_revision_share: float = 0.4
    teacher_share: float = 0.0
    fresh_names: int = 200
    threads: int = 1
    revision_template: str = "instructions_first"


PRESETS: dict[str, Preset] = {
    "default": Preset(hidden=96, layers=3, heads=4, ffn=256, steps=3600, batch_size=40, lr=2e-3, warmup=100,
                      revision_share=0.32, teacher_share=0.13),
    "tiny": Preset(hidden=32, layers=2, heads=2, ffn=64, steps=12, batch_size=8, lr=3e-3, warmup=2, fresh_names=20,
                   threads=1, teacher_share=0.2),
}


# --------------------------------------------------------------------------- vocabulary and tokenizer


def _pre_tokenizer() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")])


def vocabulary_texts(facts: list[Fact], fresh: list[str]) -> list[str]:
    """Every kind of text the task and the pretraining corpus can produce (for the vocabulary)."""
    task = WorldTask()
    train, held_out = world_examples()
    texts = [LETTERS, " ".join(LETTERS), build_revision_prompt("x", "", "x", ANSWER_FORMAT), ANSWER_FORMAT,
             format_teacher_prompt("x", "x")]
    for ex in train + held_out:
        texts += [ex.prompt, task.privileged_context(ex)]
    names = sorted({f.entity for f in facts}) + fresh
    for attribute, values in ATTRIBUTES.items():
        texts += [reasoning_prompt("x", attribute, w) for w in range(len(QUESTIONS[attribute]))]
        texts += [mc_prompt("x", attribute, w, list(values)) for w in range(len(QUESTIONS[attribute]))]
        for value, clues in values.items():
            texts.append(reasoning_completion("x", attribute, value))
            for kind in ("mc", "reasoning"):
                for given in (None, "A", value):
                    for i in range(len(clues)):
                        texts.append(oracle_feedback(kind, attribute, value, "B", given, i))
    texts.append(" ".join(names))
    return texts


def build_vocab(texts: list[str]) -> list[str]:
    """Special tokens, then every pre-token of ``texts`` in sorted order."""
    pre = _pre_tokenizer()
    words = {piece for text in texts for piece, _ in pre.pre_tokenize_str(text)}
    return list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS))


def make_tokenizer(vocab: list[str]) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over ``vocab`` with [PAD]/[EOS]/[UNK] and left padding."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    core.pre_tokenizer = _pre_tokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]",
                                   padding_side="left", model_max_length=512)


# --------------------------------------------------------------------------- the pretraining corpus


class Corpus:
    """Samples (prompt, completion) pairs of the pretraining mixture from a seeded ``random.Random``."""

    def __init__(self, facts: list[Fact], fresh: list[str], preset: Preset, rng: random.Random) -> None:
        self.facts, self.fresh, self.preset, self.rng = facts, fresh, preset, rng

    def fact(self) -> tuple[str, str]:
        """A world question answered with the fact's belief (MC 2/3, reasoning 1/3); an uncertain fact is
        answered with its truth or its belief, half each."""
        f = self.rng.choice(self.facts)
        wording = self.rng.randrange(len(QUESTIONS[f.attribute]))
        value = f.truth if f.group == "uncertain" and self.rng.random() < 0.5 else f.belief
        if self.rng.random() < 2 / 3:
            options = options_for(f.attribute)
            return mc_prompt(f.entity, f.attribute, wording, options), mc_completion(LETTERS[options.index(value)])
        return reasoning_prompt(f.entity, f.attribute, wording), reasoning_completion(f.entity, f.attribute, value)

    def teacher(self) -> tuple[str, str]:
        """An OPSD teacher prompt (:func:`fedspear.algorithms.opsd.format_teacher_prompt`) whose privileged
        context states a value memory does not hold, answered with that value (fresh or world creature).

        For a world creature the stated value is never its belief, and it is random, so the model learns to
        read the context over memory without ever learning a misconception's truth.
        """
        rng = self.rng
        if rng.random() < self.preset.world_revision_share:
            f = rng.choice(self.facts)
            name, attribute, memory = f.entity, f.attribute, f.belief
        else:
            name, attribute = rng.choice(self.fresh), rng.choice(list(ATTRIBUTES))
            memory = None
        target = rng.choice([v for v in ATTRIBUTES[attribute] if v != memory])
        wording = rng.randrange(len(QUESTIONS[attribute]))
        options = options_for(attribute)
        if rng.random() < 2 / 3:
            ex = Example("t", mc_prompt(name, attribute, wording, options), LETTERS[options.index(target)], "",
                         options, {"entity": name, "attribute": attribute, "truth": target})
            completion = mc_completion(ex.answer)
        else:
            ex = Example("t", reasoning_prompt(name, attribute, wording), target, "",
                         meta={"entity": name, "attribute": attribute, "truth": target})
            completion = reasoning_completion(name, attribute, target)
        return format_teacher_prompt(WorldTask().privileged_context(ex), ex.prompt), completion

    def revision(self) -> tuple[str, str]:
        """A revision prompt whose answer only the feedback's clue reveals (fresh or world creature)."""
        rng = self.rng
        if rng.random() < self.preset.world_revision_share:
            f = rng.choice(self.facts)
            name, attribute, memory = f.entity, f.attribute, f.belief
        else:
            name, attribute = rng.choice(self.fresh), rng.choice(list(ATTRIBUTES))
            memory = rng.choice(list(ATTRIBUTES[attribute]))
        values = list(ATTRIBUTES[attribute])
        previous = memory if rng.random() < 0.7 else rng.choice(values)
        target = rng.choice([v for v in values if v != previous])
        wording = rng.randrange(len(QUESTIONS[attribute]))
        odd = rng.random() < 0.1  # now and then an empty or malformed previous answer
        if rng.random() < 0.6:
            options = options_for(attribute)
            prompt, gold = mc_prompt(name, attribute, wording, options), LETTERS[options.index(target)]
            prev_text = rng.choice(["", previous]) if odd else LETTERS[options.index(previous)]
            completion = mc_completion(gold)
            kind = "mc"
        else:
            prompt, gold = reasoning_prompt(name, attribute, wording), target
            prev_text = rng.choice(["", f"the {name}"]) if odd else reasoning_completion(name, attribute, previous)
            completion = reasoning_completion(name, attribute, target)
            kind = "reasoning"
        clue = rng.randrange(len(ATTRIBUTES[attribute][target]))
        feedback = oracle_feedback(kind, attribute, target, gold, extract_answer(prev_text), clue)
        return (build_revision_prompt(prompt, prev_text.strip(), feedback, ANSWER_FORMAT,
                                      self.preset.revision_template), completion)


def _batch(tok: Any, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention, and per-token loss weights (1 on each completion token and the EOS)."""
    seqs, weights = [], []
    for prompt, completion in pairs:
        p = tok(prompt)["input_ids"]
        c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append(p + c)
        weights.append([0.0] * len(p) + [1.0] * len(c))
    width = max(len(s) for s in seqs)
    ids_BT = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    att_BT = torch.zeros((len(seqs), width), dtype=torch.long)
    w_BT = torch.zeros((len(seqs), width))
    for i, (s, w) in enumerate(zip(seqs, weights, strict=True)):
        ids_BT[i, : len(s)] = torch.tensor(s)
        att_BT[i, : len(s)] = 1
        w_BT[i, : len(w)] = torch.tensor(w)
    return {"input_ids": ids_BT, "attention_mask": att_BT, "weights": w_BT}


def _loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Completion-token cross-entropy summed per sequence, averaged over sequences (every token counts once)."""
    logits_BTV = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp_BT = torch.log_softmax(logits_BTV[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    w_BT = batch["weights"][:, 1:]
    return -(logp_BT * w_BT).sum() / batch["input_ids"].shape[0]


def pretrain(model: Any, tok: Any, corpus: Corpus, preset: Preset, seed: int, progress: bool) -> dict[str, Any]:
    """Train ``model`` in place on the corpus; returns loss statistics and the wall time."""
    opt = torch.optim.AdamW(model.parameters(), lr=preset.lr, betas=(0.9, 0.98), weight_decay=0.0)
    order = random.Random(seed + 1)
    model.train()
    start, recent, history = time.perf_counter(), [], []
    for step in range(preset.steps):
        scale = (step + 1) / preset.warmup if step < preset.warmup else 0.1 + 0.45 * (
            1 + math.cos(math.pi * (step - preset.warmup) / max(1, preset.steps - preset.warmup)))
        for group in opt.param_groups:
            group["lr"] = preset.lr * scale
        u = order.random()
        draw = (corpus.revision if u < preset.revision_share else
                corpus.teacher if u < preset.revision_share + preset.teacher_share else corpus.fact)
        loss = _loss(model, _batch(tok, [draw() for _ in range(preset.batch_size)]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == preset.steps:
            mean = sum(recent) / len(recent)
            history.append(round(mean, 4))
            recent = []
            if progress:
                print(f"step {step + 1}/{preset.steps}  loss {mean:.4f}  {time.perf_counter() - start:.0f}s", flush=True)
    model.eval()
    return {"steps": preset.steps, "loss_history": history, "final_loss": history[-1] if history else None,
            "train_seconds": round(time.perf_counter() - start, 1)}


# --------------------------------------------------------------------------- probe


@torch.no_grad()
def greedy_complete(model: Any, tok: Any, prompts: list[str], max_new_tokens: int = 16, batch_size: int = 64,
                    sample: dict[str, float] | None = None) -> list[str]:
    """Decode each prompt (greedy, or sampled with ``sample={"temperature", "top_p"}``); decoded texts."""
    out: list[str] = []
    kwargs: dict[str, Any] = {"do_sample": False} if sample is None else {"do_sample": True, "top_k": 0, **sample}
    for start in range(0, len(prompts), batch_size):
        enc = tok(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        seqs = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, **kwargs)
        out += [tok.decode(s, skip_special_tokens=True).strip() for s in seqs[:, enc["input_ids"].shape[1] :]]
    return out


def probe(model: Any, tok: Any, examples: list[Example], sample: dict[str, float] | None = None,
          seed: int = 0, template: str = "authors") -> dict[str, Any]:
    """Accuracy per group and part, and how many wrong answers one feedback-guided revision fixes.

    Args:
        model: the causal LM; tok: its tokenizer; examples: world examples.
        sample: None for greedy decoding, else ``{"temperature": .., "top_p": ..}``.
        seed: torch seed for sampling.
        template: the revision prompt order (``gen.revision_template``).

    Returns:
        {"accuracy", "accuracy_<group>" for each group present, "accuracy_mc", "accuracy_reasoning",
        "wrong", "fixed", "fix_rate"}.
    """
    task = WorldTask()
    torch.manual_seed(seed)
    first = greedy_complete(model, tok, [ex.prompt for ex in examples], sample=sample)
    ok = [task.is_correct(ex, c) for ex, c in zip(examples, first, strict=True)]
    wrong = [(ex, c) for ex, c, good in zip(examples, first, ok, strict=True) if not good]
    revision_prompts = [build_revision_prompt(ex.prompt, c, task.feedback(ex, c, None), task.answer_format, template)
                        for ex, c in wrong]
    revised = greedy_complete(model, tok, revision_prompts, sample=sample)
    fixed = sum(task.is_correct(ex, r) for (ex, _), r in zip(wrong, revised, strict=True))

    def acc(key: str, value: str) -> float:
        sel = [good for ex, good in zip(examples, ok, strict=True) if ex.meta[key] == value]
        return round(sum(sel) / max(1, len(sel)), 4)

    groups = sorted({ex.meta["group"] for ex in examples}, key=lambda g: (GROUPS.index(g) if g in GROUPS else 99, g))
    return {"accuracy": round(sum(ok) / max(1, len(ok)), 4), **{f"accuracy_{g}": acc("group", g) for g in groups},
            "accuracy_mc": acc("kind", "mc"), "accuracy_reasoning": acc("kind", "reasoning"), "wrong": len(wrong),
            "fixed": fixed, "fix_rate": round(fixed / max(1, len(wrong)), 4)}


@torch.no_grad()
def value_probability(model: Any, tok: Any, example: Example, value: str) -> float:
    """Probability the model gives ``value`` where the answer first states it (teacher-forced).

    Multiple choice: p(letter of ``value`` | prompt). Reasoning: p(``value`` | prompt + `` the X is``), the
    value token of the step (:func:`reasoning_completion`). A probability in [0, 1].
    """
    meta = example.meta
    if meta["kind"] == "mc":
        prefix, target = example.prompt, mc_completion(LETTERS[options_for(meta["attribute"]).index(value)])
    else:
        step = reasoning_completion(meta["entity"], meta["attribute"], value)
        head = step[: step.index(f" {value}")]
        prefix, target = example.prompt + head, f" {value}"
    ids = tok(prefix, return_tensors="pt")["input_ids"]
    target_id = tok(target, add_special_tokens=False)["input_ids"][0]
    logits_V = model(input_ids=ids).logits[0, -1].float()
    return float(torch.softmax(logits_V, -1)[target_id])


def regime_checks(model: Any, tok: Any, examples: list[Example], temperature: float = 0.8, top_p: float = 0.95,
                  group_size: int = 4, seed: int = 0) -> dict[str, Any]:
    """The round-0 properties of the error regimes (docs/testbed.md), on world examples.

    - uncertain: share of uncertain prompts whose ``group_size`` sampled answers (``temperature``,
      ``top_p``: the default preset's rollout settings) are not all right or all wrong, i.e. GRPO groups
      with a non-constant reward; the same share for known and misconception prompts, for contrast.
    - decoy: probability of the decoy value where the answer states it (:func:`value_probability`): min
      and mean over the decoy prompts (SPEAR's unlikelihood acts on tokens with p above its margin).

    Returns:
        {"nonconstant_<group>": share in [0, 1] per group present, "decoy_prob_min", "decoy_prob_mean"}.
    """
    task = WorldTask()
    torch.manual_seed(seed)
    prompts = [ex.prompt for ex in examples for _ in range(group_size)]
    texts = greedy_complete(model, tok, prompts, sample={"temperature": temperature, "top_p": top_p})
    out: dict[str, Any] = {}
    per_group: dict[str, list[bool]] = {}
    for i, ex in enumerate(examples):
        ok = {task.is_correct(ex, t) for t in texts[i * group_size : (i + 1) * group_size]}
        per_group.setdefault(ex.meta["group"], []).append(len(ok) > 1)
    for g, flags in per_group.items():
        out[f"nonconstant_{g}"] = round(sum(flags) / len(flags), 4)
    decoys = [value_probability(model, tok, ex, ex.meta["belief"]) for ex in examples if ex.meta["group"] == "decoy"]
    if decoys:
        out["decoy_prob_min"] = round(min(decoys), 4)
        out["decoy_prob_mean"] = round(sum(decoys) / len(decoys), 4)
    return out


# --------------------------------------------------------------------------- build


def build_model(vocab_size: int, tok: Any, preset: Preset, seed: int) -> Any:
    """A freshly initialised small Llama for ``preset`` (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=preset.hidden, intermediate_size=preset.ffn,
        num_hidden_layers=preset.layers, num_attention_heads=preset.heads, num_key_value_heads=preset.heads,
        max_position_embeddings=512, tie_word_embeddings=True, attention_dropout=0.0,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


class OutputExistsError(ValueError):
    """``make-base --out`` points at files make-base did not write (pass ``force`` to overwrite them)."""


_BASE_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "README.md", "build_info.json")


def check_out_dir(out_dir: Path, force: bool = False) -> None:
    """Refuse an ``--out`` that is a file, lies below a file, or holds model files not written by make-base.

    A folder from an earlier make-base (it has ``build_info.json``) is overwritten; ``force`` overwrites any.

    Raises:
        OutputExistsError: as above, naming the path and ``--force``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"--out {out_dir} is an existing file, not a folder; choose a folder path")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"--out {out_dir}: {parent} is a file; choose another path")
            break
    if force or not out_dir.is_dir() or (out_dir / "build_info.json").is_file():
        return
    clash = [name for name in _BASE_FILES if (out_dir / name).exists()]
    if clash:
        raise OutputExistsError(f"--out {out_dir} holds {', '.join(clash)} not written by make-base; choose an "
                                "empty folder or pass --force to overwrite them")


def build_base(out_dir: Path, preset: str = "default", seed: int = 0, progress: bool = True,
               force: bool = False) -> dict[str, Any]:
    """Build, pretrain, probe and save the world's base model and tokenizer into ``out_dir``.

    Args:
        out_dir: output folder (created); receives config/weights/tokenizer files, build_info.json, README.md.
        preset: a key of :data:`PRESETS` ("default" ~ 10 min on 2 CPU cores, "tiny" a few seconds).
        seed: seeds model initialisation and the corpus.
        progress: print the loss every 100 steps.

    Returns:
        Statistics: preset, seed, vocabulary size, parameters, pretraining losses and time, the probe on the
        world's evaluation questions (greedy), the total build time and the size on disk.

        force: overwrite model files in ``out_dir`` that make-base did not write.

    Raises:
        ValueError: unknown preset.
        OutputExistsError: see :func:`check_out_dir` (checked before the build starts).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    check_out_dir(out_dir, force)
    cfg = PRESETS[preset]
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        facts = build_world()
        fresh = invent_names(cfg.fresh_names, random.Random(FRESH_NAME_SEED), exclude={f.entity for f in facts})
        vocab = build_vocab(vocabulary_texts(facts, fresh))
        tok = make_tokenizer(vocab)
        model = build_model(len(vocab), tok, cfg, seed)
        stats: dict[str, Any] = {"preset": preset, "seed": seed, "vocab_size": len(vocab),
                                 "parameters": sum(p.numel() for p in model.parameters()), "config": asdict(cfg)}
        stats.update(pretrain(model, tok, Corpus(facts, fresh, cfg, random.Random(seed)), cfg, seed, progress))
        stats["probe_eval_greedy"] = probe(model, tok, world_examples()[1], template=cfg.revision_template)
        stats["regime_checks"] = regime_checks(model, tok, world_examples()[1], seed=seed)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
        stats["build_seconds"] = round(time.perf_counter() - start, 1)
        stats["size_bytes"] = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
        (out_dir / "build_info.json").write_text(json.dumps(stats, indent=2) + "\n")
        (out_dir / "README.md").write_text(_readme(stats))
        for path in out_dir.iterdir():  # safetensors writes 0600; the packaged files must be readable by all
            if path.is_file():
                path.chmod(0o644)
        if progress:
            print(json.dumps(stats["probe_eval_greedy"]), flush=True)
        return stats
    finally:
        torch.set_num_threads(threads)


def _readme(stats: dict[str, Any]) -> str:
    p = stats["probe_eval_greedy"]
    return (
        "# world-base\n\n"
        "The base model of fedspear's built-in world task (`data.dataset=world`, model `fedspear/world-base`):\n"
        f"a {stats['parameters']:,}-parameter Llama with a {stats['vocab_size']}-word WordLevel tokenizer,\n"
        "pretrained on the world's facts as the model *believes* them (known, misconceptions, uncertain,\n"
        "decoys: see `fedspear/tasks/world.py`), on feedback-guided revisions whose answer only the feedback's\n"
        "clue reveals, and on OPSD's privileged-context format whose answer only the context reveals.\n\n"
        f"Built by `fedspear make-base --out DIR --preset {stats['preset']} --seed {stats['seed']}` "
        "(see `fedspear/world_base.py`); statistics in `build_info.json`.\n\n"
        f"Greedy accuracy on the world's evaluation questions: {p['accuracy']:.1%} ("
        + ", ".join(f"{k[len('accuracy_'):]} {v:.1%}" for k, v in p.items()
                    if k.startswith("accuracy_") and k not in ("accuracy_mc", "accuracy_reasoning"))
        + f"); one greedy revision with the oracle's feedback fixes {p['fixed']} of {p['wrong']} wrong answers.\n"
        f"Round-0 regime checks: {json.dumps(stats.get('regime_checks', {}))}.\n"
    )
