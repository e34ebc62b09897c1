"""Imperfect feedback: each knob's effect on many seeded calls, the oracle unchanged at zero, no gold in hints."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from fedspear.config import ConfigError, load_config
from fedspear.feedback_noise import BARE_FEEDBACK, KNOBS, FeedbackModel
from fedspear.tasks.world import ATTRIBUTES, WorldTask, reasoning_completion

N = 4000  # calls per rate: a seeded Bernoulli(p) count is within 0.02 of p*N/N with overwhelming margin (4 sigma)


def _cfg(**knobs: float) -> SimpleNamespace:
    feedback = SimpleNamespace(mc_hint_words=3, **{k: 0.0 for k in KNOBS})
    for key, value in knobs.items():
        setattr(feedback, key, value)
    return SimpleNamespace(feedback=feedback, data=SimpleNamespace(seed=0, max_eval_examples=10000, groups=[]))


@pytest.fixture(scope="module")
def world():
    task = WorldTask()
    return task, task.load(_cfg()).eval


def _answers(ex):
    """(a right completion, a wrong completion) of a world example."""
    attribute, truth = ex.meta["attribute"], ex.meta["truth"]
    wrong_value = next(v for v in ATTRIBUTES[attribute] if v != truth)
    if ex.meta["kind"] == "mc":
        return ex.answer, "ABCDEFG"[ex.choices.index(wrong_value)]
    return (reasoning_completion(ex.meta["entity"], attribute, truth),
            reasoning_completion(ex.meta["entity"], attribute, wrong_value))


def test_all_zero_is_the_oracle_exactly(world):
    task, examples = world
    user = FeedbackModel(task, _cfg(), seed=3)
    assert user.is_oracle
    for ex in examples:
        right, wrong = _answers(ex)
        assert not user.dropped()
        assert user.verdict(ex, right) is True and user.verdict(ex, wrong) is False
        assert user.feedback(ex, wrong) == task.feedback(ex, wrong, None)
    m = user.metrics()
    assert m["feedback_verdicts"] == 2 * len(examples) and m["feedback_hints"] == len(examples)
    assert m["feedback_corrupted_verdicts"] == m["feedback_corrupted_hints"] == m["feedback_dropped"] == 0


@pytest.mark.parametrize("knob", KNOBS)
def test_each_knob_hits_at_its_rate_and_only_where_it_applies(world, knob):
    task, examples = world
    rate = 0.3
    user = FeedbackModel(task, _cfg(**{knob: rate}), seed=11)
    hits = 0
    for i in range(N):
        ex = examples[i % len(examples)]
        right, wrong = _answers(ex)
        if knob == "drop_rate":
            hits += user.dropped()
        elif knob == "false_accept_rate":
            hits += user.verdict(ex, wrong)
            assert user.verdict(ex, right) is True  # a right answer is never flipped by false accepts
        elif knob == "false_reject_rate":
            verdict = user.verdict(ex, right)
            hits += not verdict
            assert user.verdict(ex, wrong) is False
            if not verdict:  # the feedback on a falsely rejected answer hints toward a wrong value
                fb = user.feedback(ex, right)
                clue = fb.split("Hint: think of ")[1].split(".")[0]
                assert clue not in ATTRIBUTES[ex.meta["attribute"]][ex.meta["truth"]]
        else:
            fb = user.feedback(ex, wrong)
            oracle = task.feedback(ex, wrong, None)
            if knob == "no_hint_rate":
                hits += "Hint:" not in fb
            else:
                hits += fb != oracle and "Hint:" in fb
    assert abs(hits / N - rate) < 0.02
    m = user.metrics()
    counter = {"drop_rate": "feedback_dropped", "false_accept_rate": "feedback_false_accepts",
               "false_reject_rate": "feedback_false_rejects", "no_hint_rate": "feedback_hints_bare",
               "misleading_hint_rate": "feedback_hints_misleading"}[knob]
    assert m[counter] == hits  # the metrics count exactly what was corrupted
    if knob in ("false_accept_rate", "false_reject_rate"):
        assert m["feedback_corrupted_verdicts"] == hits
    if knob in ("no_hint_rate", "misleading_hint_rate", "false_reject_rate"):
        assert m["feedback_corrupted_hints"] == (hits if knob != "false_reject_rate" else
                                                 m["feedback_hints_after_false_reject"])


def test_same_seed_same_corruptions_and_no_gold_in_any_corrupted_hint(world):
    task, examples = world
    cfg = _cfg(misleading_hint_rate=0.5, no_hint_rate=0.3, false_reject_rate=0.5)
    a, b = FeedbackModel(task, cfg, seed=5), FeedbackModel(task, cfg, seed=5)
    for ex in examples:
        right, wrong = _answers(ex)
        for answer in (right, wrong):
            if not a.verdict(ex, answer):
                assert not b.verdict(ex, answer)
                fb = a.feedback(ex, answer)
                assert fb == b.feedback(ex, answer)
                assert not re.search(rf"\b{ex.meta['truth']}\b", fb, re.IGNORECASE)
                if ex.meta["kind"] == "mc":
                    assert not re.search(rf"(?<![\w']){ex.answer}(?![\w'])", fb)
            else:
                assert b.verdict(ex, answer)
    assert a.metrics()["feedback_corrupted_hints"] > 0


def test_bare_feedback_falls_back_to_a_fixed_sentence_and_wrong_hints_need_a_capable_task(world):
    _, examples = world

    class NoWrongHints:
        name = "plain"

        def is_correct(self, example, completion):
            return False

        def feedback(self, example, completion, cfg):
            return "Hint: oracle."

    user = FeedbackModel(NoWrongHints(), _cfg(no_hint_rate=1.0), seed=0)  # type: ignore[arg-type]
    assert user.feedback(examples[0], "x") == BARE_FEEDBACK
    with pytest.raises(ConfigError, match="feedback.misleading_hint_rate / feedback.false_reject_rate: task 'plain'"):
        FeedbackModel(NoWrongHints(), _cfg(misleading_hint_rate=0.1), seed=0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("override", "message"), [
    ("feedback.false_accept_rate=1.5", "feedback.false_accept_rate: must be in \\[0, 1\\], got 1.5"),
    ("feedback.drop_rate=-0.1", "feedback.drop_rate: must be in \\[0, 1\\]"),
])
def test_bad_rates_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
    with pytest.raises(ConfigError, match="must be <= 1"):
        load_config(None, ["feedback.misleading_hint_rate=0.6", "feedback.no_hint_rate=0.5"])
    # the task's capability (misleading_feedback) is checked where the run's task is assembled, not by its name
    from fedspear.extensions import task_with_feedback
    from fedspear.tasks import get_task

    arc = load_config(None, ["feedback.false_reject_rate=0.1"])
    with pytest.raises(ConfigError, match="task 'arc_challenge' cannot hint toward a wrong value"):
        task_with_feedback(get_task("arc_challenge"), arc)
    assert load_config(None, ["data.dataset=world", "feedback.false_reject_rate=0.1"]).feedback.false_reject_rate == 0.1


USER_TASKS = """
from fedspear.tasks.base import Task
from fedspear.tasks.world import WorldTask


