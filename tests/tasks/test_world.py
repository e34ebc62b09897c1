"""The built-in world task: a fixed world, its splits and labels, the verifier and the oracle feedback."""

from __future__ import annotations

import re
from collections import Counter
from types import SimpleNamespace

import pytest

from fedspear.tasks.base import LETTERS, DataError
from fedspear.tasks.world import (
    ATTRIBUTES,
    DECOYS,
    ENTITIES_PER_REGION,
    GROUPS,
    NUM_REGIONS,
    WorldTask,
    build_world,
    extract_answer,
    reasoning_completion,
)


def _cfg(seed: int = 42, max_eval: int = 10000, groups: list[str] | None = None) -> SimpleNamespace:
    return SimpleNamespace(data=SimpleNamespace(seed=seed, max_eval_examples=max_eval, groups=groups or []),
                           feedback=SimpleNamespace(mc_hint_words=3))


@pytest.fixture(scope="module")
def data():
    return WorldTask().load(_cfg())


def test_world_is_fixed_and_balanced():
    facts = build_world()
    assert facts == build_world()
    assert len(facts) == NUM_REGIONS * ENTITIES_PER_REGION * len(ATTRIBUTES) == 72
    groups = Counter((f.attribute, f.group) for f in facts)
    assert all(groups[(a, g)] == 6 for a in ATTRIBUTES for g in GROUPS)
    for f in facts:
        assert f.truth in ATTRIBUTES[f.attribute] and f.belief in ATTRIBUTES[f.attribute]
        assert (f.truth == f.belief) == (f.group == "known")
        assert f.truth != DECOYS[f.attribute]  # a decoy value is the truth of no fact
        assert (f.belief == DECOYS[f.attribute]) == (f.group == "decoy")
    for attribute, values in ATTRIBUTES.items():  # per value: one fact of each group, one wrong belief each
        real = [v for v in values if v != DECOYS[attribute]]
        for group in GROUPS:
            mine = [f for f in facts if f.attribute == attribute and f.group == group]
            assert sorted(f.truth for f in mine) == sorted(real)
            if group in ("misconception", "uncertain"):
                assert sorted(f.belief for f in mine) == sorted(real)
    # 24 distinct creatures, 4 per region
    per_region = Counter(r for _, r in {(f.entity, f.region) for f in facts})
    assert sorted(per_region.values()) == [ENTITIES_PER_REGION] * NUM_REGIONS


def test_clues_are_unique_and_never_a_value():
    values = {v for vs in ATTRIBUTES.values() for v in vs}
    clues = [c for vs in ATTRIBUTES.values() for cs in vs.values() for c in cs]
    assert len(clues) == len(set(clues)) == 63
    assert not values & set(clues)
    assert not any(v in c or c in v for v in values for c in clues)


def test_sizes_labels_and_meta(data):
    assert len(data.train) == 216 and len(data.eval) == 144
    assert data.stats.kept == 360 and data.stats.num_skipped == 0
    assert Counter(ex.meta["kind"] for ex in data.train) == {"mc": 144, "reasoning": 72}
    assert Counter(ex.meta["kind"] for ex in data.eval) == {"mc": 72, "reasoning": 72}
    assert Counter(ex.meta["group"] for ex in data.eval) == {g: 36 for g in GROUPS}
    # The partition label is the creature's region: 6 regions, each 36 training questions about 4 creatures.
    assert Counter(ex.label for ex in data.train) == {r: 36 for r in {ex.label for ex in data.train}}
    by_entity = {}
    for ex in data.train + data.eval:
        assert by_entity.setdefault(ex.meta["entity"], ex.label) == ex.label
    assert len(by_entity) == 24
    for ex in data.train + data.eval:
        assert ex.prompt.endswith("Answer:")
        if ex.meta["kind"] == "mc":
            assert ex.choices == tuple(ATTRIBUTES[ex.meta["attribute"]])  # the same seven options, same order
            assert ex.choices[LETTERS.index(ex.answer)] == ex.meta["truth"]
            assert f"{ex.answer}) {ex.meta['truth']}" in ex.prompt
        else:
            assert ex.choices == () and ex.answer == ex.meta["truth"]
            assert ex.meta["truth"] not in ex.prompt


