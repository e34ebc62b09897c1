"""``model.chat_template``: every prompt the model sees goes through the tokenizer's chat template, and what depends
on prompt positions or stop tokens stays right under it (docs/real-models.md)."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import build_rig, require_shared_data, run_tiny, tiny_overrides

from fedspear.algorithms.base import ClientJob
from fedspear.algorithms.registry import build_algorithm
from fedspear.config import ConfigError, load_config
from fedspear.generation import GenSettings, eos_ids, generate, shared_prefix_len
from fedspear.models import encode_prompt, end_of_turn_ids, resolve_chat_template
from fedspear.tasks import get_task
from fedspear.tasks.prompts import build_revision_prompt

# A ChatML-like template over the tiny tokenizer's own special tokens: "<s>" opens and closes a turn, so the
# end-of-turn id ("<s>") differs from EOS ("<|endoftext|>"), as <|im_end|> does for SmolLM2 and Qwen2.5.
TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}<s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_chat(tiny_qwen, tmp_path_factory):
    """The tiny Qwen2 model with a chat template added to its tokenizer."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-chat") / "model"
    shutil.copytree(tiny_qwen, out)
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out)
    return out


def _policy(model_dir, mode="auto", **extra):
    over = {"model.model_name": str(model_dir), "model.dtype": "fp32", "model.device_map": "cpu",
            "model.gradient_checkpointing": False, "lora.r": 4, "model.chat_template": mode, **extra}
    return build_rig(load_config(None, [f"{k}={v}" for k, v in over.items()]), None)


def test_encode_wraps_the_prompt_in_one_user_turn(tiny_chat):
    policy = _policy(tiny_chat)
    tok = policy.tokenizer
    assert policy.chat_template
    ids = policy.encode("Question: why?\nAnswer:")
    assert tok.decode(ids) == "<s>user\nQuestion: why?\nAnswer:<s>\n<s>assistant\n"
    assert ids == tok("<s>user\nQuestion: why?\nAnswer:<s>\n<s>assistant\n", add_special_tokens=False)["input_ids"]
    s_id = tok.convert_tokens_to_ids("<s>")
    assert policy.end_of_turn_ids == (s_id,)
    assert eos_ids(policy) == {tok.eos_token_id, s_id}  # generation stops at the end of the assistant turn
    assert policy.bos_id == s_id  # every templated prompt starts with the template's first token
    assert policy.continuation(" B") == "B"  # the assistant turn starts on a fresh line


def test_chat_template_modes(tiny_chat, tiny_qwen):
    assert _policy(tiny_qwen).chat_template is False  # auto without a template: raw prompts
    raw = _policy(tiny_chat, "off")
    assert raw.chat_template is False and raw.end_of_turn_ids == ()
    assert raw.encode("Light\nAnswer:") == raw.tokenizer("Light\nAnswer:")["input_ids"]
    assert raw.continuation(" B") == " B"
    assert _policy(tiny_chat, "on").chat_template is True
    with pytest.raises(ConfigError, match=r"model.chat_template=on but the tokenizer of .* has no chat template; "
                                          r"use model.chat_template=off"):
        _policy(tiny_qwen, "on")
    with pytest.raises(ConfigError, match="model.chat_template: 'maybe' is not one of auto, on, off"):
        load_config(None, ["model.chat_template=maybe"])


def test_yaml_on_off_are_modes_not_booleans(tmp_path):
    """YAML 1.1 reads a bare ``off`` as False; the setting still means "off"."""
    for word in ("off", "on", "auto"):
        path = tmp_path / f"{word}.yaml"
        path.write_text(f"model:\n  chat_template: {word}\n")
        assert load_config(path).model.chat_template == word


def test_end_of_turn_ids_of_common_templates(tiny_qwen):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    assert end_of_turn_ids(tok) == ()  # a plain-text turn end is not a stop token
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}<|endoftext|>{% endfor %}"
    assert end_of_turn_ids(tok) == (tok.eos_token_id,)
    assert resolve_chat_template("auto", tok, "x") is True


def test_revision_prompts_share_their_templated_prefix_and_the_cache_gives_plain_completions(tiny_chat):
    """Under the template the instruction block of a revision prompt follows the template's header, not position
    0; the prompts of one call still share a token prefix, and the prefix cache gives the plain completions."""
    policy = _policy(tiny_chat, **{"gen.rollout_batch_size": 4})
    with torch.no_grad():
        for p in policy.adapter.params.values():
            p.copy_(torch.randn_like(p) * 0.05)
    texts = [build_revision_prompt(f"Question: {q}\nAnswer:", prev, "Hint: think again.", "the option letter only")
             for q, prev in (("Which gas?", "B"), ("Light", "C"), ("Water boils at a hundred degrees. Why?", "A"),
                             ("Ice", "D"), ("Name a planet.", "A"))]
    prompts = [policy.encode(t) for t in texts]
    header = policy.tokenizer("<s>user\n", add_special_tokens=False)["input_ids"]
    assert all(p[: len(header)] == header for p in prompts)
    assert shared_prefix_len(prompts) > len(header) + 16  # header + instruction block
    settings = GenSettings(max_new_tokens=6, do_sample=False)
    policy.prefix_cache = True
    cached = generate(policy, prompts, settings, seed=0)
    policy.prefix_cache = False
    plain = generate(policy, prompts, settings, seed=0)
    assert [c.ids for c in cached] == [c.ids for c in plain]


