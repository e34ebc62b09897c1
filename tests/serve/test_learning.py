"""Learning from the store: SPEAR's wins and losses from people's verdicts, the update, and what leaves the device."""

from __future__ import annotations

import pytest
import torch
from serve_fixtures import make_client, make_policy, tiny_world_dir

from fedspear.algorithms.base import ClientJob
from fedspear.serve.adapters import model_fingerprint
from fedspear.serve.learning import rollout_from_interactions, train_local, update_from_store
from fedspear.serve.runtime import ClientRuntime
from fedspear.serve.store import Attempt, Interaction, NewAttempt, TraceStore

X0 = [1, 2, 3]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return tiny_world_dir(tmp_path_factory)


def _attempt(idx: int, ids: list[int], verdict: bool | None, created: float, gen_s: float = 1.0,
             verdict_at: float | None = None) -> Attempt:
    return Attempt(prompt="p", prompt_ids=X0 if idx == 0 else [9, 9], completion_ids=ids, text=f"t{ids}",
                   finished=True, adapter_version=0, seed=0, gen_seconds=gen_s,
                   feedback=None if idx == 0 else "hint", idx=idx, created_at=created, verdict=verdict,
                   verdict_at=verdict_at)


def _interaction(iid: int, state: str, attempts: list[Attempt]) -> Interaction:
    return Interaction(iid, "s", 0.0, 0.0, state, "m", None, "q", "p", 2, 0, attempts)


def test_traces_follow_the_verdicts_as_oracle_feedback_would():
    accepted = _interaction(1, "accepted", [_attempt(0, [5, 1], True, 0.0, verdict_at=2.0)])
    fixed = _interaction(2, "fixed", [_attempt(0, [6], False, 0.0, verdict_at=10.0),
                                      _attempt(1, [7, 1], True, 15.0, gen_s=1.0, verdict_at=20.0)])
    unfixed = _interaction(3, "unfixed", [_attempt(0, [8], False, 0.0, verdict_at=1.0),
                                          _attempt(1, [9], False, 4.0, gen_s=0.5, verdict_at=5.0),
                                          _attempt(2, [10], False, 9.0, gen_s=0.5, verdict_at=10.0)])
    pending = _interaction(4, "awaiting_hint", [_attempt(0, [11], False, 0.0, verdict_at=1.0)])
    r = rollout_from_interactions([accepted, fixed, unfixed, pending])
    assert [(w.prompt_ids, w.completion_ids, w.confidence) for w in r.wins] == [(X0, [5, 1], 1.0), (X0, [7, 1], 1.0)]
    assert [(u.prompt_ids, u.completion_ids, u.confidence) for u in r.losses] == [(X0, [6], 1.0), (X0, [8], 0.5)]
    m = r.metrics
    assert (m["prompts"], m["wins_y0"], m["needs_revision"], m["y0_accuracy"]) == (3, 1, 2, pytest.approx(1 / 3))
    assert (m["revision_attempts_1"], m["revision_successes_1"], m["revision_attempts_2"]) == (2, 1, 1)
    assert "revision_successes_2" not in m and m["wins_revision"] == 1
    assert (m["losses_fixed"], m["losses_unfixed"]) == (1, 1)
    assert m["generations"] == 6 and m["tokens_generated"] == 2 + 3 + 3
    # hint-writing time: fixed (15 - 1 - 10) + unfixed (4 - 0.5 - 1) + (9 - 0.5 - 5)
    assert m["feedback_s"] == pytest.approx(4.0 + 2.5 + 3.5)
    assert m["generation_s"] == pytest.approx(1 + 2 + 2)


