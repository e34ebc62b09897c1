"""Where a bench round's time goes, and the floor under it: ``python bench/profile_round.py``.

Runs the shared round-time bench (``bench/round_time.py``'s setting) for SPEAR and GRPO and records every
``generate`` call of the timed rounds: how many sequences, how many prompt tokens (every one of them must pass
through the model once: the prefill), how many new tokens, and the seconds taken. For each call it then times a
bare forward pass over exactly the same left-padded batches (``logits_to_keep=1``, no sampling, no cache
growth): the prefill floor, which no generation strategy that keeps the prompts can beat. Training is already
one forward+backward per trained token, so its floor is its own time at this batch shape. The floors are
timed after the rounds, so the rounds' own times are as ``round_time.py`` measures them. The report prints:

    phase     calls  sequences  prompt tok  new tok  seconds  prefill floor s

and, with ``--ops``, the operator table of one prefill batch of the largest call (torch.profiler), which shows how
that floor splits between attention, matmuls and elementwise work.

Usage:
    python bench/profile_round.py                 # SPEAR and GRPO, 1 warm-up + 3 profiled rounds, torch's threads
    python bench/profile_round.py --threads 1 --ops
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import round_time
import torch


def _padded_batches(prompts: list[list[int]], batch_size: int, max_prompt: int, pad: int):
    """The batches ``fedspear.generation.generate`` builds: length-sorted, left-padded."""
    prompts = [p[-max_prompt:] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        batch = [prompts[i] for i in order[start : start + batch_size]]
        width = max(len(p) for p in batch)
        ids_BT = torch.full((len(batch), width), pad, dtype=torch.long)
        mask_BT = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            ids_BT[row, width - len(ids) :] = torch.tensor(ids)
            mask_BT[row, width - len(ids) :] = 1
        yield ids_BT, mask_BT


@torch.no_grad()
def prefill_seconds(policy, prompts: list[list[int]], max_new_tokens: int) -> float:
    """Seconds of one bare forward over the prompts, batched exactly as generation batches them."""
    from fedspear.generation import merged_lora

    model = policy.model
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    with merged_lora(policy):
        for ids_BT, mask_BT in _padded_batches(prompts, policy.gen_batch_size,
                                               max(1, policy.max_seq_len - max_new_tokens),
                                               policy.tokenizer.pad_token_id):
            model(input_ids=ids_BT.to(policy.device), attention_mask=mask_BT.to(policy.device), logits_to_keep=1)
    model.train(was_training)
    return time.perf_counter() - start


class CallLog:
    """Wraps the ``generate`` of the module holding an algorithm's rollout and records each call (phase = first
    answers or revision k)."""

    def __init__(self, module) -> None:
        self.module, self.real, self.calls, self.active = module, module.generate, [], False
        module.generate = self

    def __call__(self, policy, prompts, settings, seed, stats=None, *args, **kwargs):
        start = time.perf_counter()
        out = self.real(policy, prompts, settings, seed, stats, *args, **kwargs)
        seconds = time.perf_counter() - start
        if self.active:
            self.calls.append({"n": len(prompts), "prompt_tokens": sum(len(p) for p in prompts),
                               "new_tokens": sum(len(c.ids) for c in out), "seconds": seconds,
                               "prompts": prompts, "max_new_tokens": settings.max_new_tokens})
        return out

    def restore(self) -> None:
        self.module.generate = self.real


def profile(bench_dir: Path, algorithm: str, rounds: int) -> dict:
    """Run 1 warm-up + ``rounds`` rounds and return the per-call log and the rounds' phase times."""
    import inspect

    from fedspear.federation import simulator
    from fedspear.federation.aggregation import build_server_optimizer
    from fedspear.records import RunRecord

    cfg = round_time.bench_config(bench_dir, algorithm, rounds + 1, [])
    record = RunRecord(Path(cfg.output_dir))
    record.create(cfg)
    fed = simulator.setup(cfg, record)
    module = inspect.getmodule(type(fed.algorithm).rollout)
    if hasattr(module, "run_requests") or not hasattr(module, "generate"):  # SPEAR / feedback-SFT: the request queue
        from fedspear import rollout_queue as module
    log = CallLog(module)
    server_opt = build_server_optimizer(cfg.fl)
    times = []
    try:
        for round_idx in range(1, rounds + 2):
            log.active = round_idx > 1
            row = simulator.run_round(fed, round_idx, server_opt)
            if round_idx > 1:
                times.append(row.time)
    finally:
        log.restore()
    for call in log.calls:  # after the rounds, so that the floors' own time is not in the rounds' times
        call["floor"] = prefill_seconds(fed.policy, call["prompts"], call["max_new_tokens"])
    return {"calls": log.calls, "times": times, "policy": fed.policy}


