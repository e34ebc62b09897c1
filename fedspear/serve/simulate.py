"""Simulated people for experiments: a scripted person behind the HTTP API, and a federation of served clients.

A :class:`ScriptedPerson` is the task's oracle acting as a person: it asks a task item through the served
client's HTTP API, judges the answer with the task's verifier, gives the oracle's partial feedback on the
latest wrong answer as its hint, and accepts or rejects each revision, exactly as SPEAR's oracle rollout does
(docs/algorithms.md, "SPEAR"), but through the same interface as a person at the page: it types the oracle's hint
sentence, and the page frames it as the oracle frames its feedback.

:func:`run_federation` runs a whole federation of served clients offline, in one process: each client is a
:class:`~fedspear.serve.runtime.ClientRuntime` behind its own HTTP server on 127.0.0.1. The rounds are those of
:class:`~fedspear.federation.server.FederatedServer` (as in ``fedspear run``) with :class:`ServedClients` as its
client runner: each round every client's person asks questions from its piece of the training data, every client
trains from its store (:func:`fedspear.serve.learning.update_from_store`), the server aggregates
(``fl.aggregation``), and its ``publish`` hook hands the new global adapter to every client, whose running app
picks it up before its next answer. Each
round reports the first-answer accuracy seen through the interface, the held-out accuracy of the global
adapter, and the latency per answer and per revision::

    python -m fedspear.serve.simulate --out runs/served [--clients 3] [--rounds 5] [--questions 16] [KEY=VALUE ...]

:func:`measure_latency` times what a person waits at the page (``--latency N``: N streamed conversations).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedspear.config import Config, load_config
from fedspear.federation.observers import RoundObserver
from fedspear.log import setup_logging
from fedspear.presets import resolve_config
from fedspear.tasks.base import Example, Task

if TYPE_CHECKING:  # the server module imports torch; the scripted person does not need it
    from fedspear.federation.rounds import RoundRow
    from fedspear.federation.server import ClientReport, RoundPlan
    from fedspear.serve.runtime import ClientRuntime

logger = logging.getLogger("fedspear")


class ApiError(RuntimeError):
    """The served client refused a request (``status``, ``detail``)."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class ApiClient:
    """JSON over HTTP to one served client (standard library only).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        session: the ``X-Fedspear-Session`` id this client sends.
        timeout_s: per-request timeout.
        token: the served app's secret of this start (``app.state.secret`` of
            :func:`fedspear.serve.app.create_app`, in the same process), sent in the ``X-Fedspear-Token`` header.
    """

    def __init__(self, base_url: str, session: str = "scripted", timeout_s: float = 300.0, token: str = "") -> None:
        self.base_url, self.session, self.timeout_s = base_url.rstrip("/"), session, timeout_s
        self.headers = {"Content-Type": "application/json", "X-Fedspear-Session": session, "X-Fedspear-Token": token}

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as res:  # noqa: S310 - loopback URL we built
                return json.loads(res.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail")
            except ValueError:
                detail = exc.reason
            raise ApiError(exc.code, detail) from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def stream(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], float | None, float]:
        """A streamed answer, timed at the client: (done event, seconds to the first token, seconds to done)."""
        req = urllib.request.Request(self.base_url + path, data=json.dumps({**body, "stream": True}).encode(),
                                     method="POST", headers=self.headers)
        start = time.perf_counter()
        first: float | None = None
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as res:  # noqa: S310 - loopback URL we built
                for line in res:
                    event = json.loads(line)
                    if event["event"] == "token" and first is None:
                        first = time.perf_counter() - start
                    elif event["event"] == "error":
                        raise ApiError(event["status"], event["detail"])
                    elif event["event"] == "done":
                        return event, first, time.perf_counter() - start
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.reason) from None
        raise ApiError(502, "the stream ended without a done event")

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, body or {})


@dataclass
class Outcome:
    """One scripted conversation.

    Attributes:
        example_id: the task item asked.
        interaction_id: its id in the client's store.
        first_correct: the first answer was right.
        fixed: a revision was accepted.
        revisions: revisions generated.
        adapter_version: the adapter version that gave the first answer.
        answer_seconds: generation time of the first answer.
        revision_seconds: generation time of each revision.
    """

    example_id: str
    interaction_id: int
    first_correct: bool
    fixed: bool
    revisions: int
    adapter_version: int
    answer_seconds: float
    revision_seconds: list[float] = field(default_factory=list)


