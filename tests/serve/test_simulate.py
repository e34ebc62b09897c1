"""Scripted people teaching a federation of served clients through HTTP, offline."""

from __future__ import annotations

import pytest
from serve_fixtures import serve_config, tiny_world_dir

pytest.importorskip("fastapi")

from fedspear.serve.simulate import format_rows, run_federation  # noqa: E402
from fedspear.serve.store import TraceStore  # noqa: E402
from fedspear.tasks import get_task  # noqa: E402


def test_federation_of_served_clients(tmp_path_factory, tmp_path):
    cfg = serve_config(tiny_world_dir(tmp_path_factory), **{"data.max_eval_examples": 8})
    rows = run_federation(cfg, tmp_path, clients=2, rounds=2, questions=3)
    assert [r["round"] for r in rows] == [0, 1, 2] and "eval" in rows[0] and 0 <= rows[2]["eval"]["accuracy"] <= 1
    r1, r2 = rows[1], rows[2]
    assert r1["questions"] == r2["questions"] == 6
    # round 1 was answered by the initial adapter, round 2 by the global adapter the server published after round 1
    # (a new version only when round 1 changed the global: publishing the tensors the page serves is a no-op)
    changed = r1["aggregation"]["num_aggregated"] > 0
    assert r1["adapter_versions"] == [0] and r2["adapter_versions"] == ([1] if changed else [0])
    assert r1["aggregation"]["num_aggregated"] + r1["aggregation"]["num_without_update"] == 2
    assert r1["answer_seconds_median"] > 0
    task, examples = get_task("world"), {ex.id: ex for ex in get_task("world").load(cfg).train}
    for client in ("client0", "client1"):
        with TraceStore(tmp_path / client / "traces.sqlite") as store:
            stored = store.recent(limit=100)
            assert len(stored) == 6 and all(it.state in ("accepted", "fixed", "unfixed") for it in stored)
            for it in stored:  # the person's verdicts are the task's verifier on what the page showed
                assert [a.verdict for a in it.attempts] == [task.is_correct(examples[it.example_id], a.text)
                                                           for a in it.attempts]
    assert (tmp_path / "federation.json").is_file()
    assert "interface_acc" in format_rows(rows).splitlines()[0]


def test_latency_is_timed_at_the_client(tmp_path_factory, tmp_path):
    from fedspear.serve.simulate import measure_latency

    cfg = serve_config(tiny_world_dir(tmp_path_factory))
    out = measure_latency(cfg, tmp_path, conversations=3)
    answer, revision = out["answer"], out["revision"]
    assert answer["count"] == 3 and revision["count"] <= 3 * cfg.gen.num_revisions
    assert 0 < answer["first_token_median_s"] <= answer["done_median_s"] <= answer["done_max_s"]
    assert 1 <= answer["tokens_median"] <= cfg.gen.max_new_tokens_y0


def test_the_scripted_person_types_only_the_oracles_hint_sentence():
    from types import SimpleNamespace

    from fedspear.serve.simulate import ScriptedPerson

    task = get_task("world")
    cfg = SimpleNamespace(data=SimpleNamespace(seed=0, max_eval_examples=10), feedback=SimpleNamespace(mc_hint_words=3))
    example = next(ex for ex in task.load(cfg).train if ex.meta["kind"] == "mc")
    wrong = next(letter for letter in "ABCD" if letter != example.answer)
    person = ScriptedPerson(api=None, task=task, cfg=cfg)
    hint = person.hint(example, f" {wrong}")
    oracle = task.feedback(example, f" {wrong}", cfg).splitlines()
    assert hint == oracle[1] and hint.startswith("Hint: think of ") and example.answer not in hint.split()


def test_local_dp_in_a_served_federation_moves_the_global_by_at_most_the_clip(tmp_path_factory, tmp_path):
    """dp.mode=local dp.clip_norm=0.001 (no noise): every release is clipped on the client, so the uniform average
    moves the global adapter by at most C per round, and no client's counts reach the server's rows."""
    from safetensors.torch import load_file

    from fedspear.privacy import update_norm

    cfg = serve_config(tiny_world_dir(tmp_path_factory), **{"data.max_eval_examples": 4, "dp.mode": "local",
                                                            "dp.clip_norm": 0.001, "dp.noise_multiplier": 0.0,
                                                            "optim.lr": 0.1})
    rows = run_federation(cfg, tmp_path, clients=2, rounds=2, questions=12)  # 12: one client wins in each round
    adapters = [load_file(tmp_path / "server" / "adapters" / f"round_{r:04d}" / "adapter_model.safetensors")
                for r in range(3)]
    for before, after in zip(adapters, adapters[1:]):
        norm = update_norm({k: after[k].double() - before[k].double() for k in before})
        assert 0 < norm <= 0.001 * (1 + 1e-4)  # without DP this run moves it by 5.8 in round 1
    for row in rows[1:]:
        assert row["client_weights"] == [1.0, 1.0] and all(c["metrics"] == {} for c in row["clients"])
        assert row["privacy"]["local_epsilon"] == {"0": None, "1": None}  # sigma 0: no guarantee
