"""The built-in offline world: invented creatures, their facts, and questions with verifiable answers.

The world is generated from :data:`WORLD_SEED` (never from ``cfg.data.seed``), so it is the same world the
shipped base model (``fedspear/assets/world-base``, built by :mod:`fedspear.world_base`) was pretrained on.

- **Entities and facts.** :data:`NUM_REGIONS` regions hold :data:`ENTITIES_PER_REGION` invented creatures
  each (invented names such as ``koustrul``); every creature has one value for each attribute of :data:`ATTRIBUTES`
  (color, home, food; six real values and one decoy value each). That is one *fact* per (creature, attribute).
- **Error regimes** (``Fact.group``, one mechanism each). The base model was pretrained on a *belief* for
  every fact; the task's gold answers are always the truth. Per attribute:
  *known* (6 facts): belief = truth. *misconception* (6): a consistent wrong value that is the truth of
  other facts (pushing it down can hurt them). *uncertain* (6): pretrained on the truth and on one wrong
  value half each, so sampled answers disagree and group-relative methods get a signal. *decoy* (6): the
  belief is the attribute's decoy value (:data:`DECOYS`), the truth of no fact, so pushing it down cannot
  hurt another fact. Each real value is the truth of one known fact, one misconception (and the belief
  of another), one uncertain and one decoy fact: with no favoured value, learning from corrected answers
  must learn facts rather than a bias toward one value. ``cfg.data.groups`` keeps only some groups (the
  default preset keeps known and misconception, the balance the world had before the other two).
- **Two parts.** ``kind="mc"``: a question listing the attribute's six values as lettered options (always in
  the same order, so an option's letter is fixed: a tiny model need not learn in-context lookup, which it
  does not learn in a CPU budget), answered by a letter (`` C``).
  ``kind="reasoning"``: the same question without options, answered by one short step then a
  declaration (`` the koustrul is green. Answer: green``), so that tail-token unlikelihood and the
  protected ``Answer:`` marker matter. Every prompt ends with the ``Answer:`` cue.
- **Splits.** Per fact, training holds two multiple-choice questions (question wordings 0 and 1) and one
  reasoning question (wording 0); evaluation holds one of each part in wording 2, which is never trained
  on. So evaluation asks about the same facts in other words.
- **Labels.** ``Example.label`` is the creature's region: a Dirichlet partition over it gives each client
  the creatures of a few regions, whose users never ask about the others'. ``meta["group"]`` is
  the fact's group (evaluation reports accuracy per group), ``meta["kind"]`` the part.
- **Oracle feedback** (only for wrong answers) names the given answer, gives one clue to the true
  value (``Hint: think of grass.`` for green), never the gold letter nor the gold word, then the format
  and a request not to repeat. Clues are unique to one value and never a value word themselves.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from typing import Any

from fedspear.tasks.base import LETTERS, DataError, Example, LoadStats, Task, TaskData
from fedspear.tasks.loaders import cap_examples
from fedspear.tasks.prompts import build_revision_prompt

WORLD_SEED = 20260513
NUM_REGIONS = 6
ENTITIES_PER_REGION = 4
GROUPS = ("known", "misconception", "uncertain", "decoy")
REGIONS = ("north", "south", "east", "west", "isles", "highlands")

# attribute -> value -> clue words (a clue belongs to exactly one value and is never a value word). The last
# value of each attribute is its *decoy* (:data:`DECOYS`): the truth of no fact, the belief of the decoy group.
ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "color": {
        "red": ("fire", "blood", "cherry"),
        "green": ("grass", "frog", "emerald"),
        "blue": ("sky", "sapphire", "jeans"),
        "yellow": ("sun", "lemon", "banana"),
        "white": ("snow", "milk", "cloud"),
        "black": ("night", "coal", "crow"),
        "purple": ("plum", "violet", "lavender"),
    },
    "home": {
        "sea": ("waves", "salt", "tide"),
        "desert": ("sand", "cactus", "dunes"),
        "forest": ("trees", "oak", "pine"),
        "mountain": ("peak", "cliff", "summit"),
        "river": ("stream", "current", "ford"),
        "cave": ("darkness", "bats", "tunnel"),
        "swamp": ("marsh", "bog", "reeds"),
    },
    "food": {
        "nuts": ("acorn", "shell", "squirrel"),
        "fish": ("fins", "gills", "trout"),
        "honey": ("bees", "hive", "nectar"),
        "seeds": ("grain", "sowing", "sunflower"),
        "berries": ("bramble", "jam", "bush"),
        "insects": ("beetles", "ants", "crickets"),
        "roots": ("soil", "carrot", "tuber"),
    },
}
DECOYS: dict[str, str] = {attribute: list(values)[-1] for attribute, values in ATTRIBUTES.items()}
# Three wordings per attribute: 0 and 1 are trained, 2 is held out for evaluation.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": ("What color is the {name}?", "Which color does the {name} have?", "The {name} has which color?"),
    "home": ("Where does the {name} live?", "What is the home of the {name}?", "In which place does the {name} live?"),
    "food": ("What does the {name} eat?", "What is the food of the {name}?", "Which food does the {name} eat?"),
}
STEPS: dict[str, str] = {
    "color": "the {name} is {value}.",
    "home": "the {name} lives in the {value}.",
    "food": "the {name} eats {value}.",
}
MC_INSTRUCTION = "Reply with the option letter only."
REASONING_INSTRUCTION = "Give one short step, then Answer: and one word."
ANSWER_FORMAT = 'the option letter only when there are options, else one short step then "Answer: word"'
EVAL_WORDING = 2

_SYLLABLES_START = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
                    "br", "dr", "gl", "kr", "pl", "tr", "sn", "sk", "qu", "th", "wh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "l", "k", "x", "s", "m", "th")
_AVOID = ("sex", "fuk", "fuc", "dik", "tit", "nig", "kill", "poo")  # no invented name contains these
_DECLARATION = re.compile(r"Answer\s*:\s*([A-Za-z]+)")
_WORD = re.compile(r"[A-Za-z]+")
_OPTION_LINE = re.compile(r"^[A-Z]\) ", re.MULTILINE)  # a lettered option line of a multiple-choice prompt


# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class Fact:
    """One (creature, attribute) fact: the truth, what the base model was pretrained to believe, its group.

    ``group`` is one of :data:`GROUPS`: "known" (belief = truth), "misconception" (belief = the truth of
    other facts), "uncertain" (pretrained on the truth and on ``belief``, half each) or "decoy" (belief =
    the attribute's decoy value, the truth of no fact).
    """

    entity: str
    region: str
    attribute: str
    truth: str
    belief: str
    group: str


def invent_names(count: int, rng: random.Random, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``count`` distinct invented creature names of two syllables (``koustrul``), none in ``exclude``.

    Args:
        count: how many names.
        rng: the random source (the same state gives the same names).
        exclude: names (or any words) that must not be produced.

    Returns:
        The names, in generation order.
    """
    taken = set(exclude) | set(_all_template_words())
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(_SYLLABLES_START) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(2))
        if 4 <= len(name) <= 9 and name not in taken and not any(bad in name for bad in _AVOID):
            taken.add(name)
            names.append(name)
    return names