class ScriptedPerson:
    """The oracle as a person at the page: asks, judges with the verifier, hints with the oracle's feedback.

    Args:
        api: the served client's API.
        task: the task (verifier and oracle feedback; it holds the gold answers, the served client never sees them).
        cfg: the config the oracle reads (``feedback.mc_hint_words``...).
    """

    def __init__(self, api: ApiClient, task: Task, cfg: Config) -> None:
        self.api, self.task, self.cfg = api, task, cfg

    def hint(self, example: Example, answer: str) -> str:
        """What the person types: the hint sentence of the oracle's feedback on ``answer``.

        The verdict is the person's click and the page frames the hint with it, the answer format and "do not
        repeat" (:func:`fedspear.serve.runtime.person_feedback`), so only the oracle's ``Hint:`` line is typed;
        feedback without such a line is typed whole.
        """
        feedback = self.task.feedback(example, answer, self.cfg)
        lines = [line for line in feedback.splitlines() if line.strip().lower().startswith("hint")]
        return " ".join(lines) if lines else feedback

    def converse(self, example: Example) -> Outcome:
        """Ask ``example``, judge, and hint until a revision is accepted or none is left."""
        done = self.api.post("/api/ask", {"example_id": example.id})
        interaction = done["interaction"]
        latest = interaction["attempts"][0]["text"]
        ok = self.task.is_correct(example, latest)
        out = Outcome(example.id, interaction["id"], ok, False, 0, interaction["attempts"][0]["adapter_version"],
                      done["latency"]["seconds"])
        interaction = self.api.post(f"/api/interactions/{out.interaction_id}/verdict", {"attempt": 0, "correct": ok})
        while interaction["state"] == "awaiting_hint":
            hint = self.hint(example, latest)
            done = self.api.post(f"/api/interactions/{out.interaction_id}/revise", {"hint": hint})
            attempt = done["attempt"]
            latest = done["interaction"]["attempts"][attempt]["text"]
            out.revisions += 1
            out.revision_seconds.append(done["latency"]["seconds"])
            ok = self.task.is_correct(example, latest)
            interaction = self.api.post(f"/api/interactions/{out.interaction_id}/verdict",
                                        {"attempt": attempt, "correct": ok})
            out.fixed = ok
        return out


def _accuracy(outcomes: list[Outcome]) -> float | None:
    return sum(o.first_correct for o in outcomes) / len(outcomes) if outcomes else None


def _served_fields(outcomes: list[Outcome], reports: list[ClientReport], seen: set[str]) -> dict[str, Any]:
    """What the people saw in one round (added to the server's metrics row of the round)."""
    answers = [o.answer_seconds for o in outcomes]
    revisions = [s for o in outcomes for s in o.revision_seconds]
    wrong = [o for o in outcomes if not o.first_correct]
    again = [o for o in outcomes if o.example_id in seen]
    return {
        "questions": len(outcomes),
        "interface_accuracy": _accuracy(outcomes),
        # questions some person of the same client asked (and judged, and hinted) in an earlier round
        "asked_before": len(again), "interface_accuracy_asked_before": _accuracy(again),
        "interface_accuracy_new": _accuracy([o for o in outcomes if o.example_id not in seen]),
        "needs_revision": len(wrong), "fixed_by_revision": sum(o.fixed for o in wrong),
        "adapter_versions": sorted({o.adapter_version for o in outcomes}),
        "answer_seconds_median": statistics.median(answers) if answers else None,
        "revision_seconds_median": statistics.median(revisions) if revisions else None,
        "revisions": len(revisions),
        "client_weights": [r.weight for r in reports],
    }