def test_eval_is_held_out(data):
    train_prompts = {ex.prompt for ex in data.train}
    assert not any(ex.prompt in train_prompts for ex in data.eval)
    assert {ex.meta["wording"] for ex in data.train} == {0, 1}
    assert {ex.meta["wording"] for ex in data.eval} == {2}
    # every fact is asked in both splits: two MC and one reasoning question to train, one of each to evaluate
    train_facts = Counter((ex.meta["entity"], ex.meta["attribute"]) for ex in data.train)
    eval_facts = Counter((ex.meta["entity"], ex.meta["attribute"]) for ex in data.eval)
    assert set(train_facts.values()) == {3} and set(eval_facts.values()) == {2} and train_facts.keys() == eval_facts.keys()


def test_example_by_hand():
    facts = build_world()
    f = facts[0]
    mc = WorldTask().load(_cfg()).eval
    ex = next(e for e in mc if e.id == f"{f.entity}-{f.attribute}-mc2")
    assert f.attribute == "color"
    assert ex.prompt == (f"Question: The {f.entity} has which color?\nA) red\nB) green\nC) blue\nD) yellow\n"
                         "E) white\nF) black\nG) purple\nReply with the option letter only.\nAnswer:")
    assert ex.answer == "ABCDEF"[["red", "green", "blue", "yellow", "white", "black"].index(f.truth)]


def test_data_seed_only_shuffles_and_caps():
    a, b = WorldTask().load(_cfg(seed=1)), WorldTask().load(_cfg(seed=2))
    assert {ex.id for ex in a.train} == {ex.id for ex in b.train}
    assert [ex.id for ex in a.train] != [ex.id for ex in b.train]
    capped = WorldTask().load(_cfg(seed=1, max_eval=50))
    assert len(capped.eval) == 50 and {ex.id for ex in capped.eval} <= {ex.id for ex in a.eval}


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("C", "C"),
        ("B .", "B"),
        ("Answer : D", "D"),
        ("the zorvik is green . Answer : green", "green"),  # how the word-level tokenizer decodes
        ("the zorvik is green. Answer: red. Answer: Blue", "blue"),  # the last declaration counts
        ("green", "green"),  # the prompt's cue already said "Answer:"
        ("the zorvik is green", "the"),  # no declaration: the first word, which is wrong
        ("", None),
        (" . , ", None),
    ],
)
def test_extract(completion, expected):
    assert extract_answer(completion) == expected
    assert WorldTask().extract(completion) == expected


def test_is_correct_per_part(data):
    task = WorldTask()
    mc = next(ex for ex in data.eval if ex.meta["kind"] == "mc")
    wrong_letter = next(letter for letter in "ABCDEFG" if letter != mc.answer)
    assert task.is_correct(mc, mc.answer) and task.is_correct(mc, f"Answer : {mc.answer}")
    assert not task.is_correct(mc, wrong_letter) and not task.is_correct(mc, mc.meta["truth"])
    r = next(ex for ex in data.eval if ex.meta["kind"] == "reasoning")
    assert task.is_correct(r, reasoning_completion(r.meta["entity"], r.meta["attribute"], r.meta["truth"]))
    assert task.is_correct(r, r.meta["truth"].upper())
    other = next(v for v in ATTRIBUTES[r.meta["attribute"]] if v != r.meta["truth"])
    assert not task.is_correct(r, reasoning_completion(r.meta["entity"], r.meta["attribute"], other))
    assert not task.is_correct(r, mc.answer)


def _wrong_answers(ex):
    if ex.meta["kind"] == "mc":
        return [letter for letter in "ABCDEFG" if letter != ex.answer] + ["", ex.meta["truth"], "no idea"]
    values = [v for v in ATTRIBUTES[ex.meta["attribute"]] if v != ex.answer]
    return [reasoning_completion(ex.meta["entity"], ex.meta["attribute"], v) for v in values] + ["", "A"]


def test_feedback_never_leaks_and_gives_a_clue(data):
    task, cfg = WorldTask(), _cfg()
    for ex in data.train + data.eval:
        gold_word = ex.meta["truth"]
        clues = ATTRIBUTES[ex.meta["attribute"]][gold_word]
        for wrong in _wrong_answers(ex):
            assert not task.is_correct(ex, wrong)
            fb = task.feedback(ex, wrong, cfg)
            assert "incorrect" in fb
            assert not re.search(rf"\b{gold_word}\b", fb, re.IGNORECASE)
            if ex.meta["kind"] == "mc":
                assert not re.search(rf"(?<![\w']){ex.answer}(?![\w'])", fb)
            hint_line = next(line for line in fb.splitlines() if line.startswith("Hint:"))
            assert hint_line in {f"Hint: think of {c}." for c in clues}
            assert "Required format:" in fb