def _all_template_words() -> set[str]:
    """Every word of the world's fixed texts (questions, instructions, feedback, revision prompt), lower-cased."""
    texts = [t for wordings in QUESTIONS.values() for t in wordings]
    texts += [MC_INSTRUCTION, REASONING_INSTRUCTION, ANSWER_FORMAT, *STEPS.values(), LETTERS,
              feedback_text("mc", None, ""), feedback_text("mc", "A", ""), feedback_text("reasoning", None, ""),
              feedback_text("reasoning", "x", ""), hint("color", "red", 0),
              build_revision_prompt("", "", "", ""), "Fact: Correct answer:"]
    words = {w.lower() for text in texts for w in _WORD.findall(text)}
    for values in ATTRIBUTES.values():
        for value, clues in values.items():
            words.add(value)
            words.update(clues)
    return words


def _derangement(values: list[str], rng: random.Random) -> list[str]:
    """A shuffled copy of ``values`` with no position keeping its value (rejection sampling)."""
    while True:
        out = list(values)
        rng.shuffle(out)
        if all(a != b for a, b in zip(out, values, strict=True)):
            return out


def _balanced_assignment(values: list[str], rng: random.Random) -> list[tuple[str, str, str]]:
    """(truth, belief, group) for one attribute's facts, in group order; balanced per value.

    Every real value is the truth of one known fact, of one misconception (and the belief of another), of one
    uncertain fact (and the wrong alternative of another) and of one decoy fact. Balance matters:
    if one value were the truth of more misconceptions than another, training on corrected answers would
    learn a bias toward that value (and forget known facts) instead of facts.
    """
    real = [v for v in values if v != values[-1]]  # the last value is the decoy
    known = list(real)
    rng.shuffle(known)
    truths = list(real)
    rng.shuffle(truths)
    out = [(t, t, "known") for t in known]
    out += [(t, b, "misconception") for t, b in zip(truths, _derangement(truths, rng), strict=True)]
    uncertain = list(real)
    rng.shuffle(uncertain)
    out += [(t, b, "uncertain") for t, b in zip(uncertain, _derangement(uncertain, rng), strict=True)]
    decoy = list(real)
    rng.shuffle(decoy)
    out += [(t, values[-1], "decoy") for t in decoy]
    return out