class ServedClients:
    """The client runner of a federation of served clients (a :class:`~fedspear.federation.server.ClientRunner`).

    Each selected client's scripted person first asks ``questions`` items of the client's piece of the training
    data (drawn with the client's round seed) through HTTP, judging and hinting as a person would; then every
    selected client trains from its trace store (:meth:`~fedspear.serve.runtime.ClientRuntime.train_from_store`)
    from the global adapter its page serves. :attr:`fields` holds what the people saw in the last round.

    Args:
        runtimes: the served clients, by client id.
        people: one scripted person per client, talking to that client's page.
        parts: each client's training examples.
        questions: questions per client and round.
    """

    def __init__(self, runtimes: list[ClientRuntime], people: list[ScriptedPerson], parts: list[list[Example]],
                 questions: int) -> None:
        self.runtimes, self.people, self.parts, self.questions = runtimes, people, parts, questions
        self.asked: set[str] = set()  # example ids (unique per client's partition) asked in earlier rounds
        self.fields: dict[str, Any] = {}

    def __call__(self, plan: RoundPlan, global_state: dict[str, Any]) -> list[ClientReport]:
        """Run the round's conversations, then each selected client's update; one report per client."""
        from fedspear.federation.server import ClientReport

        outcomes, seen_before = [], set(self.asked)
        for cid in plan.selected:
            rng = random.Random(plan.seeds[cid])
            for ex in rng.sample(self.parts[cid], min(self.questions, len(self.parts[cid]))):
                outcomes.append(self.people[cid].converse(ex))
                self.asked.add(ex.id)
        # the client update of every front end, from the round's global adapter (dp.mode=local: noised there)
        reports = [ClientReport.from_result(cid, self.runtimes[cid].train_from_store(plan.job(cid, [], global_state)))
                   for cid in plan.selected]
        self.fields = _served_fields(outcomes, reports, seen_before)
        return reports


class FederationLog(RoundObserver):
    """Observes a served federation's rounds: keeps each row as metrics.jsonl holds it (round 0 included), logs
    the interface figures of each training round and rewrites ``federation.json`` (all rows so far) after each.

    Args:
        path: the ``federation.json`` to write.
        runner: the federation's client runner; its ``fields`` (the round's interface figures) are logged by name.
    """

    def __init__(self, path: Path, runner: ServedClients) -> None:
        self.path, self.runner = path, runner
        self.rows: list[dict[str, Any]] = []

    def on_round(self, row: RoundRow) -> None:
        from fedspear.records import metrics_line  # torch: imported once the federation runs

        self.rows.append(json.loads(metrics_line(row)))
        if row.round:
            logger.info("round %d: %s", row.round, {k: self.rows[-1][k] for k in self.runner.fields})
            self.path.write_text(json.dumps(self.rows, indent=1, default=float))


def _served_config(cfg: Config, out_dir: Path, clients: int, rounds: int, evaluate_global: bool) -> Config:
    """``cfg`` for a served federation: every client in every round, the run folder ``out_dir/server``."""
    from dataclasses import replace

    eval_every = {"eval_every": 1} if evaluate_global else {"eval_every": rounds, "eval_every_round_up_to": 0}
    return replace(cfg, data=replace(cfg.data, num_clients=clients, **eval_every),
                   fl=replace(cfg.fl, rounds=rounds, clients_per_round=clients,
                              min_clients=min(cfg.fl.min_clients, clients)),
                   output_dir=str(out_dir / "server"))


