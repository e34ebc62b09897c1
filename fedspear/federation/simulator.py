"""The in-process federated simulator: ``fedspear run``.

One process holds the base model and the global adapter. Each round it samples K clients, runs the
algorithm's rollout for all of them at once (they share the round-start adapter, so generation is batched
across clients), trains each client from the global adapter, aggregates, evaluates on schedule, appends a
row to ``metrics.jsonl`` and checkpoints. Every random choice is seeded by (seed, round[, client]), so a run
resumed after round k ends with the same adapter as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from fedspear.algorithms import get_algorithm
from fedspear.algorithms.base import ClientJob, LocalUpdateResult
from fedspear.config import Config, ConfigError, apply_overrides, config_from_dict
from fedspear.evaluation import evaluate
from fedspear.federation.aggregation import aggregate, build_server_optimizer
from fedspear.federation.partition import client_seed, dirichlet_partition, sample_clients
from fedspear.federation.schedule import round_lr, should_evaluate
from fedspear.models import Engine, build_engine, save_adapter
from fedspear.records import RunRecord, write_report
from fedspear.tasks import get_task
from fedspear.tasks.base import DataError, Example

logger = logging.getLogger("fedspear")

# Summed over clients in a round's "aggregate" metrics.
COUNT_KEYS = ("prompts", "generations", "wins", "wins_y0", "wins_revision", "losses", "losses_used",
              "losses_fixed", "losses_unfixed", "revision_successes", "needs_revision", "tokens_generated",
              "tokens_trained", "tokens_forward", "steps", "skipped_steps", "skipped_no_wins",
              "generation_s", "feedback_s", "training_s")

# Test hook: called after each completed round with (round_idx); a test makes it raise to simulate a crash.
after_round_hook: Callable[[int], None] | None = None


@dataclass
class Federation:
    """The static parts of a run: data, partition, engine, algorithm module."""

    cfg: Config
    record: RunRecord
    engine: Engine
    clients: list[list[Example]]
    eval_set: list[Example]
    algorithm: Any
    load_stats: dict[str, Any]


def setup(cfg: Config, record: RunRecord) -> Federation:
    """Load the task data, partition it over clients and load the model."""
    task = get_task(cfg.data.dataset)
    data = task.load(cfg)
    if not data.train:
        raise DataError(f"task '{cfg.data.dataset}' has no training rows; check data.path / data.split")
    if not data.eval:
        raise DataError(f"task '{cfg.data.dataset}' has no evaluation rows; check data.eval_split / data.path")
    parts = dirichlet_partition([ex.label for ex in data.train], cfg.data.num_clients, cfg.data.dirichlet_alpha,
                                cfg.data.max_examples_per_client, cfg.data.seed)
    clients = [[data.train[i] for i in idx] for idx in parts]
    engine = build_engine(cfg, task)
    stats = {"read": data.stats.read, "kept": data.stats.kept, "skipped": dict(data.stats.skipped),
             "train": len(data.train), "eval": len(data.eval), "client_sizes": [len(c) for c in clients]}
    if data.stats.num_skipped:
        logger.warning("skipped %d malformed rows: %s", data.stats.num_skipped, data.stats.skipped)
    return Federation(cfg, record, engine, clients, data.eval, get_algorithm(cfg.algorithm.name), stats)


def _sum_metrics(results: list[dict[str, Any]]) -> dict[str, Any]:
    agg: dict[str, Any] = {k: 0 for k in COUNT_KEYS}
    for m in results:
        for k in COUNT_KEYS:
            agg[k] += m.get(k, 0) or 0
    agg["y0_accuracy"] = agg["wins_y0"] / agg["prompts"] if agg["prompts"] else None
    agg["needs_revision_pct"] = 100.0 * agg["needs_revision"] / agg["prompts"] if agg["prompts"] else None
    return agg


def _rollouts(fed: Federation, jobs: list[ClientJob]) -> list[Any]:
    """All clients' rollouts in one batched call; on failure, client by client so one bad client is isolated."""
    try:
        return fed.algorithm.rollout(fed.engine, jobs)
    except Exception as exc:  # noqa: BLE001 - a failing client must not stop the round
        logger.warning("batched rollout failed (%s); retrying client by client", exc)
    out = []
    for job in jobs:
        try:
            out.append(fed.algorithm.rollout(fed.engine, [job])[0])
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    return out