def test_served_losses_take_the_configured_confidences_and_the_oracle_metric_code(policy, tmp_path, monkeypatch):
    """spear.confidence_fixed / confidence_unfixed reach the people's traces; the outcome metrics are SPEAR's own."""
    from dataclasses import replace

    from fedspear.algorithms import spear as spear_module

    cfg = replace(policy.cfg, spear=replace(policy.cfg.spear, confidence_fixed=0.8, confidence_unfixed=0.3))
    seen = {}

    def capture(self, policy, job, data):
        seen["rollout"] = data
        return spear_module.LocalUpdateResult(None, 0.0, dict(data.metrics))

    monkeypatch.setattr(spear_module.Spear, "train", capture)
    called = []
    shared = spear_module.outcome_metrics
    monkeypatch.setattr("fedspear.serve.learning.outcome_metrics",
                        lambda m, n: (called.append(n), shared(m, n))[1])
    with TraceStore(tmp_path / "t.sqlite") as store:
        _store_interaction(store, policy, " red", [False, True])  # fixed by a revision
        _store_interaction(store, policy, " red", [False, False, False])  # never fixed
        update_from_store(policy, policy.task, cfg, store, ClientJob(0, 1, [], 1e-3, 5))
    losses = seen["rollout"].losses
    assert sorted(t.confidence for t in losses) == pytest.approx([0.3, 0.8])
    assert called == [2]
    assert (seen["rollout"].metrics["losses_fixed"], seen["rollout"].metrics["losses_unfixed"]) == (1, 1)


@pytest.fixture(scope="module")
def policy(tiny_world):
    return make_policy(tiny_world)


def _store_interaction(store: TraceStore, policy, completion: str, verdicts: list[bool], hint: str = "think of sky"):
    x0 = policy.encode("Question: What color is the zorvik?\nAnswer:")
    ids = policy.tokenizer(completion, add_special_tokens=False)["input_ids"]
    first = NewAttempt("Question: What color is the zorvik?\nAnswer:", x0, ids, completion, False, 0, 0, 0.1)
    it = store.create_interaction(session="s", question="What color is the zorvik?", prompt=first.prompt,
                                  model=model_fingerprint(policy), max_revisions=2, first=first)
    store.set_verdict(it.id, 0, verdicts[0])
    for k, verdict in enumerate(verdicts[1:], start=1):
        store.add_revision(it.id, NewAttempt("rev", [4], ids, completion, False, 0, 0, 0.1, feedback=hint))
        store.set_verdict(it.id, k, verdict)
    return store.get(it.id)


