"""The server side of a federated run, shared by the in-process simulator and the Flower ServerApp.

A :class:`FederatedServer` owns the global adapter (``FederatedServer.global_state``), the server optimizer and the run
folder. Each round it plans who takes part (:meth:`FederatedServer.plan_round`: the sampled clients, the round's
learning rate and every client's seed), hands the plan to a *client runner* (in-process clients for the simulator,
Flower messages for the ServerApp), then aggregates what came back (:meth:`FederatedServer.aggregate_round`:
failed clients are recorded and excluded, fewer than ``fl.min_clients`` results keep the global adapter),
evaluates on schedule and hands the round's :class:`~fedspear.federation.rounds.RoundRow` to its observers
(:meth:`FederatedServer.end_round`; :mod:`fedspear.federation.observers`): the metrics.jsonl writer (which also
commits the checkpoint), the trackers, the console line, and any the caller added.

Every random choice is seeded by (seed, round[, client]), so whoever runs the clients, the same plan and the
same client results give the same global adapter, and a run resumed from its checkpoint after round k ends
with the same adapter as an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import string
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from fedspear import metrics, privacy
from fedspear.algorithms.base import ClientJob, LocalUpdateResult
from fedspear.config import Config, ConfigError
from fedspear.evaluation import evaluate
from fedspear.federation.aggregation import ServerOptimizer, aggregate, build_server_optimizer, is_finite_state
from fedspear.federation.observers import ConsoleSummary, RecordWriter, RoundObserver
from fedspear.federation.partition import client_seed
from fedspear.federation.resources import client_bytes, round_resources
from fedspear.federation.rounds import ClientRow, RoundRow
from fedspear.federation.schedule import round_lr, should_evaluate
from fedspear.models import Policy, save_adapter
from fedspear.records import RunFileError, RunRecord, claim_new_folder, disk_errors, durable_step
from fedspear.report import write_report
from fedspear.tasks.base import Example
from fedspear.tracking import Trackers

logger = logging.getLogger("fedspear")

State = dict[str, torch.Tensor]

# Summed over clients in a round's "aggregate" metrics: the metric registry's (fedspear.metrics).
COUNT_KEYS = metrics.ROUND_COUNTS


class RunStopped(RuntimeError):
    """The run stopped early (e.g. ``fl.max_idle_rounds`` rounds without a usable client update); the run folder,
    its metrics and its report say why."""


@dataclass
class RoundPlan:
    """Who takes part in one round and with what settings; a pure function of (config, round).

    Attributes:
        round_idx: 1-based round index.
        lr: the clients' learning rate this round.
        selected: the sampled client ids, ascending.
        seeds: each selected client's seed, ``client_seed(data.seed, round_idx, client_id)``.
        start: ``time.perf_counter()`` when the round was planned (the round's wall time starts here).
    """

    round_idx: int
    lr: float
    selected: list[int]
    seeds: dict[int, int]
    start: float = field(default_factory=time.perf_counter)

    def job(self, client_id: int, examples: list[Example], start_state: State | None = None) -> ClientJob:
        """The :class:`ClientJob` of one selected client, given its local examples and the round-start adapter."""
        return ClientJob(client_id, self.round_idx, examples, self.lr, self.seeds[client_id], start_state)


@dataclass
class ClientReport:
    """What the server learned from one selected client in a round.

    Attributes:
        client_id: the client.
        adapter: its adapter state (PEFT names, CPU tensors), or None without an update or on failure.
        weight: aggregation weight (n_eff); 0 without an update or on failure.
        metrics: the client's scalar metrics.
        error: why the client failed (an exception, a lost node, a timeout), or None when it succeeded.
        details: runtime-specific facts merged into the client's metrics row (e.g. a Flower node id).
    """

    client_id: int
    adapter: State | None = None
    weight: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, client_id: int, result: LocalUpdateResult) -> ClientReport:
        """A successful client's report."""
        return cls(client_id, result.adapter, float(result.weight), dict(result.metrics))

    @classmethod
    def failure(cls, client_id: int, error: str, details: dict[str, Any] | None = None) -> ClientReport:
        """A failed client's report (excluded from aggregation, counted in ``num_failed_clients``)."""
        return cls(client_id, error=error, details=dict(details or {}))


class ClientRunner(Protocol):
    """Runs a round's selected clients from the given global adapter and reports on each of them.

    A runner may also have a ``fields`` attribute: a dict of extra keys that :meth:`FederatedServer.run_round`
    merges into the round's row after the call (:attr:`RoundRow.extra`; the served clients' interface figures, for
    example).
    """

    def __call__(self, plan: RoundPlan, global_state: State) -> list[ClientReport]: ...


def sum_client_metrics(results: list[dict[str, Any]]) -> dict[str, Any]:
    """A round's ``aggregate`` metrics: :data:`COUNT_KEYS` summed over clients, plus y0 accuracy and revision share.

    Args:
        results: the clients' metrics dicts (missing keys count as 0).

    Returns:
        ``{key: sum}`` for every count key, ``y0_accuracy`` = wins_y0 / first answers sampled and ``needs_revision_pct``
        (both None when there were no prompts).
    """
    agg: dict[str, Any] = {k: 0 for k in COUNT_KEYS}
    for m in results:
        for k in COUNT_KEYS:
            agg[k] += m.get(k, 0) or 0
    # GRPO and RLTF-SD sample several first answers per prompt (samples_y0); SPEAR samples one (prompts).
    samples = agg["samples_y0"] or agg["prompts"]
    agg["y0_accuracy"] = agg["wins_y0"] / samples if samples else None
    agg["needs_revision_pct"] = 100.0 * agg["needs_revision"] / samples if samples else None
    return agg


class FederatedServer:
    """Server state and round logic of one run.

    Args:
        cfg: the run configuration.
        record: the run folder.
        policy: the server's policy: its live adapter at construction is the initial global adapter, and
            evaluation and adapter saving use its model. ``cfg.model.max_seq_len`` must be its (capped) length (``models.fit_config``).
        eval_set: the evaluation examples.
        server_opt: FedAdam/FedYogi state; None builds the one ``fl.aggregation`` names (None for FedAvg).
        publish: called as ``publish(round_idx, global_state)`` with each round's new global adapter, right after
            aggregation and before evaluation (e.g. to hand it to served clients' pages); None = nobody.
        task: the task evaluation scores with; None = the one ``data.dataset`` names.
        observers: more observers of the rounds (:class:`~fedspear.federation.observers.RoundObserver`), told after
            the run's own (metrics.jsonl and checkpoint, trackers, console line); ``server.observers`` lists all.
    """

    def __init__(self, cfg: Config, record: RunRecord, policy: Policy, eval_set: list[Example],
                 server_opt: ServerOptimizer | None = None,
                 publish: Callable[[int, State], None] | None = None, task: Any = None,
                 observers: Iterable[RoundObserver] = ()) -> None:
        self.cfg = cfg
        self._task = task
        self.record = record
        self.policy = policy
        self.global_state: State = policy.adapter.get()  # the global adapter (CPU tensors); the server owns it
        self.eval_set = eval_set
        self.server_opt = server_opt if server_opt is not None else build_server_optimizer(cfg.fl)
        self.publish = publish
        self.idle_rounds = 0  # consecutive rounds without a usable client update (fl.max_idle_rounds)
        self.participations: dict[int, int] = {}  # dp.mode=local: client id -> rounds taken part in
        self.rounds_run = 0  # rounds of the run so far (a resume counts the rounds before it from metrics.jsonl)
        self.first_error: str | None = None  # the first client error of the run
        self.trackers = Trackers(cfg, record.run_dir)
        # Told in this order: the row is on disk and checkpointed before anything else sees it.
        self.observers: list[RoundObserver] = [RecordWriter(record, self.save_checkpoint), self.trackers,
                                               ConsoleSummary(cfg.fl.rounds, record.run_dir), *observers]
        self._started: list[RoundObserver] = []  # observers whose on_start ran

    @property
    def task(self) -> Any:
        """The task evaluation scores with (the one ``data.dataset`` names unless given)."""
        if self._task is None:
            from fedspear.tasks import get_task

            self._task = get_task(self.cfg.data.dataset)
        return self._task

    def set_global(self, state: State) -> None:
        """Make ``state`` the global adapter and put it into the policy's live model (evaluation reads it)."""
        self.global_state = state
        self.policy.adapter.set(state)

    # ----------------------------------------------------------------------------------------- rounds

    def plan_round(self, round_idx: int) -> RoundPlan:
        """Sample the round's clients (:func:`fedspear.privacy.sample_round`) and fix its learning rate and client
        seeds."""
        cfg = self.cfg
        selected = privacy.sample_round(cfg, round_idx)  # dp.mode=central: secret Poisson sampling
        seeds = {cid: client_seed(cfg.data.seed, round_idx, cid) for cid in selected}
        return RoundPlan(round_idx, round_lr(round_idx, cfg.fl.rounds, cfg.optim), selected, seeds)

    def aggregate_round(self, plan: RoundPlan, reports: list[ClientReport],
                        extra: Mapping[str, Any] | None = None) -> RoundRow:
        """Aggregate the clients' reports into the new global adapter; returns the round's row (without eval).

        Failed clients are recorded with their error and excluded. When fewer than ``fl.min_clients`` clients
        succeeded, the round keeps the global adapter (``aggregation.skipped_round`` says why) and the
        server optimizer does not step (not under ``dp.mode=central``: every round is noised, see
        :func:`fedspear.privacy.central_dp_aggregate`). A selected client without a report counts as failed.

        Args:
            plan: the round's plan.
            reports: one report per selected client (any order).
            extra: more keys for the row (e.g. the runtime's own details; :meth:`RoundRow.merge`).

        Returns:
            The row: round, lr, selected_clients, clients, aggregate, aggregation, time, resources, privacy (when
            DP is on) and ``extra``. Under ``dp.mode=central`` the sampled ids and the per-client rows are left out
            (the sample is secret; ``num_selected`` counts it); ``aggregate`` then holds sums the noise does not
            cover.
        """
        by_client = {r.client_id: r for r in reports}
        mode = self.cfg.dp.mode
        client_rows: list[ClientRow] = []
        results = []
        for cid in plan.selected:
            report = by_client.get(cid) or ClientReport.failure(cid, "no report from the client")
            if mode == "local":  # uniform aggregation whatever a client claims (its release carries weight 1)
                report.weight = 1.0 if report.adapter is not None else 0.0
            traffic = client_bytes(self.global_state, report.adapter if report.error is None else None)
            client = ClientRow(cid, metrics=report.metrics, bytes_down=traffic["bytes_down"],
                               bytes_up=traffic["bytes_up"], details=dict(report.details))
            if report.error is not None:
                logger.warning("%s failed in round %d: %s", "a client" if mode == "central" else f"client {cid}",
                               plan.round_idx, report.error)
                client.weight, client.error = 0.0, report.error
            else:
                client.weight = report.weight
                results.append((report.adapter, report.weight))
                _warn_if_nonfinite(report, plan.round_idx)
            client_rows.append(client)
        agg_start = time.perf_counter()
        min_clients = self.cfg.fl.min_clients
        info: dict[str, Any]
        if mode == "central":  # every round, even with no client: one mechanism invocation (fl.min_clients unused)
            new_state, info = privacy.central_dp_aggregate(self.global_state, results, self.cfg, plan.round_idx,
                                                           self.server_opt)
        elif len(results) < min_clients:
            new_state, info = {k: v.clone() for k, v in self.global_state.items()}, {"num_aggregated": 0}
            info["skipped_round"] = f"only {len(results)} client results < fl.min_clients={min_clients}"
            logger.warning("round %d: %s; the global adapter is unchanged", plan.round_idx, info["skipped_round"])
        else:
            new_state, info = aggregate(self.global_state, results, self.server_opt, self.cfg.fl)
            if info.get("refused_nonfinite_aggregate"):
                logger.warning("round %d: the aggregate of %d client updates is not finite (NaN/inf); it is refused "
                               "and the global adapter is unchanged", plan.round_idx, info["num_aggregated"])
        info["num_failed_clients"] = sum(1 for c in client_rows if c.error is not None)
        self.set_global(new_state)
        if self.publish is not None:
            self.publish(plan.round_idx, new_state)
        agg = sum_client_metrics([c.metrics or {} for c in client_rows])
        row = RoundRow(
            plan.round_idx, lr=plan.lr, selected_clients=list(plan.selected), clients=client_rows,
            aggregate=agg, aggregation=info,
            time={"round_s": time.perf_counter() - plan.start, "generation_s": agg["generation_s"],
                  "feedback_s": agg["feedback_s"], "training_s": agg["training_s"],
                  "aggregation_s": time.perf_counter() - agg_start},
            resources=round_resources(c.to_dict() for c in client_rows),
        )
        if mode == "central":  # the sample is secret and per-client figures are not covered: counts only
            row.selected_clients = row.clients = None
            row.num_selected = len(plan.selected)
        if mode == "local":
            for cid in plan.selected:  # a selected client may have released even if its reply was lost
                self.participations[cid] = self.participations.get(cid, 0) + 1
        if mode != "off":
            row.privacy = privacy.budget(self.cfg, plan.round_idx, self.participations)
        row.merge(extra or {})
        return row

    def run_round(self, round_idx: int, runner: ClientRunner) -> RoundRow:
        """Plan, run the clients with ``runner`` and aggregate one round; returns the row (without eval), with the
        runner's ``fields`` (if it has them) merged in."""
        plan = self.plan_round(round_idx)
        if not plan.selected:  # a Poisson round may sample nobody (dp.mode=central): noise only
            return self.aggregate_round(plan, [])
        reports = runner(plan, self.global_state)
        return self.aggregate_round(plan, reports, extra=getattr(runner, "fields", None))

    def evaluate(self, round_idx: int) -> dict[str, Any]:
        """Evaluate the global adapter on the eval set and save it as ``adapters/round_NNNN``."""
        self.policy.adapter.set(self.global_state)
        result = evaluate(self.policy, self.task, self.cfg, self.eval_set)
        if result.get("diverged"):
            logger.warning("round %d: the model diverged: %s; no accuracy is reported", round_idx,
                           result.get("diverged_reason", "non-finite scores"))
        self._save_adapter(self.record.adapter_dir(round_idx), f"the adapter of round {round_idx}")
        durable_step("adapter")
        return result

    def _save_adapter(self, out_dir: Path, what: str) -> None:
        """:func:`save_adapter`, a full disk (or a read-only folder) reported in one line naming the folder."""
        with disk_errors(out_dir, what, self.record.resume_advice()):
            save_adapter(self.policy, self.global_state, out_dir)

    def _count_round(self, row: RoundRow) -> None:
        """Count a round's row: consecutive rounds where clients took part but none sent a usable update (all
        failed, non-finite, or a refused aggregate), rounds of the run, and the first client error."""
        info = row.aggregation or {}
        broken = (info.get("num_failed_clients", 0) + info.get("num_excluded_nonfinite", 0)
                  + int(bool(info.get("refused_nonfinite_aggregate"))))
        usable = info.get("num_aggregated", 0) > 0 and not info.get("refused_nonfinite_aggregate")
        self.idle_rounds = 0 if usable or not broken else self.idle_rounds + 1
        self.rounds_run += 1
        if self.first_error is None:
            self.first_error = next(iter(row.errors), None)

    def _idle_stop(self, row: RoundRow) -> str | None:
        """Count the row (:meth:`_count_round`); the reason to stop once ``fl.max_idle_rounds`` rounds in a row
        were idle, or when the last round ends a run in which every round was idle; else None."""
        self._count_round(row)
        limit = self.cfg.fl.max_idle_rounds
        if limit and self.idle_rounds >= limit:
            return (f"no usable client update in {self.idle_rounds} consecutive rounds (clients failed or sent "
                    f"non-finite updates; fl.max_idle_rounds={limit}); lower optim.lr or check the clients' errors "
                    "in metrics.jsonl" + self._first_error_hint())
        if limit and row.round == self.cfg.fl.rounds and self.idle_rounds == self.rounds_run:
            # A run shorter than fl.max_idle_rounds in which no client ever sent a usable update did not train.
            return (f"no usable client update in any of the {self.rounds_run} rounds of this run (clients failed or "
                    "sent non-finite updates); nothing was trained: check the clients' errors in metrics.jsonl"
                    + self._first_error_hint())
        return None

    def _first_error_hint(self) -> str:
        if not self.first_error:
            return ""
        error = " ".join(self.first_error.split())
        return f" (first error: {error if len(error) <= 200 else error[:197] + '...'})"

    def end_round(self, row: RoundRow) -> None:
        """Evaluate on schedule, then hand the row to the observers (:meth:`observe`: metrics.jsonl and the
        checkpoint, the trackers, the summary line, the caller's).

        Raises:
            RunStopped: ``fl.max_idle_rounds`` consecutive rounds had no usable client update; the row (with
                ``stopped``), the checkpoint and the report are written first.
        """
        round_idx = row.round
        assert round_idx is not None  # a row the server made
        stop = self._idle_stop(row)
        if stop is not None:
            row.stopped = stop
        if stop is not None or should_evaluate(round_idx, self.cfg.fl.rounds, self.cfg.data):
            ev_start = time.perf_counter()
            row.eval = self.evaluate(round_idx)
            row.time = row.time if row.time is not None else {}
            row.time["eval_s"] = time.perf_counter() - ev_start
        self.observe(row)
        if stop is not None:
            report = self._write_report()
            raise RunStopped(f"run stopped after round {round_idx}: {stop} (metrics and report kept: {report})")

    def run_rounds(self, runner: ClientRunner, start_round: int,
                   after_round: Callable[[int], None] | None = None) -> None:
        """Rounds ``start_round .. fl.rounds``, each ended by :meth:`end_round`, then ``after_round(round)``. A run
        that stops (:class:`RunStopped`), fails or is interrupted closes its trackers with the reason first."""
        bar = tqdm(range(start_round, self.cfg.fl.rounds + 1), desc="rounds", unit="round", dynamic_ncols=True,
                   disable=None)
        try:
            for round_idx in bar:
                self.end_round(self.run_round(round_idx, runner))
                if after_round is not None:
                    after_round(round_idx)
        except BaseException as exc:
            self._abort(exc)
            raise

    # ------------------------------------------------------------------------------------------ observers

    def observe(self, row: RoundRow) -> None:
        """Hand a finished round's row to every observer, in order (each started first if it was not)."""
        for observer in self.observers:
            self._start_observer(observer)
            observer.on_round(row)

    def _start_observer(self, observer: RoundObserver) -> None:
        if not any(observer is started for started in self._started):
            observer.on_start()
            self._started.append(observer)

    def _abort(self, exc: BaseException) -> None:
        """Tell every observer that the run ends with ``exc`` (trackers close with the reason)."""
        reason = f"{type(exc).__name__}: {exc}"
        for observer in self.observers:
            observer.on_abort(reason)

    # ------------------------------------------------------------------------------- start / resume / end

    def start(self, load_stats: dict[str, Any] | None = None) -> None:
        """Round 0 of a new run: evaluate the initial adapter, write its row (with ``data`` stats) and checkpoint.
        A round 0 that fails or is interrupted closes the trackers with the reason first."""
        try:
            self._start(load_stats)
        except BaseException as exc:
            self._abort(exc)
            raise

    def _start(self, load_stats: dict[str, Any] | None) -> None:
        ev_start = time.perf_counter()
        evaluation = self.evaluate(0)
        self.observe(RoundRow(0, eval=evaluation, time={"eval_s": time.perf_counter() - ev_start}, data=load_stats))

    def resume(self) -> int:
        """Load the verified checkpoint (metrics rows after it are dropped) and return the last completed round; the
        idle-round counts (``fl.max_idle_rounds``) continue from the rows before it."""
        done = self.load_checkpoint()
        rows = [row for row in self.record.read_rows() if row.round is not None and 1 <= row.round <= done]
        self.participations = privacy.count_participations(row.to_dict() for row in rows)  # the ids as written
        for row in rows:  # the idle-round counts continue where the run left them
            self._count_round(row)
        tqdm.write(f"resuming {self.record.run_dir} after round {done}")
        return done

    def finish(self) -> Path:
        """Save the final adapter (if the last round did not) and write the report; returns the run folder."""
        final = self.record.adapter_dir(self.cfg.fl.rounds)
        if not (final / "adapter_model.safetensors").exists():
            self._save_adapter(final, "the final adapter")
        report = self._write_report()
        for observer in self.observers:  # the trackers close, the console prints the run's last line
            self._start_observer(observer)
            observer.on_finish(final, report)
        self.record.release()  # the run is over: other processes may use the folder
        return self.record.run_dir

    def _write_report(self) -> Path:
        with disk_errors(self.record.report_path, "the report", self.record.resume_advice()):
            return write_report(self.record.run_dir)

    def open_trackers(self) -> None:
        """Start the observers now (:meth:`RoundObserver.on_start`), before round 0 (or the first resumed round):
        the ``logging.report_to`` trackers open, so one that cannot start (not installed, wandb online without a
        login) stops the run before any work. Observers not started here start before their first round.

        Raises:
            ConfigError: a tracker failed to start (the message names it and the fix).
        """
        for observer in self.observers:
            self._start_observer(observer)

    def has_checkpoint(self) -> bool:
        """Whether the run folder holds a checkpoint to resume from."""
        return self.record.has_checkpoint()

    def save_checkpoint(self, round_idx: int) -> None:
        """Commit the global adapter, the server optimizer state and the round index as one verified file
        (:meth:`RunRecord.write_checkpoint`); metrics.jsonl must already hold the round's row (the
        :class:`~fedspear.federation.observers.RecordWriter` calls it right after writing the row)."""
        tensors = {f"global.{k}": v.contiguous() for k, v in self.global_state.items()}
        if self.server_opt is not None:
            tensors.update(self.server_opt.to_tensors())
        self.record.write_checkpoint(tensors, round_idx)

    def load_checkpoint(self) -> int:
        """Restore the global adapter and server optimizer from the verified checkpoint; returns its round.

        Raises:
            RunFileError: the checkpoint or metrics.jsonl is damaged, or the checkpoint does not fit this run
                (other adapter keys, non-finite values, another server optimizer).
        """
        round_idx, tensors = self.record.read_checkpoint()
        state = {k[len("global."):]: v for k, v in tensors.items() if k.startswith("global.")}
        path = self.record.checkpoint_path()
        expected = set(self.global_state)
        if set(state) != expected:
            raise RunFileError(f"{path}: its adapter keys do not match this run's model and LoRA settings "
                               f"({len(state)} saved, {len(expected)} expected); resume with the run's own config")
        if not is_finite_state(state):
            raise RunFileError(f"{path}: the global adapter of round {round_idx} holds NaN/inf; the run diverged "
                               "before it was saved: start again with a lower optim.lr")
        try:
            if self.server_opt is not None:
                self.server_opt.from_tensors(tensors)
        except (ValueError, KeyError) as exc:
            raise RunFileError(f"{path}: no usable server optimizer state ({exc}); keep fl.aggregation as the run "
                               "had it") from None
        self.set_global(state)
        return round_idx


def _warn_if_nonfinite(report: ClientReport, round_idx: int) -> None:
    """A console warning for a client update that aggregation will exclude as non-finite."""
    if report.adapter is None or report.weight == 0:
        return
    if not math.isfinite(report.weight) or not is_finite_state(report.adapter):
        logger.warning("client %d in round %d sent a non-finite update (NaN/inf weight or adapter); it is excluded "
                       "from aggregation", report.client_id, round_idx)


def expand_output_dir(cfg: Config) -> str:
    """Fill ``{time}``, ``{algorithm}``, ``{dataset}`` and ``{seed}`` placeholders in ``output_dir``.

    ``{dataset}`` of a user's task ``module:Class`` is ``Class`` (no ``:`` in folder names)."""
    try:
        return cfg.output_dir.format(time=time.strftime("%Y%m%d-%H%M%S"), algorithm=cfg.algorithm.name,
                                     dataset=cfg.data.dataset.rsplit(":", 1)[-1], seed=cfg.data.seed)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"output_dir: bad placeholder in '{cfg.output_dir}' ({exc}); use {{time}}, "
                          "{algorithm}, {dataset} or {seed}") from None