def run_round(fed: Federation, round_idx: int, server_opt: Any) -> dict[str, Any]:
    """One federated round: sample, rollout, train, aggregate. Returns the metrics row (without eval)."""
    cfg, engine = fed.cfg, fed.engine
    start = time.perf_counter()
    selected = sample_clients(cfg.data.num_clients, cfg.fl.clients_per_round, cfg.data.seed, round_idx)
    lr = round_lr(round_idx, cfg.fl.rounds, cfg.optim)
    jobs = [ClientJob(cid, round_idx, fed.clients[cid], lr, client_seed(cfg.data.seed, round_idx, cid))
            for cid in selected]
    rollouts = _rollouts(fed, jobs)
    client_rows, results = [], []
    for job, data in zip(jobs, rollouts):
        row: dict[str, Any] = {"client_id": job.client_id}
        try:
            if isinstance(data, Exception):
                raise data
            res: LocalUpdateResult = fed.algorithm.train(engine, job, data)
        except Exception as exc:  # noqa: BLE001 - recorded, excluded from aggregation
            logger.warning("client %d failed in round %d: %s", job.client_id, round_idx, exc)
            row.update(weight=0.0, error=f"{type(exc).__name__}: {exc}", metrics={})
            client_rows.append(row)
            continue
        row.update(weight=res.weight, metrics=res.metrics)
        client_rows.append(row)
        results.append((res.adapter, res.weight))
    agg_start = time.perf_counter()
    failed = sum(1 for r in client_rows if "error" in r)
    info: dict[str, Any]
    if len(results) < cfg.fl.min_clients:
        new_state, info = {k: v.clone() for k, v in engine.global_state.items()}, {"num_aggregated": 0}
        info["skipped_round"] = f"only {len(results)} client results < fl.min_clients={cfg.fl.min_clients}"
    else:
        new_state, info = aggregate(engine.global_state, results, server_opt)
    info["num_failed_clients"] = failed
    engine.global_state = new_state
    engine.load_global()
    metrics = [r["metrics"] for r in client_rows]
    agg = _sum_metrics(metrics)
    return {
        "round": round_idx, "lr": lr, "selected_clients": selected, "clients": client_rows, "aggregate": agg,
        "aggregation": info,
        "time": {"round_s": time.perf_counter() - start, "generation_s": agg["generation_s"],
                 "feedback_s": agg["feedback_s"], "training_s": agg["training_s"],
                 "aggregation_s": time.perf_counter() - agg_start},
    }


def _save_checkpoint(fed: Federation, round_idx: int, server_opt: Any) -> None:
    ckpt = fed.record.checkpoint_dir()
    ckpt.mkdir(parents=True, exist_ok=True)
    tensors = {f"global.{k}": v.contiguous() for k, v in fed.engine.global_state.items()}
    if server_opt is not None:
        tensors.update(server_opt.to_tensors())
    tmp = ckpt / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, ckpt / "state.safetensors")
    meta_tmp = ckpt / "round.json.tmp"
    meta_tmp.write_text(json.dumps({"round": round_idx}))
    os.replace(meta_tmp, ckpt / "round.json")


def _load_checkpoint(fed: Federation, server_opt: Any) -> int:
    ckpt = fed.record.checkpoint_dir()
    round_idx = json.loads((ckpt / "round.json").read_text())["round"]
    tensors = load_file(str(ckpt / "state.safetensors"))
    fed.engine.global_state = {k[len("global."):]: v for k, v in tensors.items() if k.startswith("global.")}
    if server_opt is not None:
        server_opt.from_tensors(tensors)
    fed.engine.load_global()
    return round_idx


def _eval_row(fed: Federation, round_idx: int) -> dict[str, Any]:
    fed.engine.load_global()
    result = evaluate(fed.engine, fed.eval_set)
    save_adapter(fed.engine, fed.engine.global_state, fed.record.adapter_dir(round_idx))
    return result


