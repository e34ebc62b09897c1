"""The served client across restarts and a change of base model: traces kept, adapters kept per model."""

from __future__ import annotations

import torch
from serve_fixtures import make_client, tiny_world_dir

from fedspear.algorithms.base import ClientJob
from fedspear.serve.runtime import ClientRuntime, person_feedback, question_prompt
from fedspear.tasks import get_task


def test_restart_and_model_change_keep_traces_and_each_models_adapter(tmp_path_factory, tmp_path):
    world = tiny_world_dir(tmp_path_factory)
    state = tmp_path / "client"
    a = ClientRuntime(*make_client(world), state, seed=0)
    done = a.run_to_end(a.prepare_ask(question="What color is the zorvik?"))
    a.verdict(done["interaction"]["id"], 0, True)
    trained = {k: v + 0.5 for k, v in a.policy.adapter.get().items()}
    a.registry.publish(trained, "local round 1", a.fingerprint)
    model_a = a.fingerprint
    a.close()

    # another base model layout (LoRA rank 4) in the same state folder
    b = ClientRuntime(*make_client(world, **{"lora.r": 4}), state, seed=0)
    assert b.fingerprint != model_a
    assert (b.live.loaded.version, b.live.loaded.label) == (2, "initial")
    status = b.status()
    assert status["counts"]["total"] == 0 and b.store.counts()["total"] == 1  # a's trace kept, not b's
    assert b.train_from_store(ClientJob(0, 1, [], 1e-3, 1)).adapter is None  # never trains on a's token ids
    b.close()

    # back to the first model: it continues from its own latest adapter, and its trace is there
    a2 = ClientRuntime(*make_client(world), state, seed=0)
    assert a2.fingerprint == model_a and a2.live.loaded.label == "local round 1" and a2.live.loaded.version == 3
    live = a2.policy.adapter.get()
    assert all(torch.allclose(live[k], trained[k]) for k in trained)
    assert a2.store.counts(model_a)["accepted"] == 1
    a2.close()


def test_free_text_questions_become_task_prompts():
    world = get_task("world")
    assert question_prompt(world, " What color is the zorvik? ") == (
        "Question: What color is the zorvik?\nGive one short step, then Answer: and one word.\nAnswer:")
    full = "Question: x?\nA) a\nB) b\nReply with the option letter only.\nAnswer:"
    assert question_prompt(world, full) == full  # already a task prompt
    assert question_prompt(get_task("arc_challenge"), "Why is the sky blue?") == "Question: Why is the sky blue?\nAnswer:"


def test_a_persons_hint_is_framed_like_the_oracles_feedback():
    world, arc = get_task("world"), get_task("arc_challenge")
    mc = "Question: What color is the zorvik?\nA) red\nB) green\nReply with the option letter only.\nAnswer:"
    assert person_feedback(world, mc, " B", "think of fire") == (
        "Your answer (B) is incorrect.\nHint: think of fire.\nRequired format: the option letter only.\n"
        "Do not choose option B again.")
    reasoning = question_prompt(world, "What color is the zorvik?")
    assert person_feedback(world, reasoning, "the zorvik is red . Answer : red", "Hint: think of grass!") == (
        "Your answer (red) is incorrect.\nHint: think of grass!\n"
        "Required format: one short step, then Answer: and one word.\nDo not answer red again.")
    assert person_feedback(world, mc, "", "think of fire").startswith(
        "Your answer is incorrect: no option letter was found in it.\nHint: think of fire.\n")
    assert person_feedback(arc, "Q?\nA. x\nAnswer:", " C", "think about heat") == (
        f"Your answer (C) is incorrect.\nthink about heat\nRequired format: {arc.answer_format}.\n"
        "Do not repeat your previous answer.")