def run_federation(cfg: Config, out_dir: str | Path, clients: int = 3, rounds: int = 5, questions: int = 16,
                   evaluate_global: bool = True) -> list[dict[str, Any]]:
    """A federation of served clients taught by scripted people through HTTP (see the module docstring).

    The round logic is :class:`~fedspear.federation.server.FederatedServer`'s (learning rate, client seeds,
    aggregation, evaluation, the run folder ``out_dir/server``); its client runner is :class:`ServedClients`,
    and its ``publish`` hook hands every new global adapter to each client's page.

    Args:
        cfg: the run config (task, model, SPEAR and federation settings); not changed: the federation runs with
            ``data.num_clients`` = ``fl.clients_per_round`` = ``clients`` and ``fl.rounds`` = ``rounds``.
        out_dir: folder for the clients' state folders, the server's run folder and ``federation.json``.
        clients: number of served clients (all take part in every round).
        rounds: federated rounds.
        questions: questions each client's person asks per round.
        evaluate_global: evaluate the global adapter on the task's held-out split after every round (False:
            only before the first and after the last round).

    Returns:
        One row per round (round 0 = before any training): the server's metrics row (``aggregation``,
        ``eval``, ``time``...) plus interface accuracy, revisions and latencies.

    Raises:
        RunExistsError: ``out_dir/server`` already holds a run.
    """
    from fedspear.federation.assembly import assemble
    from fedspear.federation.server import FederatedServer
    from fedspear.models import load_policy
    from fedspear.records import RunRecord
    from fedspear.serve.app import ServeOptions, ThreadedServer, create_app
    from fedspear.serve.learning import publish_global
    from fedspear.serve.runtime import ClientRuntime

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = _served_config(cfg, out_dir, clients, rounds, evaluate_global)
    run = assemble(cfg)  # the server's policy; the people judge and hint as feedback.provider does (run.task)
    record = RunRecord(Path(cfg.output_dir))
    record.create(cfg)
    cfg = run.cfg  # a copy with the policies' capped model.max_seq_len
    try:
        policies = [load_policy(cfg) for _ in range(clients)]  # each client's own model
        runtimes = [ClientRuntime(policies[i], run.verifier, cfg, out_dir / f"client{i}", seed=cfg.data.seed * 1000 + i)
                    for i in range(clients)]
        servers = [ThreadedServer(create_app(rt, ServeOptions(rate_per_minute=10**6))) for rt in runtimes]
    except BaseException:
        record.release()
        raise

    def publish(round_idx: int, global_state: dict[str, Any]) -> None:
        for rt in runtimes:
            publish_global(rt.registry, rt.policy, global_state, f"server round {round_idx}")

    try:
        for srv in servers:
            srv.__enter__()
        people = [ScriptedPerson(ApiClient(srv.url, session=f"person{i}", token=srv.app.state.secret), run.task, cfg)
                  for i, srv in enumerate(servers)]
        runner = ServedClients(runtimes, people, run.clients, questions)
        log = FederationLog(out_dir / "federation.json", runner)
        server = FederatedServer(cfg, record, run.policy, run.eval_set, publish=publish, task=run.verifier,
                                 observers=[log])
        server.start()
        server.run_rounds(runner, 1)  # the one round loop: a stop or failure closes the trackers
        server.finish()
    finally:
        for srv in servers:
            srv.__exit__()
        for rt in runtimes:
            rt.close()
        record.release()  # the run folder is free again, however the federation ended
    return log.rows


