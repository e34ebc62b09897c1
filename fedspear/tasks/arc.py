"""ARC-Challenge: grade-school science questions with 3 to 5 lettered options (docs/extending.md, "A task").

Rows come in two schemas, both accepted: the original AI2 JSONL (``question.stem`` and a
``question.choices`` list of ``{text, label}``) and the hub's ``ai2_arc`` schema (``question`` text and
``choices = {text: [...], label: [...]}``). Labels "1".."4" are mapped to letters by position.
"""

from __future__ import annotations

from typing import Any

from fedspear.tasks.base import Example, TaskData
from fedspear.tasks.loaders import MalformedRow, load_task_data, parse_structured, text_field
from fedspear.tasks.multiple_choice import MultipleChoiceTask, build_mc_prompt, choices_and_answer

INSTRUCTION = "Answer the following science question with the letter of the correct option only."


def _options(question: Any, row: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """(texts, labels) from either schema."""
    raw = question.get("choices") if isinstance(question, dict) else parse_structured(row.get("choices"))
    if isinstance(raw, dict):  # hub schema: {"text": [...], "label": [...]}
        texts, labels = parse_structured(raw.get("text")), parse_structured(raw.get("label"))
        if isinstance(texts, list) and isinstance(labels, list):
            return texts, labels
    elif isinstance(raw, list) and all(isinstance(c, dict) for c in raw):  # AI2 schema: [{"text", "label"}]
        return [c.get("text") for c in raw], [c.get("label") for c in raw]
    raise MalformedRow("missing choices")


def arc_row_to_example(row: dict[str, Any], row_id: str) -> Example:
    """Convert one ARC row (AI2 or hub schema) into an Example; raises MalformedRow when unusable."""
    question = parse_structured(row.get("question"))
    if isinstance(question, dict):
        stem = text_field(question, "stem")
    else:
        stem = text_field(row, "question")
    texts, labels = _options(question, row)
    choices, answer = choices_and_answer(texts, labels, row.get("answerKey"))
    example_id = str(row.get("id") or "").strip() or row_id
    prompt = build_mc_prompt(INSTRUCTION, f"Question: {stem}", choices)
    return Example(id=example_id, prompt=prompt, answer=answer, label=answer, choices=choices)


class ArcChallengeTask(MultipleChoiceTask):
    """ARC-Challenge: answer with the option letter; eval on the test split by default."""

    name = "arc_challenge"
    hub_id = ("ai2_arc", "ARC-Challenge")
    max_options = 5
    hint_nudge = "Think about the scientific principle behind the question."

    def load(self, cfg: Any) -> TaskData:
        return load_task_data(cfg, self.hub_id, arc_row_to_example, default_eval=("test", "validation"))