class MyWorld(WorldTask):
    name = "my_world"


class Plain(Task):
    name = "plain"

    def load(self, cfg):
        raise NotImplementedError

    def extract(self, completion):
        return completion

    def feedback(self, example, completion, cfg):
        return "Hint."
"""


@pytest.fixture
def user_tasks(tmp_path, monkeypatch):
    (tmp_path / "my_noise_tasks.py").write_text(USER_TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_users_task_with_misleading_feedback_takes_the_wrong_hint_knobs(user_tasks, capsys):
    from fedspear.cli import main
    from fedspear.extensions import task_with_feedback
    from fedspear.tasks import get_task

    knobs = ["feedback.misleading_hint_rate=0.2", "feedback.false_reject_rate=0.1"]
    assert main(["check", "data.dataset=my_noise_tasks:MyWorld", *knobs]) == 0
    cfg = load_config(None, ["data.dataset=my_noise_tasks:MyWorld", *knobs])
    task = get_task(cfg.data.dataset)
    assert task_with_feedback(task, cfg) is task
    capsys.readouterr()
    # a user's task without the capability: one line at config check, naming the knob and the task
    assert main(["check", "data.dataset=my_noise_tasks:Plain", "feedback.false_reject_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedspear: error: feedback.misleading_hint_rate / feedback.false_reject_rate: task 'plain' "
                          "cannot hint toward a wrong value") and err.count("\n") == 1