def _summary(row: dict[str, Any], rounds: int) -> str:
    agg, ev = row.get("aggregate", {}), row.get("eval")
    parts = [f"round {row['round']:>3}/{rounds}"]
    if agg:
        y0 = agg.get("y0_accuracy")
        parts += [f"lr {row['lr']:.2e}", f"y0 acc {y0:.2f}" if y0 is not None else "y0 acc -",
                  f"wins {agg['wins']} (rev {agg['wins_revision']})", f"losses {agg['losses']}",
                  f"{row['time']['round_s']:.1f}s"]
    if ev:
        groups = " ".join(f"{g} {a:.2f}" for g, a in ev.get("groups", {}).items())
        parts.append(f"eval {ev['accuracy']:.3f}" + (f" ({groups})" if groups else ""))
    return " | ".join(parts)


def train_loop(fed: Federation, start_round: int, server_opt: Any) -> None:
    """Rounds ``start_round .. fl.rounds``, each followed by its checkpoint."""
    cfg = fed.cfg
    bar = tqdm(range(start_round, cfg.fl.rounds + 1), desc="rounds", unit="round", dynamic_ncols=True,
               disable=None)
    for round_idx in bar:
        row = run_round(fed, round_idx, server_opt)
        if should_evaluate(round_idx, cfg.fl.rounds, cfg.data):
            ev_start = time.perf_counter()
            row["eval"] = _eval_row(fed, round_idx)
            row["time"]["eval_s"] = time.perf_counter() - ev_start
        fed.record.append_metrics(row)
        _save_checkpoint(fed, round_idx, server_opt)
        tqdm.write(_summary(row, cfg.fl.rounds))
        if after_round_hook is not None:
            after_round_hook(round_idx)


def _finish(fed: Federation) -> Path:
    final = fed.record.adapter_dir(fed.cfg.fl.rounds)
    if not final.exists():
        save_adapter(fed.engine, fed.engine.global_state, final)
    report = write_report(fed.record.run_dir)
    tqdm.write(f"run finished: {fed.record.run_dir} (report: {report})")
    return fed.record.run_dir


def expand_output_dir(cfg: Config) -> str:
    """Fill ``{time}``, ``{algorithm}``, ``{dataset}`` and ``{seed}`` placeholders in ``output_dir``."""
    try:
        return cfg.output_dir.format(time=time.strftime("%Y%m%d-%H%M%S"), algorithm=cfg.algorithm.name,
                                     dataset=cfg.data.dataset, seed=cfg.data.seed)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"output_dir: bad placeholder in '{cfg.output_dir}' ({exc}); use {{time}}, "
                          "{algorithm}, {dataset} or {seed}") from None


def run(cfg: Config) -> Path:
    """Start a new run in ``cfg.output_dir`` (placeholders expanded); returns the run folder."""
    cfg.output_dir = expand_output_dir(cfg)
    record = RunRecord(Path(cfg.output_dir))
    record.create(cfg)
    fed = setup(cfg, record)
    (record.run_dir / "data_stats.json").write_text(json.dumps(fed.load_stats, indent=1))
    server_opt = build_server_optimizer(cfg.fl)
    ev_start = time.perf_counter()
    row0 = {"round": 0, "eval": _eval_row(fed, 0), "time": {"eval_s": time.perf_counter() - ev_start},
            "data": fed.load_stats}
    record.append_metrics(row0)
    _save_checkpoint(fed, 0, server_opt)
    tqdm.write(_summary(row0, cfg.fl.rounds))
    train_loop(fed, 1, server_opt)
    return _finish(fed)


def resume(run_dir: Path, overrides: list[str] | None = None) -> Path:
    """Continue an interrupted run from its last checkpoint (round k+1 onward)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    import yaml

    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    if overrides:
        apply_overrides(cfg, overrides)
    record = RunRecord(run_dir)
    if not (record.checkpoint_dir() / "round.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoint to resume from; start it again with `fedspear run`")
    fed = setup(cfg, record)
    server_opt = build_server_optimizer(cfg.fl)
    done = _load_checkpoint(fed, server_opt)
    record.truncate_metrics_after(done)
    tqdm.write(f"resuming {run_dir} after round {done}")
    train_loop(fed, done + 1, server_opt)
    return _finish(fed)