def measure_latency(cfg: Config, out_dir: str | Path, conversations: int = 40, seed: int = 0) -> dict[str, Any]:
    """Latency a person sees at the page: one served client, scripted people, streamed answers, timed at the client.

    Each conversation asks a random training item, judges it with the verifier and, while wrong, hints with the
    oracle's feedback and judges the revision, all through HTTP with streaming on.

    Returns:
        ``answer`` and ``revision`` (and ``answer/<kind>``, ``revision/<kind>`` per kind of task item): count,
        median / p90 / max seconds to the first token and to the stored answer (``done``), median tokens.
    """
    from fedspear.federation.assembly import assemble
    from fedspear.serve.app import ServeOptions, ThreadedServer, create_app
    from fedspear.serve.runtime import ClientRuntime

    run = assemble(cfg, data=False, oracle=False)  # a served client: people (here scripted) give the feedback
    task, cfg = run.task, run.cfg  # cfg: a copy with the policy's capped model.max_seq_len
    examples = task.load(cfg).train
    runtime = ClientRuntime(run.policy, task, cfg, Path(out_dir) / "latency-client", seed=seed)
    samples: dict[str, list[tuple[float | None, float, int]]] = {"answer": [], "revision": []}

    def add(stage: str, kind: str, row: tuple[float | None, float, int]) -> None:
        samples[stage].append(row)
        samples.setdefault(f"{stage}/{kind}", []).append(row)

    rng = random.Random(seed)
    try:
        with ThreadedServer(create_app(runtime, ServeOptions(rate_per_minute=10**6))) as server:
            api = ApiClient(server.url, session="latency", token=server.app.state.secret)
            person = ScriptedPerson(api, task, cfg)
            api.stream("/api/ask", {"question": "warm-up"})  # first call pays one-time costs
            for ex in rng.sample(examples, min(conversations, len(examples))):
                done, first, total = api.stream("/api/ask", {"example_id": ex.id})
                iid, latest = done["interaction"]["id"], done["interaction"]["attempts"][0]["text"]
                kind = str(ex.meta.get("kind", task.kind))
                add("answer", kind, (first, total, done["latency"]["tokens"]))
                ok = task.is_correct(ex, latest)
                state = api.post(f"/api/interactions/{iid}/verdict", {"attempt": 0, "correct": ok})["state"]
                while state == "awaiting_hint":
                    done, first, total = api.stream(f"/api/interactions/{iid}/revise",
                                                    {"hint": person.hint(ex, latest)})
                    k = done["attempt"]
                    latest = done["interaction"]["attempts"][k]["text"]
                    add("revision", kind, (first, total, done["latency"]["tokens"]))
                    state = api.post(f"/api/interactions/{iid}/verdict",
                                     {"attempt": k, "correct": task.is_correct(ex, latest)})["state"]
    finally:
        runtime.close()

    def summary(rows: list[tuple[float | None, float, int]]) -> dict[str, Any]:
        if not rows:
            return {"count": 0}
        firsts = sorted(f for f, _, _ in rows if f is not None)
        totals = sorted(t for _, t, _ in rows)
        return {"count": len(rows), "first_token_median_s": statistics.median(firsts) if firsts else None,
                "first_token_p90_s": firsts[int(0.9 * (len(firsts) - 1))] if firsts else None,
                "done_median_s": statistics.median(totals), "done_p90_s": totals[int(0.9 * (len(totals) - 1))],
                "done_max_s": totals[-1], "tokens_median": statistics.median(n for _, _, n in rows)}

    out = {"answer": summary(samples["answer"]), "revision": summary(samples["revision"])}
    for key in sorted(k for k in samples if "/" in k):
        out[key] = summary(samples[key])
    return out


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A small table: round, interface accuracy, fixes, held-out accuracy (per group), median latencies."""
    lines = ["round  interface_acc  asked_before (acc)  fixed/wrong  eval_acc  (groups)                         "
             "answer_s  revision_s"]
    for row in rows:
        ev = row.get("eval") or {}
        groups = " ".join(f"{g} {a:.2f}" for g, a in (ev.get("groups") or {}).items())
        acc = row.get("interface_accuracy")
        fixes = f"{row['fixed_by_revision']}/{row['needs_revision']}" if "needs_revision" in row else "-"
        ans, rev = row.get("answer_seconds_median"), row.get("revision_seconds_median")
        before = row.get("interface_accuracy_asked_before")
        again = f"{row['asked_before']} ({before:.2f})" if before is not None else "-"
        lines.append(f"{row['round']:>5}  {'-' if acc is None else f'{acc:.3f}':>13}  {again:>18}  {fixes:>11}  "
                     f"{ev.get('accuracy', float('nan')):8.3f}  ({groups:<30})  "
                     f"{'-' if ans is None else f'{ans:.3f}':>8}  {'-' if rev is None else f'{rev:.3f}':>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m fedspear.serve.simulate``: run a federation of served clients and print its table."""
    parser = argparse.ArgumentParser(prog="python -m fedspear.serve.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the clients' state and federation.json")
    parser.add_argument("--config", metavar="FILE|PRESET", help="YAML file or preset (default: the built-in world)")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--questions", type=int, default=16, help="questions per client and round")
    parser.add_argument("--latency", type=int, default=0, metavar="N",
                        help="instead: time N streamed conversations with one served client and print the latencies")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (as `fedspear serve --threads`)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    setup_logging()
    threads = [f"model.torch_threads={args.threads}"] if args.threads > 0 else []  # applied when the model loads
    cfg = load_config(resolve_config(args.config), [*args.overrides, *threads])
    if args.latency > 0:
        print(json.dumps(measure_latency(cfg, args.out, args.latency), indent=1))
        return 0
    rows = run_federation(cfg, args.out, args.clients, args.rounds, args.questions)
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