def test_no_wins_no_update_and_nothing_marked(policy, tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        it = _store_interaction(store, policy, " red", [False, False, False])
        result = update_from_store(policy, policy.task, policy.cfg, store, ClientJob(0, 1, [], 1e-3, 5))
        assert result.adapter is None and result.weight == 0.0
        assert result.metrics["losses"] == 1 and result.metrics["store_interactions"] == 1
        assert store.get(it.id).trained_count == 0 and store.trainings() == []


def test_update_trains_from_the_global_adapter_and_only_numbers_leave(policy, tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        secret = "the glorvik is purple-ish"
        ids = [
            _store_interaction(store, policy, " blue", [True]).id,
            _store_interaction(store, policy, " red", [False, True], hint=secret).id,
        ]
        before = policy.adapter.get()
        result = update_from_store(policy, policy.task, policy.cfg, store, ClientJob(0, 1, [], 1e-2, 5))
        assert result.weight == 2.0  # n_eff = wins: the accepted answer and the accepted revision
        assert set(result.adapter) == set(before)
        assert any(not torch.equal(result.adapter[k], before[k]) for k in before)
        assert all(isinstance(v, float) for v in result.metrics.values())
        assert (result.metrics["wins"], result.metrics["losses"], result.metrics["wins_y0"]) == (2, 1, 1)
        # the update's memory, as every front end records it (fedspear/federation/resources.py)
        assert result.metrics["peak_rss_mb"] >= result.metrics["update_rss_peak_mb"] > 0
        assert [store.get(i).trained_count for i in ids] == [1, 1]
        assert store.trainings()[0]["label"] == "round 1"

        wire = pytest.importorskip("fedspear.flower.wire")  # the Flower reply a store-backed SuperNode sends
        from flwr.common import serde

        content = wire.train_reply_content(result)
        wire.check_client_content(content, before)
        assert set(content["metrics"].keys()) == {*result.metrics, "weight"}  # every metric SPEAR reports is known
        payload = serde.recorddict_to_proto(content).SerializeToString()
        assert set(content.keys()) == {"adapter", "metrics"}
        for text in (secret, "zorvik", "What color", "Answer:"):
            assert text.encode() not in payload


def _logp(policy, x0: list[int], ids: list[int]) -> float:
    from fedspear.algorithms.base import Trace
    from fedspear.algorithms.common import completion_logprobs, make_batch

    batch = make_batch([Trace(x0, ids)], policy.tokenizer.pad_token_id, 256, policy.device)
    with torch.no_grad():
        return float(completion_logprobs(policy.model, batch).sum())


def test_accepted_revision_is_taught_under_the_original_question(tiny_world, tmp_path):
    """Teach a wrong answer away through the steps the page calls: wrong, hint, accept the revision, train."""
    # top_k 0: the sampled revision this test was written against (gen.top_k=50 samples another one)
    policy = make_policy(tiny_world, **{"fl.local_train_steps": 10, "optim.lr": 0.02, "gen.top_k": 0})
    runtime = ClientRuntime(policy, policy.task, policy.cfg, tmp_path / "client", seed=3)
    ex_id = runtime.list_examples(1, group="misconception", kind="mc")[0]["id"]
    done = runtime.run_to_end(runtime.prepare_ask(example_id=ex_id))
    it_id = done["interaction"]["id"]
    runtime.verdict(it_id, 0, False)
    runtime.run_to_end(runtime.prepare_revise(it_id, "think of the sky"))
    runtime.verdict(it_id, 1, True)
    stored = runtime.store.get(it_id)
    x0, y0, y1 = stored.attempts[0].prompt_ids, stored.attempts[0].completion_ids, stored.attempts[1].completion_ids
    assert stored.state == "fixed" and x0 == policy.encode(runtime.examples[ex_id].prompt)
    win_before, lose_before = _logp(policy, x0, y1), _logp(policy, x0, y0)
    result = runtime.train_from_store(ClientJob(0, 1, [], 0.02, 11))
    assert result.metrics["wins_revision"] == 1 and result.metrics["losses_fixed"] == 1
    served = policy.adapter.get()
    assert all(torch.equal(served[k], runtime.live.state[k]) for k in served)  # the app still serves the global
    policy.adapter.set(result.adapter)
    win_after, lose_after = _logp(policy, x0, y1), _logp(policy, x0, y0)
    # the revision, trained under the original prompt x0 (without the hint), became much more likely
    assert result.metrics["steps"] == 10 and result.metrics["skipped_steps"] == 0
    assert win_after > win_before + 1.0  # e times more likely at least (tiny model: +1.4 nats in 10 steps)
    assert win_after - lose_after > win_before - lose_before
    runtime.close()


def test_train_local_publishes_a_version_the_running_client_picks_up(tiny_world, tmp_path):
    runtime = ClientRuntime(*make_client(tiny_world), tmp_path / "client", seed=0)
    done = runtime.run_to_end(runtime.prepare_ask(question="What color is the zorvik?"))
    runtime.verdict(done["interaction"]["id"], 0, True)
    assert done["adapter"]["version"] == 0
    summary = train_local(*make_client(tiny_world), tmp_path / "client")  # as `fedspear train-local` would
    assert summary["published"]["version"] == 1 and summary["from_version"] == 0 and summary["weight"] == 1.0
    assert summary["published"]["label"] == "local round 1"
    again = runtime.run_to_end(runtime.prepare_ask(question="What color is the zorvik?"))
    assert again["adapter"]["version"] == 1
    assert again["interaction"]["attempts"][0]["adapter_label"] == "local round 1"
    live = runtime.policy.adapter.get()
    published = runtime.registry.load(runtime.registry.current())
    assert all(torch.equal(live[k], published[k]) for k in published)
    # a second round starts from the published version
    assert train_local(*make_client(tiny_world), tmp_path / "client")["from_version"] == 1
    runtime.close()
