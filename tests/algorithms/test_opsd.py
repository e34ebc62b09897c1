"""OPSD client update: the federated run end to end, the teacher prompt, and a teacher frozen at the round start."""

from __future__ import annotations

import torch
from conftest import build_rig, require_shared_data, run_tiny

from fedspear.algorithms import opsd
from fedspear.algorithms.base import ClientJob
from fedspear.algorithms.common import completion_logits, make_batch
from fedspear.algorithms.opsd import OPSD
from fedspear.config import load_config
from fedspear.tasks import get_task
from fedspear.tasks.base import Example

EXAMPLE = Example("q1", "Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nAnswer:", "B", "B",
                  ("oxygen", "carbon dioxide"))


# Evaluate only at rounds 0 and 2, on 4 rows.
def _rig(model_dir, **kw):
    over = {"model.model_name": str(model_dir), "model.dtype": "fp32", "model.device_map": "cpu",
            "model.gradient_checkpointing": False, "lora.r": 4, "gen.max_new_tokens_y0": 4, "gen.do_sample": True,
            "gen.temperature": 1.0}
    over.update(kw)
    return build_rig(load_config(None, [f"{k}={v}" for k, v in over.items()]), get_task("arc_challenge"))


def _algo(policy):
    return OPSD.from_config(policy.cfg, policy.task)


def test_opsd_federated_run_two_rounds_two_clients(tiny_qwen, tmp_path):
    require_shared_data()
    run_dir, rows = run_tiny(tiny_qwen, tmp_path / "run", **{"algorithm.name": "opsd", "fl.local_rollout_steps": 4})
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["aggregation"]["num_aggregated"] == 2
        for client in row["clients"]:
            m = client["metrics"]
            assert (m["prompts"], m["generations"], client["weight"]) == (4, 4, 4.0)  # one y0 per prompt
            assert m["steps"] == 2 and m["tokens_trained"] > 0 and m["tokens_forward"] > m["tokens_trained"]
            assert m["loss_distill"] >= 0.0 and m["teacher_prompts_truncated"] == 0
    assert (run_dir / "adapters" / "round_0002" / "adapter_config.json").is_file()


def test_teacher_reads_privileged_context_before_the_task_and_the_student_does_not(tiny_qwen):
    policy = _rig(tiny_qwen)
    data = _algo(policy).rollout(policy, [ClientJob(0, 1, [EXAMPLE], 1e-3, seed=5)])[0]
    (pair,) = data.pairs
    teacher_text = policy.tokenizer.decode(pair.teacher.prompt_ids)
    assert teacher_text.index("Correct answer: B. carbon dioxide") < teacher_text.index(EXAMPLE.prompt)
    assert teacher_text.endswith(EXAMPLE.prompt)
    assert pair.student.prompt_ids == policy.encode(EXAMPLE.prompt)
    assert pair.teacher.completion_ids == pair.student.completion_ids  # the same sampled ids
    assert data.metrics["generations"] == 1 and data.metrics["y0_accuracy"] in (0.0, 1.0)


def test_teacher_stays_the_round_start_adapter_while_the_student_moves(tiny_qwen, monkeypatch):
    # LoRA dropout on: a teacher pass in train mode would give different logits at every micro-step.
    policy = _rig(tiny_qwen, **{"lora.dropout": 0.3, "fl.local_train_steps": 3, "optim.batch_size": 1,
                                   "optim.grad_accum_steps": 1, "optim.lr": 5e-2, "spear.lambda_anchor": 0.0})
    job = ClientJob(0, 1, [EXAMPLE], 5e-2, seed=5)
    data = _algo(policy).rollout(policy, [job])[0]
    calls = []
    real = opsd.teacher_logits

    def spy(eng, params, batch):
        live_moved = any(not torch.equal(p.detach(), job.start_state[k]) for k, p in eng.adapter.params.items())
        calls.append((real(eng, params, batch).clone(), live_moved))
        return calls[-1][0]

    monkeypatch.setattr(opsd, "teacher_logits", spy)
    result = _algo(policy).train(policy, job, data)
    assert len(calls) == 3 and [moved for _, moved in calls] == [False, True, True]
    for logits, _ in calls[1:]:
        assert torch.equal(logits, calls[0][0])  # unchanged across micro-steps
    policy.adapter.set(job.start_state)
    policy.model.eval()
    batch = make_batch([data.pairs[0].teacher], policy.tokenizer.pad_token_id, 512, policy.device)
    with torch.no_grad():
        torch.testing.assert_close(calls[0][0], completion_logits(policy.model, batch), rtol=0, atol=1e-6)
    assert result.weight == 1.0 and result.metrics["steps"] == 3
    assert any(not torch.equal(v, job.start_state[k]) for k, v in result.adapter.items())  # the student moved
