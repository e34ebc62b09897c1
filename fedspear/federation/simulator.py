"""The in-process federated simulator: ``fedspear run``.

One process holds the base model and the global adapter. Each round the :class:`FederatedServer`
(``server.py``) samples K clients and fixes their learning rate and seeds; the clients run here
(``client.py``), by default with one batched rollout for all of them (they share the round-start adapter;
``fl.batch_clients=false`` makes each client generate alone, exactly as a Flower client does), each trains
from the global adapter, and the server aggregates, evaluates on schedule, appends a row to
``metrics.jsonl`` and checkpoints. Every random choice is seeded by (seed, round[, client]), so a run
resumed after round k ends with the same adapter as an uninterrupted run. The Flower apps
(``fedspear/flower``) run the same server and client code across processes or machines.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from fedspear.algorithms.base import Algorithm
from fedspear.config import Config, load_config
from fedspear.federation.aggregation import ServerOptimizer, build_server_optimizer
from fedspear.federation.assembly import assemble
from fedspear.federation.client import run_clients
from fedspear.federation.observers import RoundObserver
from fedspear.federation.rounds import RoundRow
from fedspear.federation.server import (
    COUNT_KEYS,
    ClientReport,
    FederatedServer,
    RoundPlan,
    expand_output_dir,
    new_output_dir,
)
from fedspear.models import Policy
from fedspear.records import RunFileError, RunRecord, disk_errors
from fedspear.tasks.base import Example

logger = logging.getLogger("fedspear")

__all__ = ["COUNT_KEYS", "Federation", "after_round_hook", "expand_output_dir", "new_output_dir", "resume", "run",
           "run_round", "setup"]

# Test hook: called after each completed round with (round_idx); a test makes it raise to simulate a crash.
after_round_hook: Callable[[int], None] | None = None


@dataclass
class Federation:
    """The static parts of a run: data, partition, policy, algorithm, task.

    ``cfg`` carries the policy's (capped) ``model.max_seq_len``; ``task`` is the one clients and evaluation use
    (it hears ``feedback.provider``).
    """

    cfg: Config
    record: RunRecord
    policy: Policy
    clients: list[list[Example]]
    eval_set: list[Example]
    algorithm: Algorithm[Any]
    load_stats: dict[str, Any]
    task: Any = None


def setup(cfg: Config, record: RunRecord) -> Federation:
    """Assemble the run (:func:`fedspear.federation.assembly.assemble`: data, partition, model, algorithm)."""
    run = assemble(cfg)
    return Federation(run.cfg, record, run.policy, run.clients, run.eval_set, run.algorithm, run.stats, run.task)


class LocalClients:
    """The simulator's client runner: every selected client runs in this process on the shared policy
    (:func:`fedspear.federation.client.run_clients`), from the round-start adapter the server passes."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed

    def __call__(self, plan: RoundPlan, global_state: dict[str, torch.Tensor]) -> list[ClientReport]:
        fed = self.fed
        jobs = [plan.job(cid, fed.clients[cid], global_state) for cid in plan.selected]
        results = run_clients(fed.policy, fed.algorithm, jobs, fed.cfg, batched=fed.cfg.fl.batch_clients)
        return [ClientReport.failure(job.client_id, f"{type(res).__name__}: {res}") if isinstance(res, Exception)
                else ClientReport.from_result(job.client_id, res) for job, res in zip(jobs, results, strict=True)]


def _server(fed: Federation, server_opt: ServerOptimizer | None,
            observers: Sequence[RoundObserver] = ()) -> FederatedServer:
    return FederatedServer(fed.cfg, fed.record, fed.policy, fed.eval_set, server_opt, task=fed.task,
                           observers=observers)


def run_round(fed: Federation, round_idx: int, server_opt: Any) -> RoundRow:
    """One federated round: sample, rollout, train, aggregate. Returns the round's row (without eval).

    The round starts from the adapter the policy's live model holds (the previous call's new global adapter, which
    the server puts there after aggregating) and ends with the new one there."""
    return _server(fed, server_opt).run_round(round_idx, LocalClients(fed))


def _after_round(round_idx: int) -> None:
    if after_round_hook is not None:  # looked up at call time, so tests can patch it
        after_round_hook(round_idx)


def train_loop(fed: Federation, start_round: int, server_opt: Any) -> None:
    """Rounds ``start_round .. fl.rounds``, each followed by its checkpoint."""
    _server(fed, server_opt).run_rounds(LocalClients(fed), start_round, _after_round)


