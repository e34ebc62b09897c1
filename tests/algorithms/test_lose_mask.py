"""The unlikelihood mask (docs/deviations.md, section 3): rules on plain ids, then hand-read masks with a real byte-level BPE.

The BPE is the tests' tiny tokenizer (tests/conftest.py). Its pieces, read off once and used below:
``" Answer: B because water: light"`` -> ``ĠAnswer : ĠB Ġb ec aus e Ġwater : Ġlight`` and ``"Answer:"`` ->
``A nswer :``: the marker's first piece is the option letter "A" itself.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import build_tokenizer

from fedspear.algorithms.base import Trace
from fedspear.algorithms.common import make_batch, right_align
from fedspear.algorithms.lose_mask import (
    MATH_PROTECTED,
    final_answer_span,
    find_sequences,
    marker_texts,
    token_sequences,
    unlikelihood_mask,
)
from fedspear.algorithms.spear import Spear
from fedspear.config import Config


def test_unlikelihood_mask_rules():
    eos, marker = 2, 7
    ids = [5, 7, 9, 11, 13, 2]
    assert unlikelihood_mask(ids, {marker}, eos_id=eos) == [True, False, True, True, True, False]
    # last 2 content positions (11, 13); EOS is not part of the tail
    assert unlikelihood_mask(ids, {marker}, tail_tokens=2, eos_id=eos) == [False, False, False, True, True, False]
    # the tail is positional: the protected token inside a 4-token tail takes a place but is not penalised
    assert unlikelihood_mask(ids, {marker}, tail_tokens=4, eos_id=eos) == [False, False, True, True, True, False]
    # answer span [1, 4) holds 7 (protected), 9, 11
    assert unlikelihood_mask(ids, {marker}, answer_span=(1, 4), eos_id=eos) == [False, False, True, True, False, False]
    # both restrictions intersect: span [1, 4) and tail {11, 13} -> only 11
    assert unlikelihood_mask(ids, {marker}, tail_tokens=2, answer_span=(1, 4), eos_id=eos) == [
        False, False, False, True, False, False]
    # no EOS emitted (length cut): the tail counts from the last token; several stop ids
    assert unlikelihood_mask([5, 9, 11], set(), tail_tokens=1, eos_id=eos) == [False, False, True]
    assert unlikelihood_mask([5, 3, 2], set(), eos_id=[2, 3]) == [True, False, False]
    assert unlikelihood_mask([], {marker}, tail_tokens=3, eos_id=eos) == []
    with pytest.raises(ValueError):
        unlikelihood_mask(ids, set(), answer_span=(4, 9), eos_id=eos)


def test_sequences_are_protected_only_where_they_occur():
    # (7, 8) protects 7 only when 8 follows; the longest match wins at a position; spans never overlap
    assert find_sequences([7, 8, 7, 9, 7, 8, 8], [(7, 8), (7, 8, 8), (9,)]) == [(0, 2), (3, 4), (4, 7)]
    assert unlikelihood_mask([7, 9, 7, 8, 5], {(7, 8)}) == [True, True, False, False, True]
    assert final_answer_span([7, 8, 1, 7, 8, 2, 3], [(7, 8)]) == (5, 7)
    assert final_answer_span([1, 2], [(7, 8)]) is None


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("bpe"), bos=False)


def _rig(tok, eos=(0,), max_seq_len=512, **spear):
    cfg = Config()
    cfg.model.max_seq_len = max_seq_len
    for key, value in spear.items():
        setattr(cfg.spear, key, value)
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=list(eos)))
    return SimpleNamespace(cfg=cfg, tokenizer=tok, model=model, task=SimpleNamespace(answer_marker="Answer:"))


def lose_masks(policy, losses):
    """SPEAR's lose masks for ``policy``'s settings (the algorithm object built from its config)."""
    return Spear.from_config(policy.cfg, policy.task).lose_masks(policy, losses)


def _penalised(tok, text, eos_suffix=(), **spear):
    """The pieces of ``text`` (plus raw ids ``eos_suffix``) that lose_masks penalises."""
    ids = tok(text, add_special_tokens=False)["input_ids"] + list(eos_suffix)
    policy = _rig(tok, eos=(0, 1), **spear)
    (mask,) = lose_masks(policy, [Trace([5], ids)])
    assert len(mask) == len(ids)
    return [piece for piece, m in zip(tok.convert_ids_to_tokens(ids), mask) if m]


def test_answer_only_starts_after_the_final_answer_marker(tok):
    text = " Answer: B because water: light"
    assert tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"]) == [
        "ĠAnswer", ":", "ĠB", "Ġb", "ec", "aus", "e", "Ġwater", ":", "Ġlight"]
    # before: the span began after the last protected piece (the second ":"), so only " light" was penalised
    assert _penalised(tok, text, ul_answer_only=True) == ["ĠB", "Ġb", "ec", "aus", "e", "Ġwater", ":", "Ġlight"]
    # the last of several markers starts the span
    assert _penalised(tok, "Answer: C\nAnswer: B", ul_answer_only=True) == ["ĠB"]
    # no marker: the whole reply is the answer (a multiple-choice " B" after a prompt ending "Answer:")
    assert _penalised(tok, " B", ul_answer_only=True) == ["ĠB"]


def test_marker_pieces_are_not_banned_everywhere(tok):
    # "Answer:" is A + nswer + ":"; before, "A" and ":" were never penalised anywhere
    assert _penalised(tok, "A") == ["A"]
    # the newline before "Answer:" belongs to the protected "\nAnswer:" variant
    assert _penalised(tok, "A:\nAnswer: A") == ["A", ":", "ĠA"]
    assert _penalised(tok, "A:\nanswer: A", ul_answer_only=True) == ["ĠA"]


def test_every_stop_id_is_excluded(tok):
    # ids 0 (<|endoftext|>) and 1 (<s>) are both stop ids of the generation config
    assert _penalised(tok, " B", eos_suffix=(1,)) == ["ĠB"]
    assert _penalised(tok, " B", eos_suffix=(0,), ul_tail_tokens=1) == ["ĠB"]
    assert _penalised(tok, " B", eos_suffix=(1,), ul_tail_tokens=1) == ["ĠB"]


def test_math_ops_protect_the_authors_list(tok):
    text = "x = \\left(\\frac{1}{2}\\right) \\le \\pi, so Answer: (C)"
    # penalised: the answer's content (x, 1, 2, " so", C); operators, braces, punctuation, LaTeX commands not
    assert _penalised(tok, text, ul_skip_math_ops=True) == ["x", "1", "2", "Ġs", "o", "C"]
    # before, the answer span started after the final ")", which is protected: nothing was penalised
    assert _penalised(tok, text, ul_skip_math_ops=True, ul_answer_only=True) == ["C"]
    # Greek letters and the listed punctuation
    assert _penalised(tok, "\\alpha; [y]_% ! < > | \\Omega", ul_skip_math_ops=True) == ["y"]
    assert {"\\left", "\\right", "\\le", "\\ge", "\\pi", "\\alpha", ",", ".", ";", "[", "]", "_", "%", "!", "<",
            ">", "|"} <= set(MATH_PROTECTED)
    # without the option, "\\" and "left" are ordinary pieces
    assert "\\" in _penalised(tok, "\\left(", ul_skip_math_ops=False)


def test_mask_stays_aligned_with_a_truncated_completion(tok):
    ids = tok(" Answer: B because water: light", add_special_tokens=False)["input_ids"]
    # max_seq_len 4 keeps the first 3 completion pieces: ĠAnswer : ĠB (make_batch's cut)
    policy = _rig(tok, max_seq_len=4, ul_answer_only=True)
    (mask,) = lose_masks(policy, [Trace([5, 6], ids)])
    assert mask == [0.0, 0.0, 1.0]
    batch = make_batch([Trace([5, 6], ids)], pad_id=0, max_len=4, device=torch.device("cpu"))
    assert batch.targets_BL.tolist() == [ids[:3]]
    aligned = right_align([mask], batch.mask_BL.shape[1], torch.device("cpu"))
    # right-aligning the uncut 10-long mask would put its last 3 entries (Ġwater : Ġlight, all 1) on "ĠAnswer",
    # ":" and "ĠB": the marker would be penalised
    assert aligned.tolist() == [[0.0, 0.0, 1.0]]


def test_marker_variants_tokenize(tok):
    seqs = token_sequences(tok, marker_texts("Answer:"))
    assert tuple(tok("Answer:", add_special_tokens=False)["input_ids"]) in seqs
    assert tuple(tok(" answer:", add_special_tokens=False)["input_ids"]) in seqs
