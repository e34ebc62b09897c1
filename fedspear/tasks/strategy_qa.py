"""StrategyQA: yes/no questions that need implicit multi-step reasoning (docs/extending.md, "A task").

Rows: ``qid``, ``question``, ``answer`` (a bool; "true"/"false"/"yes"/"no" text in CSV) and ``facts``
(a list of supporting sentences, or one text that is split into sentences). The official JSON files
and the hub's ``ChilleD/StrategyQA`` share these columns.

The oracle hint is the first half (at least one) of the supporting facts. A binary task leaks its
answer easily, so the feedback here is built to be identical for a gold "yes" and a gold "no":
it never names the model's word (see :meth:`StrategyQATask.feedback`), and facts that contain the
word yes or no are left out of the hint.
"""

from __future__ import annotations

import re
from typing import Any

from fedspear.tasks.base import Example, Task, TaskData
from fedspear.tasks.loaders import MalformedRow, load_task_data, parse_structured, text_field
from fedspear.tasks.multiple_choice import compose_feedback, cut, fold, has_token

INSTRUCTION = (
    "Answer the following yes/no question. Reason step by step, then finish with a final line "
    '"Answer: yes" or "Answer: no".'
)
ANSWER_FORMAT = 'a final line "Answer: yes" or "Answer: no"'
GENERIC_HINT = "Hint: split the question into the facts it depends on and check each of them."

_DECLARED = re.compile(r"answer\s*\**\s*[:：]\s*[*(\[\s]*(yes|no)\b", re.IGNORECASE)
_BARE = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


def extract_yes_no(text: str) -> str | None:
    """The last "Answer: yes/no" (any case), else the last bare yes/no, lower-cased; None if neither."""
    matches = _DECLARED.findall(text or "") or _BARE.findall(text or "")
    return matches[-1].lower() if matches else None


def _answer(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = "" if value is None else str(value).strip().lower()
    if text in _TRUE:
        return "yes"
    if text in _FALSE:
        return "no"
    raise MalformedRow("answer is not yes/no")


def _facts(value: Any) -> list[str]:
    """Supporting facts as a list of sentences (a single text is split after . ! or ?)."""
    value = parse_structured(value)
    if value is None:
        return []
    if isinstance(value, str):
        value = re.split(r"(?<=[.!?])\s+|\n+", value)
    if not isinstance(value, list):
        raise MalformedRow("facts are not a list")
    return [str(f).strip() for f in value if f is not None and str(f).strip()]


def strategy_row_to_example(row: dict[str, Any], row_id: str) -> Example:
    """Convert one StrategyQA row into an Example; raises MalformedRow when unusable."""
    question = text_field(row, "question")
    answer = _answer(row.get("answer"))
    facts = _facts(row.get("facts"))
    prompt = f"{INSTRUCTION}\n\nQuestion: {question}\nReasoning:"
    example_id = str(row.get("qid") or "").strip() or row_id
    return Example(id=example_id, prompt=prompt, answer=answer, label=answer, meta={"facts": facts})


def facts_hint(facts: list[str]) -> str | None:
    """The first half (at least one) of the facts, leaving out any that contains the word yes or no (any case or
    width: "YES", full-width "ｙｅｓ")."""
    clean = [f for f in facts if not (has_token(fold(f), "yes") or has_token(fold(f), "no"))]
    chosen = clean[: max(1, len(facts) // 2)]
    if not chosen:
        return None
    return "Hint: facts that matter here:\n" + "\n".join(f"- {f}" for f in chosen)


class StrategyQATask(Task):
    """StrategyQA: reason step by step, end with "Answer: yes" or "Answer: no"."""

    name = "strategy_qa"
    kind = "reasoning"
    answer_format = ANSWER_FORMAT
    hub_id = ("ChilleD/StrategyQA", None)

    def load(self, cfg: Any) -> TaskData:
        return load_task_data(cfg, self.hub_id, strategy_row_to_example, default_eval=("test", "validation"))

    def extract(self, completion: str) -> str | None:
        return extract_yes_no(completion)

    def feedback(self, example: Example, completion: str, cfg: Any) -> str:
        """Verdict, the facts hint, the required format, and a request to rethink rather than repeat.

        Unlike the multiple-choice tasks, the verdict does not name the model's word: with two possible
        answers, "your answer no is wrong" states the gold answer, and so does asking not to repeat a
        named word (the reference's leak). The text therefore depends only on the facts and on whether
        a final answer was found, never on the gold answer.
        """
        if extract_yes_no(completion) is None:
            intro = "Your answer is incorrect: it does not end with a final answer in the required format."
        else:
            intro = "Your answer is incorrect."
        hint = facts_hint(list(example.meta.get("facts", []))) or GENERIC_HINT
        repeat = "Rethink the question from the start instead of repeating your previous reasoning."
        return compose_feedback(intro, hint, f"Required format: {self.answer_format}.", repeat)

    def privileged_context(self, example: Example, max_chars: int | None = None) -> str:
        """The gold yes/no and the supporting facts (OPSD teacher), cut to ``max_chars``."""
        facts = list(example.meta.get("facts", []))
        text = f"Correct answer: {example.answer}"
        if facts:
            text += "\n\nSupporting facts:\n" + "\n".join(f"- {f}" for f in facts)
        return cut(text, max_chars)
