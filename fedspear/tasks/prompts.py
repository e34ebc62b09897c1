"""Prompt templates shared by every task: the revision prompt (docs/algorithms.md, notation; docs/deviations.md, section 5).

The revision prompt has sections for the task, the previous answer (marked as not to be copied), the
feedback, and instructions; it ends with a cue for the corrected solution. docs/deviations.md (section 5, ``gen.revision_template``) allows any order
of the sections, so two orders are offered (``gen.revision_template``):

- ``instructions_first`` (the default): instructions, task, previous answer, feedback, cue. The instruction block
  is the same in every revision prompt of a task, so the prompts of one generation call share a token prefix
  whose key/value cache :mod:`fedspear.generation` computes once for the whole call
  (``gen.prefix_cache``).
- ``authors``: task, previous answer, feedback, instructions, cue: the order of the authors' reference code.

The same builder serves SPEAR, feedback-SFT, RLTF-SD, the served client and the built-in world's pretraining
corpus, so a model sees one format everywhere (the shipped world base model is pretrained on the default).
"""

from __future__ import annotations

from fedspear.config_sections import REVISION_TEMPLATES  # the names live with the config's

REVISION_CUE = "Corrected solution:"
DEFAULT_REVISION_TEMPLATE = "instructions_first"


def revision_instructions(answer_format: str) -> str:
    """The constant instruction section of a revision prompt for a task whose answers use ``answer_format``."""
    return ("### Instructions\n"
            "Write the whole solution again as if it were your first attempt. Use the feedback, but do not "
            "mention it or the previous answer. No preamble. "
            f"End with the same final-answer format as the task: {answer_format}.")


def build_revision_prompt(task_prompt: str, previous_answer: str, feedback: str, answer_format: str,
                          template: str = DEFAULT_REVISION_TEMPLATE) -> str:
    """Build the prompt for one feedback-guided revision (docs/deviations.md, section 5).

    Args:
        task_prompt: the original task prompt x0.
        previous_answer: the latest wrong answer (decoded text).
        feedback: the partial feedback on that answer.
        answer_format: how the final answer must be written, e.g. "the option letter only" or
            'a last line "Answer: yes" or "Answer: no"'.
        template: section order, one of :data:`REVISION_TEMPLATES` (``gen.revision_template``).

    Returns:
        The revision prompt, ending with the cue for the corrected solution (no trailing space).

    Raises:
        ValueError: for an unknown ``template``.
    """
    sections = {
        "task": f"### Task\n{task_prompt.strip()}",
        "previous": f"### Previous answer (incorrect; do not copy it)\n{previous_answer.strip() or '(empty)'}",
        "feedback": f"### Feedback\n{feedback.strip()}",
        "instructions": revision_instructions(answer_format),
    }
    if template == "instructions_first":
        order = ("instructions", "task", "previous", "feedback")
    elif template == "authors":
        order = ("task", "previous", "feedback", "instructions")
    else:
        raise ValueError(f"gen.revision_template={template!r} is not a revision template; "
                         f"use one of {', '.join(REVISION_TEMPLATES)}")
    return "\n\n".join(sections[name] for name in order) + f"\n\n{REVISION_CUE}"
