"""Prompt templates shared by every task: the revision prompt (SPEAR.md section 7).

The revision prompt has sections for the task, the previous answer (marked as not to be copied), the
feedback, and instructions; it ends with a cue for the corrected solution. The same builder serves
SPEAR, feedback-SFT, RLTF-SD, the served client and the built-in world's pretraining corpus, so a
model sees one format everywhere.
"""

from __future__ import annotations

REVISION_CUE = "Corrected solution:"


def build_revision_prompt(task_prompt: str, previous_answer: str, feedback: str, answer_format: str) -> str:
    """Build the prompt for one feedback-guided revision.

    Args:
        task_prompt: the original task prompt x0.
        previous_answer: the latest wrong answer (decoded text).
        feedback: the partial feedback on that answer.
        answer_format: how the final answer must be written, e.g. "the option letter only" or
            'a last line "Answer: yes" or "Answer: no"'.

    Returns:
        The revision prompt, ending with the cue for the corrected solution (no trailing space).
    """
    return (
        "### Task\n"
        f"{task_prompt.strip()}\n\n"
        "### Previous answer (incorrect; do not copy it)\n"
        f"{previous_answer.strip() or '(empty)'}\n\n"
        "### Feedback\n"
        f"{feedback.strip()}\n\n"
        "### Instructions\n"
        "Write the whole solution again as if it were your first attempt. Use the feedback, but do not "
        "mention it or the previous answer. No preamble. "
        f"End with the same final-answer format as the task: {answer_format}.\n\n"
        f"{REVISION_CUE}"
    )