def names_new_folder(template: str) -> bool:
    """Whether an ``output_dir`` template names a new folder for every run: it contains ``{time}``."""
    try:
        return any(name == "time" for _, name, _, _ in string.Formatter().parse(template))
    except ValueError:
        return False


def new_output_dir(cfg: Config, expanded: str | None = None) -> str:
    """``output_dir`` expanded for a new run (:func:`expand_output_dir`).

    With ``{time}`` in it the name is meant to be new, so a folder that did not exist is created: the expanded
    name, or ``name-1``, ``name-2``... when runs started in the same second
    (:func:`fedspear.records.claim_new_folder`). Any other name is returned as written: a run there is refused,
    or a failed start started again, by :meth:`RunRecord.create`.

    Raises:
        ConfigError: a bad placeholder. RunDirError: the folder cannot be made.
    """
    out = expand_output_dir(cfg) if expanded is None else expanded
    return str(claim_new_folder(Path(out))) if names_new_folder(cfg.output_dir) else out


def open_server(cfg: Config, resume: bool = False) -> tuple[FederatedServer, int]:
    """A server holding only the evaluation side of the data: start a run, or continue it from its checkpoint.

    Used where the clients run elsewhere (the Flower ServerApp). ``output_dir`` placeholders are expanded;
    the server reads the task's data for its evaluation rows and loads the model (for evaluation and adapters).

    Args:
        cfg: the run configuration.
        resume: continue the run in ``output_dir`` after its last checkpoint; without a checkpoint there a new
            run starts (so a server that is restarted with ``resume`` always does the right thing).

    Returns:
        (server, first round to run); a new run has its round-0 row and checkpoint written.

    Raises:
        RunExistsError: not resuming and ``output_dir`` already holds a run.
        DataError: the task has no evaluation rows.
    """
    from fedspear.federation.assembly import NO_CLIENTS, assemble

    out = expand_output_dir(cfg)
    resuming = resume and RunRecord(Path(out)).has_checkpoint()
    made = None if resuming else RunRecord(Path(out)).first_missing_folder()  # removed again if the start fails
    if not resuming and names_new_folder(cfg.output_dir):
        claimed = str(claim_new_folder(Path(out)))
        made, out = (Path(claimed) if claimed != out else made), claimed
    cfg = replace(cfg, output_dir=out)  # a copy: the caller's Config is never written
    record = RunRecord(Path(cfg.output_dir))
    record.create(cfg, resume=resuming)  # held by the server's record until finish(), release() or its end
    try:
        # the evaluation rows the simulator keeps; a user's algorithm pkg.mod:Class is registered, so its declared
        # metrics cross the wire
        run = assemble(cfg, partition=NO_CLIENTS, oracle=False)
        server = FederatedServer(run.cfg, record, run.policy, run.eval_set, task=run.task)
        if resuming:
            done = server.resume()
            server.open_trackers()  # a tracker that cannot start fails before the first resumed round
            return server, done + 1
        server.open_trackers()  # a tracker that cannot start fails before round 0
        stats = run.stats
    except BaseException:
        if not resuming:  # what this start wrote goes, as in the simulator (the same command can run again)
            record.discard_start(remove_config=True, made=made)
        record.release()
        raise
    try:
        server.start(stats)  # round 0: a failure here leaves a run folder that --resume starts again
    except BaseException:
        record.release()
        raise
    return server, 1
