"""Streaming one answer: the pieces add up to the answer, and the ids are exactly what generate() samples."""

from __future__ import annotations

import threading

import pytest
from serve_fixtures import make_policy, tiny_world_dir

from fedspear.generation import GenSettings, generate
from fedspear.serve.streaming import StreamResult, cut_at_eos, stream_answer


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return tiny_world_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def policy(tiny_world):
    return make_policy(tiny_world)


def _run(policy, ids, settings, seed, cancel=None):
    pieces, result = [], None
    for item in stream_answer(policy, ids, settings, seed, cancel):
        if isinstance(item, StreamResult):
            result = item
        else:
            pieces.append(item)
    return pieces, result


@pytest.mark.parametrize("do_sample", [False, True])
def test_stream_gives_the_ids_generate_samples(policy, do_sample):
    prompt = policy.encode("Question: What color is the zorvik?\nGive one short step, then Answer: and one word.\n"
                           "Answer:")
    settings = GenSettings(max_new_tokens=8, do_sample=do_sample, temperature=1.0, top_p=1.0)
    pieces, result = _run(policy, prompt, settings, seed=123)
    (reference,) = generate(policy, [prompt], settings, seed=123)
    assert result.completion.ids == reference.ids and result.completion.finished == reference.finished
    assert result.completion.text == reference.text
    assert "".join(pieces).strip() == result.completion.text
    assert len(result.completion.ids) >= 1 and result.first_token_seconds is not None
    assert 0 < result.first_token_seconds <= result.seconds and not result.cancelled


def test_cancel_stops_generation_early(policy):
    prompt = policy.encode("Question: What does the zorvik eat?\nAnswer:")
    settings = GenSettings(max_new_tokens=40, do_sample=True, temperature=1.0, top_p=1.0)
    cancel = threading.Event()
    stream = stream_answer(policy, prompt, settings, seed=1, cancel=cancel)
    next(stream)  # the first piece: generation is running
    stream.close()  # the page went away
    assert cancel.is_set()
    pieces, result = _run(policy, prompt, settings, seed=2)  # the model is free again
    assert isinstance(result, StreamResult)


def test_cut_at_eos():
    assert cut_at_eos([4, 5, 1, 7], {1}) == ([4, 5, 1], True)
    assert cut_at_eos([4, 5], {1}) == ([4, 5], False)


@pytest.mark.parametrize("do_sample", [False, True])
def test_stream_decodes_with_the_one_set_of_generate_kwargs(policy, monkeypatch, do_sample):
    """Streaming passes generate() exactly the decode settings batched generation uses, beam guard included."""
    from fedspear.generation import decode_kwargs, eos_ids

    seen = {}
    original = policy.model.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(policy.model, "generate", spy)
    settings = GenSettings(max_new_tokens=4, do_sample=do_sample, temperature=0.9, top_p=0.8, top_k=5)
    _run(policy, policy.encode("Question: What color is the zorvik?\nAnswer:"), settings, seed=3)
    assert (seen["num_beams"], seen["num_return_sequences"]) == (1, 1)
    expected = decode_kwargs(settings, policy.tokenizer.pad_token_id, eos_ids(policy))
    assert {k: seen[k] for k in expected} == expected
    assert (seen["temperature"], seen["top_k"]) == ((0.9, 5) if do_sample else (None, None))
