"""The world's base-model builder: vocabulary, corpus, a tiny deterministic build, and the shipped model."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from fedspear.algorithms.opsd import format_teacher_prompt
from fedspear.tasks.base import LETTERS
from fedspear.tasks.prompts import build_revision_prompt
from fedspear.tasks.world import (
    ATTRIBUTES,
    GROUPS,
    QUESTIONS,
    WorldTask,
    build_world,
    options_for,
    reasoning_completion,
    world_examples,
)
from fedspear.world_base import (
    FRESH_NAME_SEED,
    PRESETS,
    Corpus,
    build_base,
    build_vocab,
    greedy_complete,
    invent_names,
    make_tokenizer,
    probe,
    regime_checks,
    vocabulary_texts,
)

SHIPPED = Path(__file__).resolve().parents[1] / "fedspear" / "assets" / "world-base"


@pytest.fixture(scope="module")
def world():
    facts = build_world()
    fresh = invent_names(20, random.Random(FRESH_NAME_SEED), exclude={f.entity for f in facts})
    tok = make_tokenizer(build_vocab(vocabulary_texts(facts, fresh)))
    return facts, fresh, tok


def _all_task_texts() -> list[str]:
    """Every prompt, every wrong-answer feedback and its revision prompt, and the gold completions."""
    task = WorldTask()
    train, held_out = world_examples()
    texts = []
    rng = random.Random(0)
    for ex in train + held_out:
        texts += [ex.prompt, format_teacher_prompt(task.privileged_context(ex), ex.prompt)]
        kind, attr, truth = ex.meta["kind"], ex.meta["attribute"], ex.meta["truth"]
        if kind == "mc":
            wrong = [letter for letter in LETTERS[:7] if letter != ex.answer][:2]
        else:
            other = next(v for v in ATTRIBUTES[attr] if v != truth)
            wrong = [reasoning_completion(ex.meta["entity"], attr, other)]
            texts.append(reasoning_completion(ex.meta["entity"], attr, truth))
        for w in [*wrong, ""]:
            for fb in (task.feedback(ex, w, None), task.misleading_feedback(ex, w, rng), task.bare_feedback(ex, w)):
                texts.append(build_revision_prompt(ex.prompt, w, fb, task.answer_format))
    return texts


def test_vocabulary_covers_every_task_text(world):
    _, _, tok = world
    assert tok.convert_tokens_to_ids(["[PAD]", "[EOS]", "[UNK]"]) == [0, 1, 2]
    for text in _all_task_texts():
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids, text


def test_tokenizer_round_trip(world):
    _, _, tok = world
    ids = tok(" C", add_special_tokens=False)["input_ids"]
    assert len(ids) == 1 and tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == "C"
    name = build_world()[0].entity
    decoded = tok.decode(tok(reasoning_completion(name, "color", "green"), add_special_tokens=False)["input_ids"])
    assert decoded == f"the {name} is green . Answer : green"
    assert tok.decode(tok("the zzqx is", add_special_tokens=False)["input_ids"]) == "the [UNK] is"
    assert WorldTask().extract(decoded) == "green"
    # word-level: prompt + completion tokenize as the concatenation of their tokenizations (no merges)
    prompt = world_examples()[0][0].prompt
    assert tok(prompt + " B")["input_ids"] == tok(prompt)["input_ids"] + tok(" B")["input_ids"]


def test_corpus_facts_use_beliefs_and_revisions_follow_clues(world):
    facts, fresh, _ = world
    corpus = Corpus(facts, fresh, PRESETS["tiny"], random.Random(0))
    by_name_attr = {(f.entity, f.attribute): f for f in facts}
    task = WorldTask()
    uncertain_answers = set()
    for _ in range(600):
        prompt, completion = corpus.fact()
        entity = next(name for name, _ in by_name_attr if re.search(rf"\b{name}\b", prompt))
        fact = by_name_attr[(entity, _attr_of(prompt))]
        # an uncertain fact is answered with its truth or its belief; every other fact with its belief
        values = (fact.truth, fact.belief) if fact.group == "uncertain" else (fact.belief,)
        if "A) " in prompt:  # multiple choice: the letter of the belief in the fixed option list
            assert completion in {f" {LETTERS[options_for(fact.attribute).index(v)]}" for v in values}
        else:
            assert completion in {reasoning_completion(entity, fact.attribute, v) for v in values}
        if fact.group == "uncertain":
            uncertain_answers.add(completion == values[0] or completion.endswith(f" {values[0]}") or
                                  completion == f" {LETTERS[options_for(fact.attribute).index(values[0])]}")
    assert uncertain_answers == {True, False}  # both the truth and the wrong value are taught
    for _ in range(200):
        prompt, completion = corpus.revision()
        clue = prompt.split("Hint: think of ")[1].split(".")[0]
        target = next(v for vals in ATTRIBUTES.values() for v, clues in vals.items() if clue in clues)
        if "A) " in prompt:  # the letter of the clue's value; else the step and declaration with that value
            assert completion == f" {LETTERS[options_for(_attr_of(prompt)).index(target)]}"
        else:
            assert task.extract(completion) == target and completion.endswith(f". Answer: {target}")
        previous = prompt.split("do not copy it)\n")[1].split("\n\n")[0]
        assert task.extract(previous) != task.extract(completion)
        assert prompt.endswith("Corrected solution:")


def test_corpus_teacher_prompts_state_a_value_memory_does_not_hold(world):
    """OPSD's format: privileged context then the task prompt, answered with the context's value, which for a
    world creature is never its belief (so the model learns to read the context, not a misconception's truth)."""
    facts, fresh, _ = world
    corpus = Corpus(facts, fresh, PRESETS["tiny"], random.Random(1))
    by_name_attr = {(f.entity, f.attribute): f for f in facts}
    task, world_creatures = WorldTask(), 0
    for _ in range(300):
        prompt, completion = corpus.teacher()
        assert prompt.startswith("### Verified reference (known to be correct)\nFact: the ")
        context, task_prompt = prompt.split("\n\n### Task\n")
        assert prompt == format_teacher_prompt(context.split("\n", 1)[1], task_prompt)
        stated = context.split("Correct answer: ")[1].rstrip(".")
        assert task.extract(completion) == stated
        name = task_prompt.split("\n")[0].split(" ")
        fact = next((by_name_attr[(n, _attr_of(task_prompt))] for n in name if (n, _attr_of(task_prompt))
                     in by_name_attr), None)
        if fact is not None:
            world_creatures += 1
            value = options_for(fact.attribute)[LETTERS.index(stated)] if len(stated) == 1 else stated
            assert value != fact.belief
    assert 0 < world_creatures < 300


def _attr_of(prompt: str) -> str:
    """The attribute a world prompt asks about (its question wording)."""
    question = prompt.split("Question: ")[1].split("\n")[0]
    for attribute, wordings in QUESTIONS.items():
        for wording in wordings:
            head, tail = wording.split("{name}")
            if question.startswith(head) and question.endswith(tail):
                return attribute
    raise AssertionError(question)


def test_tiny_build_is_deterministic_and_loadable(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stats = build_base(tmp_path / "a", preset="tiny", seed=3, progress=False)
    build_base(tmp_path / "b", preset="tiny", seed=3, progress=False)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert stats["preset"] == "tiny" and stats["steps"] == PRESETS["tiny"].steps
    assert stats["size_bytes"] > 0 and len(stats["loss_history"]) == 1
    assert set(stats["probe_eval_greedy"]) >= {"accuracy", "accuracy_known", "accuracy_misconception", "fix_rate"}
    assert json.loads((tmp_path / "a" / "build_info.json").read_text())["vocab_size"] == stats["vocab_size"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tok) == stats["vocab_size"]
    assert model.config.eos_token_id == tok.eos_token_id == 1 and tok.pad_token_id == 0
    assert model.generation_config.eos_token_id == 1
    assert tok.unk_token_id not in tok(world_examples()[1][0].prompt)["input_ids"]


def test_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        build_base(tmp_path, preset="huge")


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="the shipped world-base model is not built")
def test_shipped_model_meets_the_base_model_contract():
    """Held-out greedy accuracy in [25%, 60%]: known facts right, misconceptions wrong; hints fix wrong answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED).eval()
    tok = AutoTokenizer.from_pretrained(SHIPPED)
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 20 * 2**20
    for text in _all_task_texts():
        assert tok.unk_token_id not in tok(text)["input_ids"]
    held_out = world_examples()[1]
    from fedspear.models import pretrained_revision_template

    template = pretrained_revision_template("fedspear/world-base")  # the order the shipped base learned revisions in
    assert template in ("authors", "instructions_first")
    result = probe(model, tok, held_out, template=template)
    assert 0.25 <= result["accuracy"] <= 0.60
    assert result["accuracy_known"] >= 0.9 and result["accuracy_misconception"] <= 0.1
    assert result["accuracy_decoy"] <= 0.1
    assert result["fix_rate"] >= 0.5
    # the default preset's groups (known, misconception): half right at round 0, as before the other groups
    default = probe(model, tok, [ex for ex in held_out if ex.meta["group"] in ("known", "misconception")])
    assert default["accuracy"] == pytest.approx(0.5, abs=0.05)


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="the shipped world-base model is not built")
def test_shipped_model_shows_each_error_regime_at_round_0():
    """Uncertain facts give non-constant reward groups at the default temperature (0.8, G = 4); decoy answers are
    confident (probability above the default preset's unlikelihood margin, 0.3); the OPSD teacher's prompt
    (privileged context) is read: given the truth, the base answers it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED).eval()
    tok = AutoTokenizer.from_pretrained(SHIPPED)
    held_out = world_examples()[1]
    checks = regime_checks(model, tok, held_out, temperature=0.8, top_p=0.95, group_size=4, seed=0)
    assert set(GROUPS) == {k[len("nonconstant_"):] for k in checks if k.startswith("nonconstant_")}
    assert checks["nonconstant_uncertain"] >= 0.5
    assert checks["nonconstant_uncertain"] >= 3 * max(checks["nonconstant_known"], checks["nonconstant_misconception"],
                                                      checks["nonconstant_decoy"], 0.05)
    assert checks["decoy_prob_min"] > 0.3
    task = WorldTask()
    teacher = greedy_complete(model, tok, [format_teacher_prompt(task.privileged_context(ex), ex.prompt)
                                           for ex in held_out])
    by_group = {g: [task.is_correct(ex, t) for ex, t in zip(held_out, teacher) if ex.meta["group"] == g]
                for g in GROUPS}
    assert sum(by_group["misconception"]) / len(by_group["misconception"]) >= 0.8
    assert sum(by_group["decoy"]) / len(by_group["decoy"]) >= 0.8
