"""Which positions of a lose trace the unlikelihood term penalises (docs/algorithms.md, "SPEAR"; docs/deviations.md, section 3).

Protected text is matched as token-id *sequences* where it occurs in the sampled completion, never by banning
each of its sub-tokens everywhere: with a byte-level BPE "Answer:" may split into "Answer" and ":" (or "A",
"nswer", ":"), and banning those ids on their own would also exempt every later ":" or the option letter "A".

- The task's answer marker ("Answer:", also lower/upper case, after a space or a newline) is always protected.
- With ``spear.ul_skip_math_ops`` the authors' math-structure list is protected as well (:data:`MATH_PROTECTED`):
  operators, braces, punctuation and LaTeX commands and symbols.
- With ``spear.ul_answer_only`` the penalised span starts right after the *last* answer marker (the final
  answer); a completion with no marker is all answer (a multiple-choice reply " B" to a prompt ending "Answer:").
- Every id generation stops on (all EOS ids: :func:`fedspear.generation.eos_ids`) is excluded.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

# The authors' math-structure list for ``ul_skip_math_ops``: operators, braces and punctuation, and LaTeX
# commands and symbols (structure, never the digits or variables of an answer).
_OPERATORS = ("+", "-", "*", "/", "=", "^", "\\", "{", "}", "(", ")", "$", ",", ".", ";", "[", "]", "_", "%",
              "!", "<", ">", "|", "\\{", "\\}", "\\,", "\\;", "\\!", "\\$", "\\%")
_LATEX = ("frac", "dfrac", "tfrac", "sqrt", "cdot", "times", "div", "pm", "mp", "left", "right", "le", "leq", "ge",
          "geq", "ne", "neq", "lt", "gt", "approx", "equiv", "sim", "circ", "degree", "infty", "pi", "boxed",
          "text", "textbf", "mathrm", "mathbf", "displaystyle", "quad", "qquad", "ldots", "cdots", "dots",
          "angle", "triangle", "perp", "parallel", "in", "notin", "subset", "cup", "cap", "emptyset", "mid",
          "log", "ln", "sin", "cos", "tan", "cot", "sec", "csc", "binom", "choose", "overline", "hat", "vec",
          "lfloor", "rfloor", "lceil", "rceil", "langle", "rangle", "sum", "prod", "int", "lim", "to")
_GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota",
          "kappa", "lambda", "mu", "nu", "xi", "omicron", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi",
          "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega")
MATH_PROTECTED: tuple[str, ...] = _OPERATORS + tuple("\\" + name for name in _LATEX + _GREEK)


def marker_texts(marker: str) -> list[str]:
    """Spellings of the answer marker to protect: as given, lower and upper case, each bare / after " " / "\\n"."""
    texts = []
    for form in dict.fromkeys((marker, marker.lower(), marker.upper(), marker.capitalize())):
        texts += [form, " " + form, "\n" + form]
    return texts


def token_sequences(tokenizer: Any, texts: Iterable[str]) -> set[tuple[int, ...]]:
    """The token ids of each text alone and after a space (``add_special_tokens=False``), as tuples.

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: the protected texts.

    Returns:
        The non-empty id sequences.
    """
    out: set[tuple[int, ...]] = set()
    for text in texts:
        for variant in (text, " " + text.lstrip(" ")):
            ids = tuple(tokenizer(variant, add_special_tokens=False)["input_ids"])
            if ids:
                out.add(ids)
    return out


def find_sequences(ids: Sequence[int], sequences: Collection[Sequence[int]]) -> list[tuple[int, int]]:
    """Half-open spans of the occurrences of ``sequences`` in ``ids``, left to right, longest match first.

    At each position the longest sequence that matches there is taken and the scan resumes after it, so the
    spans never overlap (``[\\\\, left]`` wins over ``[\\\\]`` at the same position).

    Args:
        ids: token ids ``[n]``.
        sequences: id sequences to find (empty ones are ignored).

    Returns:
        ``[(start, end), ...]`` in increasing order.
    """
    by_first: dict[int, list[tuple[int, ...]]] = {}
    for seq in {tuple(s) for s in sequences if len(s)}:
        by_first.setdefault(seq[0], []).append(seq)
    for seqs in by_first.values():
        seqs.sort(key=len, reverse=True)
    spans, pos, n = [], 0, len(ids)
    while pos < n:
        match = next((s for s in by_first.get(ids[pos], ()) if tuple(ids[pos : pos + len(s)]) == s), None)
        if match is None:
            pos += 1
        else:
            spans.append((pos, pos + len(match)))
            pos += len(match)
    return spans


def final_answer_span(ids: Sequence[int], markers: Collection[Sequence[int]]) -> tuple[int, int] | None:
    """``(end of the last answer marker, len(ids))``: the final answer; None when no marker occurs.

    Args:
        ids: completion ids ``[n]``.
        markers: the answer marker's id sequences (:func:`token_sequences` of :func:`marker_texts`).
    """
    spans = find_sequences(ids, markers)
    return (spans[-1][1], len(ids)) if spans else None


def unlikelihood_mask(
    completion_ids: list[int],
    protected: Collection[int | Sequence[int]],
    tail_tokens: int = 0,
    answer_span: tuple[int, int] | None = None,
    eos_id: int | Collection[int] | None = None,
) -> list[bool]:
    """Which completion positions of a lose trace the unlikelihood term penalises (docs/deviations.md, section 3).

    Every completion token except stop ids and protected positions, then restricted to ``answer_span`` when given
    (``ul_answer_only``) and to the last ``tail_tokens`` positions when > 0; when both are given the restrictions
    intersect. The tail is counted back from the end of the content (before trailing stop ids), by position: a
    protected token inside the tail takes a place in it but is not penalised.

    Args:
        completion_ids: the sampled completion ids (ending with a stop id where generation emitted one).
        protected: what is never penalised: an int protects that id everywhere; a sequence of ids protects its
            positions where the whole sequence occurs (:func:`find_sequences`).
        tail_tokens: keep only the last N content positions (0 = all).
        answer_span: ``(start, end)`` token positions, half-open, of the final answer (:func:`final_answer_span`).
        eos_id: the EOS id, or every id generation stops on; None when nothing is excluded as EOS.

    Returns:
        One bool per completion position.

    Raises:
        ValueError: ``answer_span`` is not within the completion.
    """
    n = len(completion_ids)
    eos = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    single = {p for p in protected if isinstance(p, int)}
    keep = [tok not in eos and tok not in single for tok in completion_ids]
    for start, end in find_sequences(completion_ids, [p for p in protected if not isinstance(p, int)]):
        keep[start:end] = [False] * (end - start)
    if answer_span is not None:
        start, end = answer_span
        if not 0 <= start <= end <= n:
            raise ValueError(f"answer_span {answer_span} is not within a completion of {n} tokens")
        keep = [k and start <= i < end for i, k in enumerate(keep)]
    if tail_tokens > 0:
        content = n
        while content > 0 and completion_ids[content - 1] in eos:
            content -= 1
        first = max(0, content - tail_tokens)
        keep = [k and i >= first for i, k in enumerate(keep)]
    return keep