def run(cfg: Config, observers: Sequence[RoundObserver] = ()) -> Path:
    """Start a new run in ``cfg.output_dir`` (placeholders expanded); returns the run folder.

    ``observers`` (:class:`~fedspear.federation.observers.RoundObserver`) are told of every round after the run's
    own (metrics.jsonl and checkpoint, trackers, console line); docs/extending.md, "Watching the rounds".

    The run holds its folder until it ends (:meth:`RunRecord.create`); with ``{time}`` in ``output_dir`` it makes a
    new folder (``-1``, ``-2``... appended when runs start in the same second, :func:`new_output_dir`). A folder
    left by a start that failed before round 0 completed (no checkpoint, no live process) is started again.

    Raises:
        RunDirError: ``output_dir`` cannot hold a run (empty, a file, below a file, not writable).
        RunInUseError: another live process holds ``output_dir``.
        RunExistsError: ``output_dir`` already holds a run that completed round 0.
        RunStopped: ``fl.max_idle_rounds`` rounds in a row had no usable client update.
    """
    expanded = expand_output_dir(cfg)  # once: the clock in {time} must not move between the two uses below
    made = RunRecord(Path(expanded)).first_missing_folder()  # what this start creates (removed again if it fails)
    cfg = replace(cfg, output_dir=new_output_dir(cfg, expanded))  # a copy: the caller's Config is never written
    record = RunRecord(Path(cfg.output_dir))
    if Path(cfg.output_dir) != Path(expanded):  # a suffixed name ("-1") that this start created itself
        made = Path(cfg.output_dir)
    return _start(cfg, record, keep_config=False, made=made, observers=observers)


def _start(cfg: Config, record: RunRecord, keep_config: bool, made: Path | None,
           observers: Sequence[RoundObserver] = ()) -> Path:
    """Create the run folder, set up, open the trackers, then round 0 and the rounds; the folder is this run's
    (locked, :meth:`RunRecord.lock`) until it returns or raises.

    Whatever fails before round 0 starts (data, task probe, model, trackers) removes what this start wrote, and
    the folders this start created (``made``: the outermost of them, or None), so the same command can simply be
    run again; ``keep_config`` keeps config.yaml (a ``--resume`` of a folder whose earlier start failed).
    """
    record.create(cfg)  # locks the folder; clears what an earlier failed start left
    with record:
        try:
            fed = setup(cfg, record)
            with disk_errors(record.run_dir / "data_stats.json", "the data statistics", record.resume_advice()):
                (record.run_dir / "data_stats.json").write_text(json.dumps(fed.load_stats, indent=1))
            server = _server(fed, build_server_optimizer(fed.cfg.fl), observers)
            server.open_trackers()
        except BaseException:
            record.discard_start(remove_config=not keep_config, made=made)
            raise
        server.start(fed.load_stats)
        server.run_rounds(LocalClients(fed), 1, _after_round)
        return server.finish()


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The config.yaml of a run folder, with ``overrides`` applied (ConfigError names the file when it is empty,
    has duplicate keys or bad values)."""
    if not (Path(run_dir) / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    return load_config(Path(run_dir) / "config.yaml", overrides)


def resume(run_dir: Path, overrides: list[str] | None = None, observers: Sequence[RoundObserver] = ()) -> Path:
    """Continue an interrupted run from its last checkpoint (round k+1 onward); ``observers`` as in :func:`run`.

    A folder whose run never completed round 0 (no checkpoint) is started again from its config.yaml.

    Raises:
        RunInUseError: another live process holds the folder (the run is still going).
        RunFileError: the checkpoint or metrics.jsonl is damaged (the message names the file).
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    record = RunRecord(run_dir)
    record.check_writable()  # a read-only folder fails here, not after a whole round (and before the lock file)
    record.lock()  # before reading anything: a folder a live run holds is never resumed or restarted
    with record:
        if not record.has_checkpoint():
            if record.has_run():
                raise RunFileError(f"{record.checkpoint_path()}: missing, but {record.metrics_path} has rounds after "
                                   f"round 0; this run cannot be resumed: start it again with a new output_dir")
            logger.warning("%s has no checkpoint (its start failed before round 0 completed); starting it again",
                           run_dir)
            return _start(replace(cfg, output_dir=str(run_dir)), record, keep_config=True, made=None,
                          observers=observers)
        record.read_checkpoint()  # verify before loading data and model (RunFileError names a damaged file)
        fed = setup(cfg, record)
        server = _server(fed, build_server_optimizer(fed.cfg.fl), observers)
        done = server.resume()
        server.open_trackers()  # a tracker that cannot start fails before the first resumed round
        server.run_rounds(LocalClients(fed), done + 1, _after_round)
        return server.finish()
