"""Task prompts over the model's budget: counted, then skipped, kept to be cut, or refused (fedspear/prompt_budget.py)."""

from __future__ import annotations

import logging

import pytest

from fedspear.config import Config, ConfigError, apply_overrides
from fedspear.prompt_budget import fit_prompts, prompt_budgets, prompt_lengths
from fedspear.tasks.arc import ArcChallengeTask
from fedspear.tasks.base import DataError, Example, LoadStats, TaskData
from fedspear.tasks.strategy_qa import StrategyQATask


class WordTokenizer:
    """One token per whitespace-separated word, plus a BOS when ``add_special_tokens``."""

    def __call__(self, texts, add_special_tokens=True):
        bos = [0] if add_special_tokens else []
        return {"input_ids": [bos + [1] * len(t.split()) for t in texts]}


def _ex(i: int, words: int, side: str = "t") -> Example:
    return Example(id=f"{side}{i}", prompt=" ".join(["w"] * words), answer="A", label="A", choices=("x", "y"))


def _cfg(mode: str = "skip", seq: int = 20, y0: int = 8, **gen: int) -> Config:
    cfg = Config()
    cfg.data.long_prompts = mode
    cfg.model.max_seq_len = seq
    cfg.gen.max_new_tokens_y0 = y0
    cfg.gen.max_new_tokens_y1 = y0
    for key, value in gen.items():
        setattr(cfg.gen, key, value)
    return cfg


def _data() -> TaskData:
    # budget 20 - 8 = 12 tokens = BOS + 11 words: train rows of 11 words fit, 12 do not
    train = [_ex(0, 11), _ex(1, 12), _ex(2, 5), _ex(3, 30)]
    held_out = [_ex(0, 11, "e"), _ex(1, 12, "e"), _ex(2, 3, "e")]
    return TaskData(train=train, eval=held_out, stats=LoadStats(read=7, kept=7))


def test_prompt_lengths_count_special_tokens_like_encode():
    assert prompt_lengths(WordTokenizer(), ["a b c", "", "x"]) == [4, 1, 2]


def test_budgets_follow_max_seq_len_and_the_new_tokens_of_each_side():
    tok, strategy, arc = WordTokenizer(), StrategyQATask(), ArcChallengeTask()
    assert prompt_budgets(tok, _cfg(), strategy, []) == {"train": 12, "eval": 12}  # generative: y0
    assert prompt_budgets(tok, _cfg(eval_max_new_tokens=4), strategy, []) == {"train": 12, "eval": 16}
    held_out = [_ex(0, 3, "e")]
    assert prompt_budgets(tok, _cfg(), arc, held_out) == {"train": 12, "eval": 19}  # log-likelihood: " A" = 1 token
    both = _cfg()
    both.data.eval_method = "both"
    assert prompt_budgets(tok, both, arc, held_out) == {"train": 12, "eval": 12}


def test_skip_drops_the_rows_over_budget_and_counts_them(caplog):
    with caplog.at_level(logging.WARNING, logger="fedspear"):
        data = fit_prompts(_data(), WordTokenizer(), _cfg("skip"), StrategyQATask())
    assert [e.id for e in data.train] == ["t0", "t2"] and [e.id for e in data.eval] == ["e0", "e2"]
    assert data.stats.as_dict()["long_prompts"] == {"action": "skip", "train": 2, "eval": 1,
                                                    "budget_tokens": {"train": 12, "eval": 12}}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert warnings[0].startswith("2 of 4 training and 1 of 3 evaluation prompts are longer than their budget "
                                  "(12 / 12 tokens") and "skipped (data.long_prompts=skip" in warnings[0]


def test_truncate_keeps_every_row_and_counts_the_long_ones(caplog):
    with caplog.at_level(logging.WARNING, logger="fedspear"):
        data = fit_prompts(_data(), WordTokenizer(), _cfg("truncate"), StrategyQATask())
    assert len(data.train) == 4 and len(data.eval) == 3
    assert data.stats.long_prompts == {"train": 2, "eval": 1} and data.stats.long_prompts_action == "truncate"
    assert sum("cut from the left" in r.getMessage() for r in caplog.records) == 1


def test_error_refuses_in_one_line_naming_the_fixes():
    with pytest.raises(DataError) as info:
        fit_prompts(_data(), WordTokenizer(), _cfg("error"), StrategyQATask())
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("2 of 4 training and 1 of 3 evaluation prompts are longer than their budget")
    assert "model.max_seq_len" in message and "data.long_prompts=skip" in message


def test_prompts_within_budget_pass_unchanged_in_every_mode(caplog):
    for mode in ("skip", "truncate", "error"):
        data = TaskData(train=[_ex(0, 11), _ex(1, 2)], eval=[_ex(0, 4, "e")], stats=LoadStats())
        with caplog.at_level(logging.WARNING, logger="fedspear"):
            out = fit_prompts(data, WordTokenizer(), _cfg(mode), StrategyQATask())
        assert out.train == data.train and out.eval == data.eval
        assert out.stats.as_dict()["long_prompts"] == {"action": mode, "train": 0, "eval": 0,
                                                       "budget_tokens": {"train": 12, "eval": 12}}
    assert not caplog.records


def test_skip_that_leaves_no_row_is_a_data_error():
    data = TaskData(train=[_ex(0, 11)], eval=[_ex(0, 40, "e")], stats=LoadStats())
    with pytest.raises(DataError, match="no evaluation row is left.*data.long_prompts=truncate"):
        fit_prompts(data, WordTokenizer(), _cfg("skip"), StrategyQATask())


def test_long_prompts_is_a_validated_setting():
    assert Config().data.long_prompts == "skip"
    with pytest.raises(ConfigError, match="data.long_prompts: 'cut' is not one of skip, truncate, error"):
        apply_overrides(Config(), ["data.long_prompts=cut"])


# --------------------------------------------------------------------------- a run records what loading changed


def _arc_row(qid: str, question: str) -> dict:
    return {"id": qid, "question": question, "answerKey": "B",
            "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]}}


def test_a_run_records_overlap_and_long_prompts_in_data_stats(tiny_qwen, tmp_path):
    import json

    from conftest import tiny_overrides

    from fedspear.config import load_config
    from fedspear.federation import simulator

    data = tmp_path / "data"
    data.mkdir()
    long_question = "Which gas " + "really " * 600 + "do plants take in?"  # > 509 tokens: max_seq_len 512 - 3
    train = [_arc_row(f"t{i}", f"Which gas number {i} do plants take in?") for i in range(10)]
    train += [_arc_row("t-long-1", long_question), _arc_row("t-long-2", long_question + " Twice?")]
    held_out = [_arc_row(f"e{i}", f"Which gas sample {i} is in the air?") for i in range(4)]
    held_out += [_arc_row("e-same", "which gas NUMBER 3 do plants  take in?"),  # a training question
                 _arc_row("e-long", long_question + " Again?")]
    for name, rows in (("arc-train.jsonl", train), ("arc-test.jsonl", held_out)):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, tiny_overrides(tiny_qwen, tmp_path / "run", **{
        "data.path": str(data), "fl.rounds": 1, "data.eval_every": 1, "data.eval_method": "generative"}))
    run_dir = simulator.run(cfg)
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert stats["read"] == 18 and stats["kept"] == 18
    assert stats["eval_overlap_dropped"] == 1
    assert stats["long_prompts"] == {"action": "skip", "train": 2, "eval": 1,
                                     "budget_tokens": {"train": 509, "eval": 509}}
    assert stats["train"] == 10 and stats["eval"] == 4
    assert sum(stats["client_sizes"]) == 10