def build_world(seed: int = WORLD_SEED) -> list[Fact]:
    """The world's facts, in (region, creature, attribute) order; the same seed gives the same world.

    For each attribute the creatures are split (a seeded choice) into 6 known facts, 6 misconceptions,
    6 uncertain and 6 decoy facts, balanced per value (:func:`_balanced_assignment`).
    """
    rng = random.Random(seed)
    names = invent_names(NUM_REGIONS * ENTITIES_PER_REGION, rng)
    entities = [(name, REGIONS[i // ENTITIES_PER_REGION]) for i, name in enumerate(names)]
    assignment: dict[tuple[int, str], tuple[str, str, str]] = {}  # (creature, attribute) -> (truth, belief, group)
    for attribute, values in ATTRIBUTES.items():
        order = list(range(len(entities)))
        rng.shuffle(order)
        for idx, triple in zip(order, _balanced_assignment(list(values), rng), strict=True):
            assignment[(idx, attribute)] = triple
    return [Fact(name, region, attribute, *assignment[(idx, attribute)])
            for idx, (name, region) in enumerate(entities) for attribute in ATTRIBUTES]


# --------------------------------------------------------------------------- prompts and answers


def mc_prompt(entity: str, attribute: str, wording: int, options: list[str] | tuple[str, ...]) -> str:
    """A lettered question about one fact, ending with the ``Answer:`` cue."""
    lines = [f"Question: {QUESTIONS[attribute][wording].format(name=entity)}"]
    lines += [f"{LETTERS[i]}) {text}" for i, text in enumerate(options)]
    return "\n".join([*lines, MC_INSTRUCTION, "Answer:"])


def reasoning_prompt(entity: str, attribute: str, wording: int) -> str:
    """The same question without options: one short step, then ``Answer: word``; ends with ``Answer:``."""
    return "\n".join([f"Question: {QUESTIONS[attribute][wording].format(name=entity)}", REASONING_INSTRUCTION,
                      "Answer:"])


def mc_completion(letter: str) -> str:
    """The completion of a multiple-choice answer: a space and the letter (the model then emits EOS)."""
    return f" {letter}"


def reasoning_completion(entity: str, attribute: str, value: str) -> str:
    """The completion of a reasoning answer: `` the koustrul is green. Answer: green``."""
    return f" {STEPS[attribute].format(name=entity, value=value)} Answer: {value}"


def hint(attribute: str, value: str, clue_index: int) -> str:
    """The hint sentence for ``value``: one of its clues (``clue_index`` modulo the number of clues)."""
    clues = ATTRIBUTES[attribute][value]
    return f"Hint: think of {clues[clue_index % len(clues)]}."


def feedback_text(kind: str, given: str | None, hint_line: str) -> str:
    """Oracle feedback lines: verdict naming the given answer, the hint, the format, no repeat.

    Args:
        kind: "mc" or "reasoning".
        given: the answer the model gave (a letter or word), or None when none was found.
        hint_line: the hint sentence (:func:`hint`).

    Returns:
        Four lines of feedback.
    """
    if kind == "mc":
        fmt = "Required format: the option letter only."
        if given is None:
            return "\n".join(["Your answer is incorrect: no option letter was found in it.", hint_line, fmt,
                              "Do not repeat your previous answer."])
        return "\n".join([f"Your answer ({given}) is incorrect.", hint_line, fmt, f"Do not choose option {given} again."])
    fmt = "Required format: one short step, then Answer: and one word."
    if given is None:
        return "\n".join(["Your answer is incorrect: no answer word was found in it.", hint_line, fmt,
                          "Do not repeat your previous answer."])
    return "\n".join([f"Your answer ({given}) is incorrect.", hint_line, fmt, f"Do not answer {given} again."])


def oracle_feedback(kind: str, attribute: str, truth: str, gold: str, given: str | None, clue_index: int) -> str:
    """Feedback on a wrong answer (the one code path for the task's oracle and the pretraining corpus).

    Args:
        kind: "mc" or "reasoning".
        attribute: the fact's attribute.
        truth: the fact's true value (the hint is one of its clues).
        gold: the gold answer (letter or word); never named, even if ``given`` equals it by misuse.
        given: the extracted answer of the wrong completion (:func:`extract_answer`), or None.
        clue_index: which of the value's clues to give (taken modulo their number).

    Returns:
        The feedback text.
    """
    if given == gold or (kind == "mc" and given is not None and not (len(given) == 1 and given.isupper())):
        given = None  # the gold answer is never named; a word where a letter was asked counts as no letter
    return feedback_text(kind, given, hint(attribute, truth, clue_index))


def extract_answer(completion: str) -> str | None:
    """The declared answer: the word after the last ``Answer:``, else the first word (the prompt's cue
    already said ``Answer:``). A single capital letter stays a letter; a word is lower-cased.

    Handles the word-level tokenizer's decoding (``"the koustrul is green . Answer : green"``).
    """
    declared = _DECLARATION.findall(completion or "")
    if declared:
        word = declared[-1]
    else:
        words = _WORD.findall(completion or "")
        if not words:
            return None
        word = words[0]
    if len(word) == 1 and word.isupper():
        return word
    return word.lower()


# --------------------------------------------------------------------------- questions per fact


def options_for(attribute: str) -> tuple[str, ...]:
    """The lettered options of an attribute's questions: all its values, always in the same order."""
    return tuple(ATTRIBUTES[attribute])


def fact_examples(fact: Fact) -> tuple[list[Example], list[Example]]:
    """(train, eval) examples for one fact: wordings 0 and 1 are trained, wording 2 is held out."""
    meta = {"group": fact.group, "entity": fact.entity, "attribute": fact.attribute, "truth": fact.truth,
            "belief": fact.belief}
    base_id = f"{fact.entity}-{fact.attribute}"
    options = options_for(fact.attribute)

    def mc(wording: int) -> Example:
        return Example(id=f"{base_id}-mc{wording}", prompt=mc_prompt(fact.entity, fact.attribute, wording, options),
                       answer=LETTERS[options.index(fact.truth)], label=fact.region, choices=options,
                       meta={**meta, "kind": "mc", "wording": wording})

    def reasoning(wording: int) -> Example:
        return Example(id=f"{base_id}-r{wording}", prompt=reasoning_prompt(fact.entity, fact.attribute, wording),
                       answer=fact.truth, label=fact.region, meta={**meta, "kind": "reasoning", "wording": wording})

    return [mc(0), mc(1), reasoning(0)], [mc(EVAL_WORDING), reasoning(EVAL_WORDING)]


def world_examples() -> tuple[list[Example], list[Example]]:
    """All (train, eval) examples of the world, in fact order (no shuffling, no cap)."""
    train: list[Example] = []
    held_out: list[Example] = []
    for fact in build_world():
        t, e = fact_examples(fact)
        train.extend(t)
        held_out.extend(e)
    return train, held_out


# --------------------------------------------------------------------------- the task


class WorldTask(Task):
    """The built-in world: multiple-choice and short-reasoning questions about invented creatures.

    ``kind`` is "reasoning" because the parts mix letters and words: evaluation is generative.
    """

    name = "world"
    kind = "reasoning"
    answer_marker = "Answer:"
    answer_format = ANSWER_FORMAT

    def load(self, cfg: Any) -> TaskData:
        """Train/eval examples of the fixed world; ``cfg.data.seed`` shuffles train and picks the eval cap.

        ``cfg.data.path`` and the split settings do not apply (the world is generated, not read).
        ``cfg.data.groups`` (when set and non-empty) keeps only the facts of those groups.

        Raises:
            DataError: a name in ``cfg.data.groups`` is not a group of the world.
        """
        train, held_out = world_examples()
        groups = list(getattr(cfg.data, "groups", None) or [])
        if groups:
            unknown = [g for g in groups if g not in GROUPS]
            if unknown:
                raise DataError(f"data.groups: unknown world group(s) {', '.join(map(repr, unknown))}; "
                                f"choose from {', '.join(GROUPS)} (or [] for all)")
            train = [ex for ex in train if ex.meta["group"] in groups]
            held_out = [ex for ex in held_out if ex.meta["group"] in groups]
        random.Random(cfg.data.seed).shuffle(train)
        stats = LoadStats(read=len(train) + len(held_out), kept=len(train) + len(held_out))
        return TaskData(train=train, eval=cap_examples(held_out, cfg.data.max_eval_examples, cfg.data.seed),
                        stats=stats)

    def extract(self, completion: str) -> str | None:
        """The declared letter or (lower-cased) word; see :func:`extract_answer`."""
        return extract_answer(completion)

    def is_correct(self, example: Example, completion: str) -> bool:
        return self.extract(completion) == example.answer

    def feedback(self, example: Example, completion: str, cfg: Any = None) -> str:
        """Verdict naming the given answer, one clue (never the gold letter or word), format, no repeat."""
        given = self.extract(completion)
        clue_index = zlib.crc32(f"{example.id}|{given}".encode())  # stable; another wrong answer, maybe another clue
        meta = example.meta
        return oracle_feedback(meta["kind"], meta["attribute"], meta["truth"], example.answer, given, clue_index)

    def misleading_feedback(self, example: Example, completion: str, rng: random.Random) -> str:
        """Feedback whose clue points to a wrong value (imperfect feedback, :mod:`fedspear.feedback_noise`).

        The value is drawn from ``rng`` among the attribute's values other than the truth and the given answer;
        the gold letter or word is never named (a given answer equal to the gold is not repeated).
        """
        meta = example.meta
        given = self.extract(completion)
        options = options_for(meta["attribute"])
        is_letter = given is not None and len(given) == 1 and given in LETTERS[: len(options)]
        given_value = options[LETTERS.index(given)] if meta["kind"] == "mc" and is_letter else given
        wrong = rng.choice([v for v in options if v not in (meta["truth"], given_value)])
        clue_index = rng.randrange(len(ATTRIBUTES[meta["attribute"]][wrong]))
        return oracle_feedback(meta["kind"], meta["attribute"], wrong, example.answer, given, clue_index)

    def bare_feedback(self, example: Example, completion: str) -> str:
        """Feedback that only says the answer is wrong: the oracle's verdict and format lines, no hint."""
        given = self.extract(completion)
        text = oracle_feedback(example.meta["kind"], example.meta["attribute"], example.meta["truth"], example.answer,
                               given, 0)
        return "\n".join(line for line in text.splitlines() if not line.startswith("Hint:"))

    def choice_continuations(self, example: Example) -> list[str]:
        """`` A`` .. for the lettered part; nothing for the reasoning part (it is evaluated generatively)."""
        return [" " + LETTERS[i] for i in range(len(example.choices))]

    def question_prompt(self, question: str) -> str:
        """A typed question wrapped like the world's reasoning questions: question, instruction, cue."""
        return f"Question: {question}\n{REASONING_INSTRUCTION}\n{self.answer_marker}"

    def person_feedback(self, prompt: str, previous_answer: str, hint: str) -> str:
        """A person's hint in the oracle's four lines (:func:`feedback_text`): the multiple-choice form when
        ``prompt`` lists lettered options (a given answer that is not a letter then counts as none), else the
        reasoning form; the hint gets a ``Hint:`` prefix and a final full stop when it has neither."""
        kind = "mc" if _OPTION_LINE.search(prompt) else "reasoning"
        given = self.extract(previous_answer)
        if kind == "mc" and given is not None and not (len(given) == 1 and given.isupper()):
            given = None
        line = hint if hint.lower().startswith("hint") else f"Hint: {hint}"
        return feedback_text(kind, given, line if line.endswith((".", "!", "?")) else line + ".")

    def privileged_context(self, example: Example, max_chars: int | None = None) -> str:
        """The gold fact for OPSD's teacher: ``Fact: the koustrul is green. Correct answer: B.``"""
        meta = example.meta
        step = STEPS[meta["attribute"]].format(name=meta["entity"], value=meta["truth"])
        text = f"Fact: {step} Correct answer: {example.answer}."
        return text if max_chars is None else text[:max_chars]