def report(algorithm: str, result: dict, rounds: int) -> None:
    calls, times = result["calls"], result["times"]
    per_round = len(calls) // max(1, rounds)
    print(f"\n{algorithm}: {rounds} rounds, {per_round} generate calls per round (all clients batched)")
    print(f"{'call':<14}{'seqs':>6}{'prompt tok':>12}{'mean len':>10}{'new tok':>9}{'gen s':>8}{'prefill floor s':>17}")
    for k in range(per_round):
        group = calls[k::per_round]
        name = "first answers" if k == 0 else f"revision {k}"
        med = {key: statistics.median(c[key] for c in group) for key in ("n", "prompt_tokens", "new_tokens",
                                                                          "seconds", "floor")}
        print(f"{name:<14}{med['n']:>6.0f}{med['prompt_tokens']:>12.0f}{med['prompt_tokens'] / med['n']:>10.0f}"
              f"{med['new_tokens']:>9.0f}{med['seconds']:>8.2f}{med['floor']:>17.2f}")
    gen = statistics.median(t["generation_s"] for t in times)
    floor = statistics.median(sum(c["floor"] for c in calls[r * per_round : (r + 1) * per_round])
                              for r in range(rounds))
    train = statistics.median(t["training_s"] for t in times)
    fb = statistics.median(t["feedback_s"] for t in times)
    rnd = statistics.median(t["round_s"] for t in times)
    print(f"round {rnd:.2f} s = generation {gen:.2f} + feedback {fb:.3f} + training {train:.2f} + rest "
          f"{rnd - gen - fb - train:.2f}")
    print(f"floor with these prompts: prefill {floor:.2f} + training {train:.2f} + feedback {fb:.3f} = "
          f"{floor + train + fb:.2f} s (generation is {gen / floor if floor else 0:.2f}x its prefill floor)")


def op_table(result: dict) -> None:
    """torch.profiler's operator table for one prefill batch of the largest generate call."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    policy = result["policy"]
    call = max(result["calls"], key=lambda c: c["prompt_tokens"])
    batch = call["prompts"][: policy.gen_batch_size]
    prefill_seconds(policy, batch, call["max_new_tokens"])
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        prefill_seconds(policy, batch, call["max_new_tokens"])
    print(f"\nprefill of {len(batch)} prompts x ~{call['prompt_tokens'] / call['n']:.0f} tokens, by operator:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def main(argv: list[str] | None = None) -> None:
    parser = round_time.bench_parser(__doc__, 3, "profiled rounds after one warm-up round")
    parser.add_argument("--ops", action="store_true", help="also print the operator table of one prefill batch")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    bench_dir = round_time.build_bench(args.bench_dir or Path(tempfile.gettempdir()) / "fedspear-bench")
    print(f"profile of {round_time.SHARED_BENCH / 'bench.yaml'} on cpu ({torch.get_num_threads()} threads)")
    for algorithm in args.algorithms.split(","):
        result = profile(bench_dir, algorithm, args.rounds)
        report(algorithm, result, args.rounds)
        if args.ops:
            op_table(result)


if __name__ == "__main__":
    main()
