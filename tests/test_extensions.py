"""Users' own tasks and feedback sources by dotted path (fedspear/extensions.py, fedspear/feedback.py).

The example in examples/arithmetic is loaded from outside the package, checked, and run end to end through the CLI.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FAST_EVAL, REPO, tiny_overrides

from fedspear.cli import main
from fedspear.config import ConfigError
from fedspear.extensions import load_feedback_class, load_task_class, task_with_feedback
from fedspear.feedback import Feedback, FeedbackTask, NoFeedback, OracleFeedback, verifier_of
from fedspear.tasks import get_task
from fedspear.tasks.base import Example, Task

EXAMPLE = REPO / "examples" / "arithmetic"
TASK = "arithmetic_task:ArithmeticTask"
SOURCE = "arithmetic_task:DigitFeedback"


@pytest.fixture
def example_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))


def cfg(provider: str = "oracle"):
    return SimpleNamespace(feedback=SimpleNamespace(provider=provider, mc_hint_words=3),
                           data=SimpleNamespace(seed=0, max_eval_examples=5))


def ex(a: int, b: int) -> Example:
    return Example(f"t-{a}-{b}", f"Question: What is {a} + {b}?\nAnswer:", str(a + b), "x", meta={"a": a, "b": b})


class _Judge:
    """A feedback source that says 'right' to everything and counts its calls."""

    def __init__(self, task, cfg):
        self.calls = 0

    def judge(self, example, answer):
        self.calls += 1
        return Feedback(answer.strip() == "yes", "" if answer.strip() == "yes" else "say yes")


class _NotATask:
    pass


class _HalfTask(Task):
    def load(self, cfg):
        raise NotImplementedError


def test_a_task_by_dotted_path(example_path):
    task = get_task(TASK)
    assert type(task).__name__ == "ArithmeticTask" and task.kind == "reasoning"
    data = task.load(cfg())
    assert len(data.train) == 400 and len(data.eval) == 5
    e = ex(27, 15)
    assert task.extract(" 42 because") == "42" and task.is_correct(e, " 42") and not task.is_correct(e, " 41")
    hint = task.feedback(e, " 50", None)
    assert "too high" in hint and "42" not in hint


def test_the_oracle_and_none_sources_read_the_task(example_path):
    task, e = get_task(TASK), ex(27, 15)
    assert OracleFeedback(task, cfg()).judge(e, " 42") == Feedback(True, "")
    assert OracleFeedback(task, cfg()).judge(e, " 30") == Feedback(False, task.feedback(e, " 30", None))
    assert NoFeedback(task, cfg()).judge(e, " 30") == Feedback(False, "")
    assert task_with_feedback(task, cfg("oracle")) is task and task_with_feedback(task, cfg("none")) is task


def test_a_feedback_source_judges_training_and_the_verifier_judges_evaluation(example_path, monkeypatch):
    import tests_judge_module  # noqa: F401 - created below

    task = get_task(TASK)
    wrapped = task_with_feedback(task, cfg("tests_judge_module:_Judge"))
    assert isinstance(wrapped, FeedbackTask) and verifier_of(wrapped) is task and verifier_of(task) is task
    e = ex(1, 1)
    assert wrapped.is_correct(e, "yes") and not wrapped.is_correct(e, " 2")  # the source's verdicts
    assert wrapped.feedback(e, " 2", None) == "say yes"
    assert wrapped.source.calls == 2  # " 2" was judged once for its verdict and hint (cached)
    assert wrapped.answer_format == task.answer_format and wrapped.load(cfg()).train[0] == task.load(cfg()).train[0]


@pytest.fixture(autouse=True)
def judge_module(tmp_path, monkeypatch):
    (tmp_path / "tests_judge_module.py").write_text("from test_extensions import _Judge, _NotATask, _HalfTask\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_a_source_that_returns_the_wrong_type_is_named(example_path):
    class Bad:
        def judge(self, example, answer):
            return True

    wrapped = FeedbackTask(get_task(TASK), Bad(), "my:Bad")
    with pytest.raises(ConfigError, match=r"feedback.provider=my:Bad: judge\(\) returned bool"):
        wrapped.is_correct(ex(1, 1), "2")


def test_a_source_that_fails_stops_the_run_before_it_starts(example_path, tiny_qwen, tmp_path, capsys):
    """Judged once on a training example at setup: a broken source is one line and exit 2, not N failed clients."""
    (tmp_path / "broken_fb.py").write_text(
        "from fedspear.feedback import Feedback\n"
        "class Broken:\n"
        "    def __init__(self, task, cfg):\n        pass\n"
        "    def judge(self, example, answer):\n        return example.answer == answer\n"
        "class Raises(Broken):\n"
        "    def judge(self, example, answer):\n        raise KeyError('gold')\n")
    for source, message in (("broken_fb:Broken", "judge() returned bool, expected fedspear.feedback.Feedback"),
                            ("broken_fb:Raises", "judge(example, '') failed on add-0: KeyError: 'gold'")):
        overrides = tiny_overrides(tiny_qwen, tmp_path / source.replace(":", "-"),
                                   **{"data.dataset": TASK, "feedback.provider": source})
        assert main(["run", *overrides]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"fedspear: error: feedback.provider={source}: ") and message in err


@pytest.mark.parametrize(("key", "value", "message"), [
    ("data.dataset", "no_such_module_xyz:Task", "cannot import 'no_such_module_xyz'"),
    ("data.dataset", "json:NoSuchClass", "'json' has no attribute 'NoSuchClass'"),
    ("data.dataset", "tests_judge_module:_NotATask", "is not a subclass of fedspear.tasks.base.Task"),
    ("data.dataset", "tests_judge_module:_HalfTask", "_HalfTask does not implement extract, feedback"),
    ("data.dataset", ":Task", "write a dotted path module:Class"),
    ("feedback.provider", "json:dumps", "is not a class with a judge(example, answer) method"),
    ("feedback.provider", "oracel", "'oracel' is not one of oracle, none"),
])
def test_a_dotted_path_that_does_not_fit_is_a_one_line_error(key, value, message, capsys):
    assert main(["check", f"{key}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fedspear: error: {key}") and message in err and "\n" not in err
    if ":" in value and value != ":Task":
        loader = load_task_class if key == "data.dataset" else load_feedback_class
        with pytest.raises(ConfigError, match=re.escape(message)):
            loader(value)


def test_check_accepts_the_example(example_path, capsys):
    assert main(["check", f"data.dataset={TASK}", f"feedback.provider={SOURCE}"]) == 0
    out = capsys.readouterr().out
    assert f"dataset: {TASK}" in out and f"provider: {SOURCE}" in out


def test_the_example_task_runs_end_to_end_through_the_cli(example_path, tiny_qwen, tmp_path, capsys):
    import arithmetic_task

    arithmetic_task.DigitFeedback.calls = 0
    out = tmp_path / "runs" / "{dataset}"
    overrides = tiny_overrides(tiny_qwen, out, **{**FAST_EVAL, "data.dataset": TASK, "feedback.provider": SOURCE,
                                                  "gen.max_new_tokens_y0": 4, "gen.max_new_tokens_y1": 4})
    assert main(["run", *overrides]) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert run_dir == tmp_path / "runs" / "ArithmeticTask"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["eval"]["n"] == 4 and rows[0]["data"]["train"] == 400
    prompts = sum(r["aggregate"]["prompts"] for r in rows[1:])
    assert prompts == 2 * 2 * 6  # 2 rounds x 2 clients x fl.local_rollout_steps prompts, all judged
    # the clients' verdicts came from the user's source: every first answer once (distinct answers are cached per
    # (example, answer)), plus the one probe judged before the run starts
    assert arithmetic_task.DigitFeedback.calls >= prompts + 1


def test_the_python_api_runs_the_example(example_path, tiny_qwen, tmp_path):
    import fedspear

    cfg = fedspear.load_config(None, tiny_overrides(tiny_qwen, tmp_path / "api", **{
        **FAST_EVAL, "data.dataset": TASK, "fl.rounds": 1, "gen.max_new_tokens_y0": 4, "gen.max_new_tokens_y1": 4}))
    result = fedspear.run(cfg)
    assert result.run_dir == tmp_path / "api" and cfg.output_dir == str(tmp_path / "api")
    assert [r["round"] for r in result.rows] == [0, 1] and result.final_eval is result.rows[-1]["eval"]
    with pytest.raises(ConfigError, match="no such file and no such preset"):
        fedspear.load_config("no-such-preset")
