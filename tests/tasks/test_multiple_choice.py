"""Letter verifiers, the option-words hint and the shared MC feedback (fedspear/tasks/multiple_choice.py)."""

from __future__ import annotations

import pytest

from fedspear.tasks.loaders import MalformedRow
from fedspear.tasks.multiple_choice import (
    build_mc_prompt,
    choices_and_answer,
    first_option_letter,
    is_marker_word,
    last_declared_letter,
    letter_verdict,
    mask_option_texts,
    option_text,
    option_words_hint,
)


def test_build_mc_prompt_letters_the_options_and_ends_with_the_cue():
    prompt = build_mc_prompt("Pick one.", "Question: 1+1?", ["1", "2", "3"])
    assert prompt == "Pick one.\n\nQuestion: 1+1?\nA. 1\nB. 2\nC. 3\nAnswer:"


@pytest.mark.parametrize(
    ("text", "n", "letter"),
    [(" B", 4, "B"), ("B.", 4, "B"), ("(C) because", 4, "C"), ("D) the sun", 4, "D"), ("answer: A", 4, "A"),
     (" E", 5, "E"), (" E", 4, None), ("I think C", 4, "C"), ("I'm sure: B", 4, "B"), ("Both B and C", 4, "B"),
     (" b", 4, None), ("", 4, None), ("!!??", 4, None), ("ABCD", 4, None), ("C3PO says D", 4, "D")],
)
def test_first_option_letter(text, n, letter):
    assert first_option_letter(text, n) == letter


@pytest.mark.parametrize(
    ("text", "letter"),
    [("x = 2, so Answer: C", "C"), ("Answer: B\nWait, recheck.\nAnswer: D", "D"), ("**Answer:** (A)", "A"),
     ("answer: [B]", "B"), ("Option B beats C", "C"), ("Answer: Both", None), ("", None), ("no letters", None),
     ("Answer: E", None), ("Answer: b then B", "B")],
)
def test_last_declared_letter(text, letter):
    assert last_declared_letter(text, 4) == letter


@pytest.mark.parametrize(
    ("option", "max_words", "gold", "expected"),
    [("the heat from the sun", 3, "B", ("the heat from", True)),
     ("dry palms", 3, "A", ("dry", True)),  # 3 words would be the whole option: half of 2 = 1 word
     ("a b c d", 4, "A", ("a b", True)),
     ("Mars", 3, "A", None),  # a one-word option would be stated whole (issue 11: formerly ("Mars", True))
     ("Mars rover", 3, "A", ("Mars", True)),  # at least one word
     ("ＡＢ Ａ blocks of wood", 3, "A", ("ＡＢ blocks", False)),  # a full-width letter names the option too (NFKC)
     ("(a) both of these", 3, "A", ("both of", False)),  # a lower-case option label
     ("A", 3, "A", None),  # the option text is the gold letter
     ("vitamin A supplements daily", 3, "A", ("vitamin supplements", False)),
     ("B-12 vitamins only now", 3, "B", ("vitamins only", False)),
     ("B's lever arm is longer", 3, "B", ("lever arm", False)),
     ("A ball rolls downhill", 3, "B", ("A ball rolls", True))],  # "A" is only banned when A is gold
)
def test_option_words_hint(option, max_words, gold, expected):
    assert option_words_hint(option, max_words, gold) == expected


def test_letter_verdict_names_the_wrong_letter_never_the_gold_one():
    assert letter_verdict("C", "A") == ("Your answer (C) is incorrect.", "Do not choose option C again.")
    assert "A" not in letter_verdict("A", "A")[0].split()
    assert letter_verdict(None, "A")[0] == "Your answer is incorrect: no valid option letter was found in it."


def test_choices_and_answer_maps_labels_by_position():
    assert choices_and_answer(["x", "y", "z"], ["1", "2", "3"], "3") == (("x", "y", "z"), "C")
    assert choices_and_answer(["x", "y"], ["A", "B"], "A") == (("x", "y"), "A")
    cases = [(["x", "y"], ["A", "B"], "C", "answer key not among labels"),
             (["x", " "], ["A", "B"], "A", "empty option text"),
             (["x", "y"], ["A", "A"], "A", "duplicate option labels"),
             (["x"], ["A"], "A", "fewer than 2 options"),
             (["x", "y"], ["A"], "A", "choice texts and labels differ in length")]
    for texts, labels, key, reason in cases:
        with pytest.raises(MalformedRow, match=reason):
            choices_and_answer(texts, labels, key)


def test_option_text_is_one_line():
    assert option_text("  copper\n\nD. glass \t rod ") == "copper D. glass rod"
    assert option_text(None) == "" and option_text(12) == "12"


@pytest.mark.parametrize(
    ("word", "letters", "marker"),
    [("C.", "ABCD", True), ("(B)", "ABCD", True), ("[c]", "ABCD", True), ("d)", "ABCD", True), ("A:", "ABCD", True),
     ("C.,", "ABCD", True), ("E.", "ABCD", False), ("A", "ABCD", False), ("I", "ABCD", False), ("cat.", "ABCD", False),
     ("f(x)", "ABCD", False), ("e.g.", "ABCD", False)],
)
def test_is_marker_word(word, letters, marker):
    assert is_marker_word(word, letters) is marker


def test_mask_option_texts_masks_only_texts_that_hold_a_marker():
    choices = ("C. twelve volts", "oxygen", "C", "Vitamin (B) complex")
    assert mask_option_texts("A. C. twelve volts", choices).split() == ["A."]
    assert mask_option_texts("C", choices) == "C"  # a bare letter option is no marker text
    assert mask_option_texts("D. Vitamin (B) complex", choices).split() == ["D."]
    assert mask_option_texts("B oxygen", choices) == "B oxygen"
