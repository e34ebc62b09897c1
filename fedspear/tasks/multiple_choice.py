"""Shared parts of the multiple-choice tasks: lettered prompts, letter verifiers and the oracle's hint.

The oracle hint for a wrong answer is the first ``feedback.mc_hint_words`` words of the correct option's
text (docs/extending.md, "A task"), with two guards against the reference's leaks (docs/deviations.md, section 4, item 9):
when those words are the whole option, fewer are given (at most half of its words, at least one; none for a
one-word option), and a word that names the gold letter (``\\bB\\b``, full-width ``Ｂ``, ``(b)``) is dropped,
so the feedback never names the gold letter or states the gold option, in any case or width. A word shaped like an
option marker of any letter (``C.``, ``(C)``, ``C)``) is dropped too: an option whose own text holds "C. ..." would
otherwise send the model to option C. If nothing is left, a generic hint is used.

Option texts are normalised when rows are loaded (:func:`option_text`: internal newlines and whitespace runs become
one space, so an option cannot show a fake option line), and the verifiers read a completion with the option texts
that hold such markers masked out (:func:`mask_option_texts`), so a quoted option text is never read as a letter.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from fedspear.tasks.base import LETTERS, Example, Task
from fedspear.tasks.loaders import MalformedRow

MC_ANSWER_FORMAT = "the option letter only"
FALLBACK_HINT = "Hint: reconsider the question."


# --------------------------------------------------------------------------- prompts


def option_text(value: Any) -> str:
    """An option's text as the prompt shows it: newlines and whitespace runs collapsed to one space, stripped
    ("" for None), so that a newline inside an option cannot show a fake option line."""
    return "" if value is None else " ".join(str(value).split())


_MARKER_WORD = re.compile(r"^(?:[(\[][A-Za-z][)\]]|[A-Z][.):]|[a-z]\))[,;.:]?$")
_MARKER_IN_TEXT = re.compile(r"(?<![\w'’])(?:[(\[][A-Za-z][)\]]|[A-Z][.):]|[a-z]\))(?!\w)")


def is_marker_word(word: str, letters: str = LETTERS) -> bool:
    """Whether ``word`` is shaped like an option marker of one of ``letters`` (any case): ``C.``, ``C)``, ``C:``,
    ``(C)``, ``[c]``, ``c)``."""
    if _MARKER_WORD.match(word) is None:
        return False
    return next(c for c in word if c.isalpha()).upper() in letters


def mask_option_texts(completion: str, choices: tuple[str, ...] | list[str]) -> str:
    """``completion`` with every occurrence of an option text that holds a marker-shaped letter (``"C. 12 volts"``)
    replaced by a space, longest first, so that the verifier cannot read the option's own "C." as the model's letter.

    Options without such a letter (``"oxygen"``, a bare ``"C"``) are left as they are.
    """
    texts = sorted({t for t in choices if _MARKER_IN_TEXT.search(t)}, key=len, reverse=True)
    for text in texts:
        completion = completion.replace(text, " ")
    return completion


def format_options(choices: tuple[str, ...] | list[str]) -> str:
    """Lettered option lines: ``"A. text\\nB. text"``."""
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(choices))


def build_mc_prompt(instruction: str, body: str, choices: tuple[str, ...] | list[str], cue: str = "Answer:") -> str:
    """An instruction, the question (or context), the lettered options, and the cue line (no trailing space)."""
    return f"{instruction}\n\n{body}\n{format_options(choices)}\n{cue}"


# --------------------------------------------------------------------------- verifiers


def _letter_pattern(num_options: int) -> re.Pattern[str]:
    """A capital option letter standing alone: not inside a word, number or contraction ("I'm")."""
    letters = LETTERS[: max(1, min(num_options, len(LETTERS)))]
    return re.compile(rf"(?<![\w'’])([{letters}])(?![\w'’])")


def first_option_letter(text: str, num_options: int) -> str | None:
    """The first standalone capital letter among the first ``num_options`` letters (" B", "(B)", "B) x").

    Args:
        text: the model's output.
        num_options: how many options the question has (letters A.. are valid).

    Returns:
        The letter, or None when there is none.
    """
    match = _letter_pattern(num_options).search(text or "")
    return match.group(1) if match else None


_MARKED = re.compile(r"^\s*[(\[]?([A-Z])\s*(?:[.):\]]|$)")


def option_by_text(text: str, choices: tuple[str, ...] | list[str], num_options: int) -> str | None:
    """The letter of the option whose whole text the answer opens with, when the answer opens with no letter
    marker ("B." / "(B)" / "B)" / a lone "B"); the longest such option, None when there is none or a tie.

    Instruct models often answer a multiple-choice prompt by writing the option itself ("A woodpecker taps a
    tree for insects"), where the first standalone capital is an article, not a letter. Matching is case- and
    whitespace-insensitive and ignores a trailing period.

    Args:
        text: the model's output.
        choices: the option texts in letter order.
        num_options: how many letters are valid.
    """
    if not choices or _MARKED.match(text or ""):
        return None
    said = " ".join((text or "").split()).lower()
    found = []
    for i, option in enumerate(list(choices)[:num_options]):
        body = " ".join(str(option).split()).lower().rstrip(".")
        if body and said.startswith(body) and (len(said) == len(body) or not said[len(body)].isalnum()):
            found.append((len(body), LETTERS[i]))
    found.sort(reverse=True)
    if not found or (len(found) > 1 and found[0][0] == found[1][0]):
        return None
    return found[0][1]  # the longest matching option ("water vapor" over "water")


def last_option_letter(text: str, num_options: int) -> str | None:
    """The last standalone valid option letter in ``text``, or None."""
    matches = _letter_pattern(num_options).findall(text or "")
    return matches[-1] if matches else None


def last_declared_letter(text: str, num_options: int) -> str | None:
    """The letter of the last "Answer: X" declaration (also "**Answer:** (X)"), else the last bare letter.

    Args:
        text: the model's output.
        num_options: how many options the question has.

    Returns:
        The declared letter, or None.
    """
    letters = LETTERS[: max(1, min(num_options, len(LETTERS)))]
    declared = re.findall(rf"answer\s*\**\s*[:：]\s*[*(\[\s]*([{letters}])(?![\w'’])", text or "", re.IGNORECASE)
    # The letter class is case-insensitive under IGNORECASE; only a capital letter counts as a declaration.
    declared = [letter for letter in declared if letter.isupper()]
    return declared[-1] if declared else last_option_letter(text, num_options)


# --------------------------------------------------------------------------- feedback


def has_token(text: str, token: str, ignore_case: bool = False) -> bool:
    """Whether ``token`` occurs in ``text`` as a standalone word (regex ``\\b`` boundaries)."""
    return re.search(rf"\b{re.escape(token)}\b", text, re.IGNORECASE if ignore_case else 0) is not None


def fold(text: str) -> str:
    """``text`` in a form that ignores case, width and spacing: NFKC, casefolded, whitespace runs as one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def names_letter(text: str, letter: str) -> bool:
    """Whether ``text`` refers to option ``letter``: the capital standing alone (``\\bB\\b``), also in full
    width (``Ｂ``, read through NFKC), or the lower-case letter as an option label (``(b)``, ``[b]``, ``b)``,
    ``option b``)."""
    flat = unicodedata.normalize("NFKC", text)
    low = re.escape(letter.lower())
    return has_token(flat, letter) or re.search(
        rf"[(\[]{low}[)\]]|(?<![\w'’]){low}\)|\b(?:option|choice|answer)\s*:?\s*{low}\b", flat, re.IGNORECASE) is not None


def states_option(text: str, option_text: str) -> bool:
    """Whether ``text`` contains the whole ``option_text`` as words, in any case or width (:func:`fold`)."""
    option = fold(option_text)
    return bool(option) and re.search(rf"(?<!\w){re.escape(option)}(?!\w)", fold(text)) is not None


def option_words_hint(option_text: str, max_words: int, gold_letter: str) -> tuple[str, bool] | None:
    """The first words of the correct option, never the whole option (in any case or width) nor the gold letter.

    Args:
        option_text: the correct option's text.
        max_words: ``feedback.mc_hint_words``.
        gold_letter: the correct option's letter; words naming it (:func:`names_letter`) are dropped.

    Returns:
        (hint words, whether they are a plain prefix of the option), or None when no word is left or the words
        would state the whole option (a one-word option).
    """
    words = option_text.split()
    count = min(max(1, max_words), len(words))
    if count >= len(words):  # the whole option would be given away: at most half of it, at least one word
        count = max(1, len(words) // 2)
    kept = [word for word in words[:count] if not (names_letter(word, gold_letter) or is_marker_word(word))]
    if not kept or states_option(" ".join(kept), option_text):
        return None
    return " ".join(kept), len(kept) == count


def hint_from_option(option_text: str, max_words: int, gold_letter: str) -> str | None:
    """The option-words hint as a sentence, or None when :func:`option_words_hint` finds nothing to say."""
    found = option_words_hint(option_text, max_words, gold_letter)
    return None if found is None else option_hint_sentence(*found)


def option_hint_sentence(words: str, is_prefix: bool) -> str:
    """The hint sentence for the words :func:`option_words_hint` returned."""
    if is_prefix:
        return f'Hint: the correct option begins with "{words} ...".'
    return f'Hint: the correct option contains the words "{words}".'


def compose_feedback(intro: str, hint: str, format_line: str, repeat_line: str) -> str:
    """Feedback lines in the fixed order: verdict, one hint, the required format, the request not to repeat."""
    return "\n".join(line for line in (intro, hint, format_line, repeat_line) if line)


def letter_verdict(given: str | None, gold: str) -> tuple[str, str]:
    """(verdict line, repeat request) naming the model's letter; the gold letter is never named.

    ``given == gold`` cannot happen for a wrong answer; it is treated like "no letter" so that a misuse
    of the oracle still cannot print the gold letter.
    """
    if given is None or given == gold:
        return ("Your answer is incorrect: no valid option letter was found in it.",
                "Do not repeat your previous answer.")
    return f"Your answer ({given}) is incorrect.", f"Do not choose option {given} again."


def cut(text: str, max_chars: int | None) -> str:
    """``text`` cut to ``max_chars`` characters (None = unchanged)."""
    return text if max_chars is None else text[: max(0, max_chars)]


class MultipleChoiceTask(Task):
    """A task answered by one option letter (ARC, HellaSwag): first-letter verifier, option-words hint.

    Subclasses set the Task class attributes, ``max_options`` (valid letters when the example is not
    known) and ``hint_nudge`` (the sentence added after the hint), and implement ``load``.
    """

    kind = "mc"
    answer_format = MC_ANSWER_FORMAT
    max_options: int = 4
    hint_nudge: str = ""
    generic_hint: str = "Hint: compare every option with the question and rule out the ones that cannot be right."
    # An answer that opens with an option's whole text is that option (instruct models write "A woodpecker..." for
    # option B); off for tasks whose answers are reasoning that ends in a declared letter (MATH-MCQA).
    matches_option_text: bool = True

    def extract(self, completion: str, num_options: int | None = None,
                choices: tuple[str, ...] | list[str] = ()) -> str | None:
        """The option the completion declares (valid letters: ``num_options`` or ``max_options``).

        With the example's ``choices`` known, an answer that opens with an option's whole text and no letter
        marker (an instruct model's "A woodpecker taps a tree for insects") is that option, not the article "A"
        (:func:`option_by_text`); otherwise the first option letter.
        """
        num = num_options or len(choices) or self.max_options
        return option_by_text(completion, choices, num) or first_option_letter(completion, num)

    def extract_for(self, example: Example, completion: str) -> str | None:
        """The letter the completion gives for ``example``: the option whose whole text it opens with
        (:func:`option_by_text`), else the letter read with the example's marker-holding option texts masked out
        (:func:`mask_option_texts`)."""
        num = len(example.choices)
        by_text = option_by_text(completion, example.choices, num) if self.matches_option_text else None
        return by_text or self.extract(mask_option_texts(completion, example.choices), num)

    def is_correct(self, example: Example, completion: str) -> bool:
        return self.extract_for(example, completion) == example.answer

    def hint(self, example: Example, cfg: Any) -> str:
        """The single hint sentence (with the task's nudge) for a wrong answer to ``example``.

        The first candidate that neither names the gold letter nor states the gold option (any case or width)
        is used: option words + nudge, the generic hint + nudge, the generic hint, a bare request to reconsider.
        """
        gold_text = example.choices[LETTERS.index(example.answer)]
        words = hint_from_option(gold_text, cfg.feedback.mc_hint_words, example.answer)
        candidates = [f"{h} {self.hint_nudge}".strip() for h in (words, self.generic_hint) if h]
        for text in [*candidates, self.generic_hint, FALLBACK_HINT]:
            if not (names_letter(text, example.answer) or states_option(text, gold_text)):
                return text
        return FALLBACK_HINT

    def feedback(self, example: Example, completion: str, cfg: Any) -> str:
        """Verdict naming the model's letter, one hint, the required format, and a request not to repeat."""
        intro, repeat = letter_verdict(self.extract_for(example, completion), example.answer)
        return compose_feedback(intro, self.hint(example, cfg), f"Required format: {self.answer_format}.", repeat)

    def privileged_context(self, example: Example, max_chars: int | None = None) -> str:
        """The gold letter and option text (OPSD teacher), cut to ``max_chars`` (``distill.priv_max_chars``)."""
        gold_text = example.choices[LETTERS.index(example.answer)]
        return cut(f"Correct answer: {example.answer}. {gold_text}", max_chars)


def choices_and_answer(texts: list[Any], labels: list[Any], key: Any) -> tuple[tuple[str, ...], str]:
    """Map labelled options (labels "A".."E", "1".."4", ...) to letters by position and find the gold letter.

    Args:
        texts: option texts.
        labels: option labels in the same order.
        key: the gold label.

    Returns:
        (option texts, gold letter).

    Raises:
        MalformedRow: too few options, empty text, duplicate labels, or a key not among the labels.
    """
    if len(texts) != len(labels):
        raise MalformedRow("choice texts and labels differ in length")
    if len(texts) < 2:
        raise MalformedRow("fewer than 2 options")
    if len(texts) > len(LETTERS):
        raise MalformedRow("more options than letters")
    options = tuple(option_text(t) for t in texts)
    if not all(options):
        raise MalformedRow("empty option text")
    label_strs = [str(label).strip() for label in labels]
    if len(set(label_strs)) != len(label_strs):
        raise MalformedRow("duplicate option labels")
    key_str = "" if key is None else str(key).strip()
    if key_str not in label_strs:
        raise MalformedRow("answer key not among labels")
    return options, LETTERS[label_strs.index(key_str)]