def test_feedback_names_the_given_answer():
    task = WorldTask()
    train = task.load(_cfg()).train
    mc = next(ex for ex in train if ex.meta["kind"] == "mc" and ex.answer != "B")
    fb = task.feedback(mc, "B", None).splitlines()
    assert fb[0] == "Your answer (B) is incorrect."
    assert fb[2] == "Required format: the option letter only."
    assert fb[3] == "Do not choose option B again."
    r = next(ex for ex in train if ex.meta["kind"] == "reasoning")
    other = next(v for v in ATTRIBUTES[r.meta["attribute"]] if v != r.answer)
    fb = task.feedback(r, f"the x is {other} . Answer : {other}", None).splitlines()
    assert fb[0] == f"Your answer ({other}) is incorrect." and fb[3] == f"Do not answer {other} again."
    # misuse on a correct answer still never names the gold answer
    assert mc.answer not in task.feedback(mc, mc.answer, None).split("\n")[0]


def test_feedback_is_deterministic_and_varies_clues(data):
    task = WorldTask()
    ex = next(ex for ex in data.train if ex.meta["kind"] == "mc")
    assert task.feedback(ex, "wrong", None) == task.feedback(ex, "wrong", None)
    hints = {task.feedback(e, "", None).splitlines()[1] for e in data.train}
    assert len(hints) > 40  # clues are spread over the 54 of real values, not always the first one


def test_privileged_context_and_continuations(data):
    task = WorldTask()
    mc = next(ex for ex in data.eval if ex.meta["kind"] == "mc")
    assert task.choice_continuations(mc) == [" A", " B", " C", " D", " E", " F", " G"]
    ctx = task.privileged_context(mc)
    assert mc.meta["truth"] in ctx and f"Correct answer: {mc.answer}." in ctx
    r = next(ex for ex in data.eval if ex.meta["kind"] == "reasoning")
    assert task.choice_continuations(r) == []
    assert task.kind == "reasoning" and task.answer_marker == "Answer:"


def test_region_labels_give_clients_different_creatures(data):
    """A Dirichlet partition over the region label: non-IID clients share far fewer creatures than IID ones."""
    from fedspear.federation.partition import dirichlet_partition

    def clients_per_creature(alpha: float) -> float:
        clients = dirichlet_partition([ex.label for ex in data.train], 6, alpha, max_per_client=0, seed=0)
        assert sorted(i for c in clients for i in c) == list(range(len(data.train)))
        holders = {}
        for cid, idxs in enumerate(clients):
            for i in idxs:
                holders.setdefault(data.train[i].meta["entity"], set()).add(cid)
        return sum(len(h) for h in holders.values()) / len(holders)

    assert clients_per_creature(0.05) < 0.5 * clients_per_creature(100.0)


def test_data_groups_keeps_only_those_groups():
    task = WorldTask()
    kept = task.load(_cfg(groups=["known", "misconception"]))
    assert len(kept.train) == 108 and len(kept.eval) == 72
    assert {ex.meta["group"] for ex in kept.train + kept.eval} == {"known", "misconception"}
    with pytest.raises(DataError, match="data.groups: unknown world group\\(s\\) 'decoys'; choose from known"):
        task.load(_cfg(groups=["known", "decoys"]))


def test_misleading_and_bare_feedback_never_name_the_gold(data):
    """Corrupted feedback (fedspear.feedback_noise): a clue for a wrong value, or no clue; never the gold."""
    import random

    task, rng = WorldTask(), random.Random(0)
    truth_clue = 0
    for ex in data.train + data.eval:
        attribute, gold_word = ex.meta["attribute"], ex.meta["truth"]
        right = ex.answer if ex.meta["kind"] == "mc" else reasoning_completion(ex.meta["entity"], attribute, gold_word)
        for answer in [*_wrong_answers(ex), right]:
            for fb in (task.misleading_feedback(ex, answer, rng), task.bare_feedback(ex, answer)):
                assert not re.search(rf"\b{gold_word}\b", fb, re.IGNORECASE), fb
                if ex.meta["kind"] == "mc":
                    assert not re.search(rf"(?<![\w']){ex.answer}(?![\w'])", fb), fb
            misleading = task.misleading_feedback(ex, answer, rng)
            clue = misleading.split("Hint: think of ")[1].split(".")[0]
            value = next(v for v, clues in ATTRIBUTES[attribute].items() if clue in clues)
            assert value != gold_word and value != task.extract(answer)
            truth_clue += clue in ATTRIBUTES[attribute][gold_word]
            assert "Hint:" not in task.bare_feedback(ex, answer) and "incorrect" in task.bare_feedback(ex, answer)
    assert truth_clue == 0
