"""HellaSwag: pick the most natural ending of a short passage among four (docs/extending.md, "A task").

Hub rows (``activity_label``, ``ctx`` or ``ctx_a``/``ctx_b``, ``endings``, ``label`` as a string) get the
usual clean-up of WikiHow markup (``[title]`` becomes a sentence break, other ``[tags]`` are removed);
the offline 6-line text file is already cleaned that way, and cleaning it again changes nothing.
"""

from __future__ import annotations

import re
from typing import Any

from fedspear.tasks.base import Example, TaskData
from fedspear.tasks.loaders import MalformedRow, load_task_data, parse_structured
from fedspear.tasks.multiple_choice import MultipleChoiceTask, build_mc_prompt, choices_and_answer

INSTRUCTION = (
    "Choose the ending that best continues the passage below. "
    "Answer with the letter of the correct option only."
)


def clean_text(text: str) -> str:
    """Strip WikiHow markup: " [title]" -> ". ", other "[tags]" removed, double spaces collapsed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return re.sub(r"  +", " ", text).strip()


def _context(row: dict[str, Any]) -> str:
    ctx = row.get("ctx")
    if ctx is None or not str(ctx).strip():
        ctx = f"{row.get('ctx_a') or ''} {row.get('ctx_b') or ''}"
    ctx = clean_text(str(ctx))
    if not ctx:
        raise MalformedRow("missing ctx")
    return ctx


def hellaswag_row_to_example(row: dict[str, Any], row_id: str) -> Example:
    """Convert one HellaSwag row (hub schema or the 6-line text record) into an Example."""
    ctx = _context(row)
    activity = clean_text(str(row.get("activity_label") or ""))
    endings = parse_structured(row.get("endings"))
    if not isinstance(endings, list):
        raise MalformedRow("missing endings")
    label = "" if row.get("label") is None else str(row["label"]).strip()
    if not label:
        raise MalformedRow("missing label")
    texts = [clean_text(str(e)) if e is not None else "" for e in endings]
    choices, answer = choices_and_answer(texts, [str(i) for i in range(len(texts))], label)
    body = f"{activity}: {ctx}" if activity else ctx
    example_id = str(row.get("ind") if row.get("ind") is not None else "").strip() or row_id
    prompt = build_mc_prompt(INSTRUCTION, body, choices)
    return Example(id=example_id, prompt=prompt, answer=answer, label=answer, choices=choices,
                   meta={"activity_label": activity})


class HellaSwagTask(MultipleChoiceTask):
    """HellaSwag: answer with the letter of the best ending; eval on the validation split by default."""

    name = "hellaswag"
    hub_id = ("hellaswag", None)
    max_options = 4
    hint_nudge = "Pick the ending that continues the scene most naturally."

    def load(self, cfg: Any) -> TaskData:
        return load_task_data(cfg, self.hub_id, hellaswag_row_to_example, default_eval=("validation", "test"))