def test_spear_under_the_template_trains_templated_prompts_and_spares_the_end_of_turn(tiny_chat, tmp_path):
    """A SPEAR rollout under the template: every trained prompt is a templated x0 (revisions trained under the
    original prompt), completions stop at the end-of-turn id, and unlikelihood never penalises it."""
    require_shared_data()
    task = get_task("arc_challenge")
    cfg = load_config(None, tiny_overrides(tiny_chat, tmp_path, **{"gen.num_revisions": 1,
                                                                    "fl.local_rollout_steps": 12}))
    data = task.load(cfg)
    policy = build_rig(cfg, task)
    assert policy.chat_template
    eot = policy.end_of_turn_ids[0]
    # The tiny model learned to end an answer with EOS; make it end its turn with the end-of-turn id instead.
    with torch.no_grad():
        head = policy.model.get_output_embeddings().weight
        eos = policy.tokenizer.eos_token_id
        head[eot], head[eos] = head[eos].clone(), -head[eos]
    algo = build_algorithm(policy.cfg, task)
    (rollout,) = algo.rollout(policy, [ClientJob(0, 1, data.train[:12], 1e-3, seed=0)])
    x0s = {tuple(policy.encode(ex.prompt)) for ex in data.train[:12]}
    traces = rollout.wins + rollout.losses
    assert traces and all(tuple(t.prompt_ids) in x0s for t in traces)
    stopped = [t for t in traces if t.completion_ids and t.completion_ids[-1] == eot]
    assert stopped, "no completion ended its turn"
    losing = [t for t in rollout.losses if len(t.completion_ids) >= 2 and t.completion_ids[-1] == eot]
    assert losing, "no lose trace ended its turn"
    for trace, mask in zip(losing, algo.lose_masks(policy, losing)):
        ids = trace.completion_ids[-len(mask):]
        assert mask[ids.index(eot)] == 0 and any(m > 0 for m in mask)


def test_log_likelihood_eval_scores_the_letter_as_the_assistant_writes_it(tiny_chat, monkeypatch):
    """Under the template each option's continuation is "B" right after the assistant header (no leading space)."""
    from fedspear import evaluation

    require_shared_data()
    task = get_task("arc_challenge")
    cfg = load_config(None, tiny_overrides(tiny_chat, "unused", **{"data.eval_method": "log_likelihood"}))
    data = task.load(cfg)
    policy = build_rig(cfg, task)
    seen = []
    real = evaluation.make_batch
    monkeypatch.setattr(evaluation, "make_batch", lambda traces, *a: seen.extend(traces) or real(traces, *a))
    evaluation.log_likelihood_correct(policy, task, policy.cfg, data.eval[:2])
    letters = {tuple(policy.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in "ABCDE"}
    assert seen and all(tuple(t.completion_ids) in letters for t in seen)
    assert all(t.prompt_ids == encode_prompt(policy.tokenizer, ex.prompt, True)
               for t, ex in zip(seen[::len(data.eval[0].choices)], data.eval[:2]))


def test_a_run_under_the_template_end_to_end(tiny_chat, tmp_path):
    require_shared_data()
    run_dir, rows = run_tiny(tiny_chat, tmp_path / "run", **{"fl.rounds": 1})
    assert [r["round"] for r in rows] == [0, 1]
    assert (run_dir / "config.yaml").read_text().count("chat_template: auto") == 1


@pytest.mark.parametrize(("completion", "letter"), [
    ("C. The climate in the area was once tropical.", "C"),  # SmolLM2-135M-Instruct's usual shape
    ("A woodpecker taps a tree for insects", "B"),  # the option's text, opening with the article "A"
    ("a woodpecker taps a tree for insects.", "B"),
    ("Water vapor", "D"),  # the longest option it opens with, not "Water"
    ("(B) A woodpecker taps a tree for insects", "B"),
    ("B", "B"),
    ("A", "A"),
])
def test_mc_verifier_reads_the_shapes_instruct_models_write(completion, letter):
    from fedspear.tasks.base import Example

    choices = ("Ice", "A woodpecker taps a tree for insects", "Water", "Water vapor")
    task = get_task("arc_challenge")
    example = Example("q", "Question?\nAnswer:", letter, letter, choices)
    assert task.extract(completion, 4, choices) == letter
    assert task.is_correct(example, completion)


def test_math_mcqa_reads_the_declared_letter_not_an_option_text():
    """MATH-MCQA answers are reasoning ending in "Answer: X": a solution that opens with an option's text ("3
    apples...") is not that option."""
    from fedspear.tasks.base import Example

    task = get_task("math_mcqa")
    example = Example("m", "Problem?", "C", "C", ("3", "4", "5", "6"))
    completion = "3 apples plus 2 apples make 5 apples.\nAnswer: C"
    assert task.extract_for(example, completion) == "C" and task.is_correct(example, completion)
