"""A tiny arithmetic task and a rule-based feedback source, loaded by fedspear from outside the package.

With this folder on ``sys.path`` (``PYTHONPATH=examples/arithmetic``)::

    fedspear run data.dataset=arithmetic_task:ArithmeticTask model.model_name=Qwen/Qwen2.5-0.5B-Instruct
    fedspear run data.dataset=arithmetic_task:ArithmeticTask feedback.provider=arithmetic_task:DigitFeedback ...

:class:`ArithmeticTask` is a complete task (data, prompt, verifier, oracle hint); :class:`DigitFeedback` is a
feedback source that replaces the task's oracle with another rule (which digit is wrong). Neither hint ever
states the sum. See ``docs/extending.md`` for what each method must do.
"""

from __future__ import annotations

import random
import re
from typing import Any

from fedspear.feedback import Feedback
from fedspear.tasks.base import Example, LoadStats, Task, TaskData

_NUMBER = re.compile(r"-?\d+")


class ArithmeticTask(Task):
    """Two-number addition, ``What is 27 + 15?``; the answer is the sum, written as a number."""

    name = "arithmetic"
    kind = "reasoning"  # answered in free text and evaluated generatively (no option letters)
    answer_marker = "Answer:"
    answer_format = "the sum as a number only"
    num_train = 400
    num_eval = 60

    def load(self, cfg: Any) -> TaskData:
        """Generated problems (``cfg.data.seed`` picks them); eval is capped at ``data.max_eval_examples``."""
        rng = random.Random(cfg.data.seed)
        examples = [self._example(i, rng.randint(0, 49), rng.randint(0, 49))
                    for i in range(self.num_train + self.num_eval)]
        train, held_out = examples[: self.num_train], examples[self.num_train:]
        stats = LoadStats(read=len(examples), kept=len(examples))
        return TaskData(train=train, eval=held_out[: cfg.data.max_eval_examples], stats=stats)

    @staticmethod
    def _example(i: int, a: int, b: int) -> Example:
        carry = (a % 10) + (b % 10) >= 10
        group = "carry" if carry else "no carry"
        return Example(id=f"add-{i}", prompt=f"Question: What is {a} + {b}?\nAnswer:", answer=str(a + b),
                       label=group, meta={"a": a, "b": b, "group": group})

    def extract(self, completion: str) -> str | None:
        """The first integer in the completion, or None."""
        match = _NUMBER.search(completion)
        return str(int(match.group())) if match else None

    def feedback(self, example: Example, completion: str, cfg: Any = None) -> str:
        """Too high / too low, and how to add; never the sum."""
        given = self.extract(completion)
        if given is None:
            return "Incorrect: your answer has no number. Hint: write the sum as a number."
        direction = "too high" if int(given) > int(example.answer) else "too low"
        return (f"Incorrect: {given} is {direction}. Hint: add the tens, then the ones, and carry a ten if the "
                "ones make ten or more.")

    def privileged_context(self, example: Example, max_chars: int | None = None) -> str:
        """The worked sum, for OPSD's teacher."""
        a, b = example.meta["a"], example.meta["b"]
        return f"{a} + {b} = {a + b}. Correct answer: {a + b}."


class DigitFeedback:
    """A feedback source (``fedspear.feedback.FeedbackSource``): the verdict, and which digit of the sum is wrong.

    Args:
        task: the run's task (its ``extract`` reads the answer).
        cfg: the run's Config (unused).
    """

    calls = 0  # how many answers this source judged (the example's test reads it)

    def __init__(self, task: Task, cfg: Any) -> None:
        self.task = task

    def judge(self, example: Example, answer: str) -> Feedback:
        DigitFeedback.calls += 1
        given = self.task.extract(answer)
        if given == example.answer:
            return Feedback(True)
        if given is None:
            return Feedback(False, "Write the sum as a number.")
        gold, got = example.answer.zfill(3), given.lstrip("-").zfill(3)[-3:]
        if gold[-1] != got[-1]:
            return Feedback(False, "The ones digit is wrong: add the ones again.")
        return Feedback(False, "The ones digit is right, the tens are wrong: did you carry?")
