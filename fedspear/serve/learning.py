"""SPEAR's client update, trained from a served client's trace store (people's feedback instead of the oracle).

The store replaces SPEAR's rollout (docs/algorithms.md, "SPEAR"): the answers were generated when people asked, and
their verdicts and hints are the feedback source. The traces are exactly those the oracle rollout builds:

    first answer accepted                     -> win  (x0, y0)
    a revision accepted (a verified fix)      -> win  (x0, y')  and lose (x0, y0) with confidence c_fixed
    wrong, and no accepted revision           -> lose (x0, y0) with confidence c_unfixed

(``spear.confidence_fixed`` and ``spear.confidence_unfixed``, 1.0 and 0.5 by default, as in the oracle rollout)

where x0 is the task prompt's ids and y0 / y' the sampled ids, as stored. The revision is trained under the
original prompt, so the hint is distilled into the policy. Training is :meth:`fedspear.algorithms.spear.Spear.train`
unchanged (no wins: no update, weight 0), and ``algorithm.name=feedback_sft`` trains on the wins only.

The store is the update's rollout source (:class:`StoreRollouts`); the rest is the client update of every front end
(:func:`fedspear.federation.client.client_update`: the job's start state, training, the privacy step). For a
Flower ClientApp backed by the store, the whole client update is::

    from fedspear.serve.learning import update_from_store, publish_global
    job = ClientJob(client_id, round, [], lr, seed, start_state=<the round's global adapter from the server message>)
    result = update_from_store(policy, task, cfg, store, job)  # -> LocalUpdateResult(adapter | None, weight, metrics)
    reply with result.adapter (ArrayRecord), result.weight ("num-examples") and result.metrics (MetricRecord)
    publish_global(registry, policy, new_global, "server round 7")   # when a new global adapter arrives

Only adapter tensors and scalar metrics are returned: no prompt, answer, hint or token id leaves the device.
``fedspear train-local`` (:func:`train_local`) runs the same update with no server: the update becomes the
client's next adapter version, which a running ``fedspear serve`` picks up without a restart.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from fedspear.algorithms.base import ClientJob, LocalUpdateResult
from fedspear.algorithms.registry import build_algorithm
from fedspear.algorithms.settings import SpearSettings
from fedspear.algorithms.spear import Spear
from fedspear.algorithms.traces import FeedbackRollout, add_chain, outcome_metrics
from fedspear.config import Config
from fedspear.federation.client import Rollouts, client_update
from fedspear.federation.partition import client_seed
from fedspear.models import Policy
from fedspear.serve.adapters import ADAPTERS_DIR, AdapterRegistry, AdapterVersion, model_fingerprint
from fedspear.serve.store import ACCEPTED, FIXED, STORE_FILE, UNFIXED, Interaction, TraceStore
from fedspear.tasks.base import Task

logger = logging.getLogger("fedspear")

ALGORITHMS = ("spear", "feedback_sft")


def rollout_from_interactions(interactions: list[Interaction],
                              settings: SpearSettings | None = None) -> FeedbackRollout:
    """Turn closed, judged interactions into SPEAR's wins and losses, with the rollout's metrics.

    Each interaction is one chain of SPEAR's trace builder (:func:`fedspear.algorithms.traces.add_chain`, the one
    the oracle rollout calls): its task prompt ids x0, its attempts' sampled ids and the person's verdicts; the
    outcome metrics are SPEAR's too (:func:`~fedspear.algorithms.traces.outcome_metrics`).

    Args:
        interactions: interactions in state accepted, fixed or unfixed (others are skipped).
        settings: the ``spear`` section (the confidences ``spear.confidence_fixed`` / ``spear.confidence_unfixed``);
            default: its defaults (1.0 / 0.5).

    Returns:
        The rollout: wins, losses (confidence ``confidence_fixed`` fixed / ``confidence_unfixed`` unfixed) and
        metrics (prompts, y0 accuracy, revision attempts and successes per attempt index, generation seconds,
        the people's feedback seconds and generated tokens).
    """
    settings = settings or SpearSettings()
    rollout = FeedbackRollout(metrics={"prompts": 0, "wins_y0": 0, "needs_revision": 0, "generation_s": 0.0,
                                       "feedback_s": 0.0, "tokens_generated": 0, "generations": 0})
    m = rollout.metrics
    for it in interactions:
        if it.state not in (ACCEPTED, FIXED, UNFIXED) or not it.attempts:
            continue
        for prev, a in zip([None, *it.attempts[:-1]], it.attempts, strict=True):
            m["generations"] += 1
            m["generation_s"] += a.gen_seconds
            m["tokens_generated"] += len(a.completion_ids)
            if prev is not None and prev.verdict_at is not None:  # the person's time to write the hint
                m["feedback_s"] += max(0.0, a.created_at - a.gen_seconds - prev.verdict_at)
        # the state follows the verdicts (fedspear.serve.store): accepted y0, a fixing revision last, or none
        add_chain(rollout, settings, it.attempts[0].prompt_ids, [(a.completion_ids, a.text) for a in it.attempts],
                  [bool(a.verdict) for a in it.attempts])
    outcome_metrics(m, len(rollout.losses))
    return rollout


class StoreRollouts(Rollouts):
    """The rollout source of a served client: its trace store instead of the oracle (see the module docstring).

    Takes up to ``fl.local_rollout_steps`` closed, judged interactions of this base model (least-trained first, then
    newest) and builds SPEAR's wins and losses from them (:func:`rollout_from_interactions`); after training it adds
    ``store_interactions`` to the metrics and, when an update was produced, counts the interactions as trained.

    Args:
        store: the client's trace store.
        limit: interactions per update (``fl.local_rollout_steps``).
        label: the training log's label.
    """

    def __init__(self, store: TraceStore, limit: int, label: str) -> None:
        self.store, self.limit, self.label = store, limit, label
        self.interactions: list[Interaction] = []

    def __call__(self, policy: Policy, algorithm: Any, jobs: list[ClientJob]) -> list[FeedbackRollout]:
        self.interactions = self.store.training_candidates(model_fingerprint(policy), self.limit)
        return [rollout_from_interactions(self.interactions, algorithm.settings) for _ in jobs]

    def finish(self, job: ClientJob, result: LocalUpdateResult) -> None:
        result.metrics["store_interactions"] = len(self.interactions)
        result.metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
        if result.adapter is not None:
            self.store.mark_trained([it.id for it in self.interactions], self.label, result.metrics)


def update_from_store(policy: Policy, task: Task, cfg: Config, store: TraceStore, job: ClientJob,
                      label: str | None = None, release: bool = True) -> LocalUpdateResult:
    """One client update from the people's traces: :func:`fedspear.federation.client.client_update` with the store
    as its rollout source (:class:`StoreRollouts`), trained with SPEAR exactly as
    :meth:`fedspear.algorithms.spear.Spear.train`.

    Args:
        policy: the policy.
        task: the client's task (prompts, verifier).
        cfg: the client's config (algorithm, fl, optim, ...), with the policy's ``model.max_seq_len``.
        store: the client's trace store.
        job: round index, learning rate, seed and the round-start adapter ``job.start_state`` (None: the adapter the
            policy holds); ``job.examples`` is not used.
        label: the training log's label (default ``"round <job.round_idx>"``).
        release: end in the privacy step (``dp.mode=local`` noises what leaves the device); False when the
            update stays on the device (``fedspear train-local``).

    Returns:
        The update (None adapter and weight 0 when there are no wins), metrics numeric only.

    Raises:
        ValueError: ``algorithm.name`` is not spear or feedback_sft.
    """
    name = cfg.algorithm.name
    algorithm = build_algorithm(cfg, task)
    if name not in ALGORITHMS or not isinstance(algorithm, Spear):
        raise ValueError(f"training from people's feedback supports algorithm.name in {ALGORITHMS}, not '{name}'")
    source = StoreRollouts(store, cfg.fl.local_rollout_steps, label or f"round {job.round_idx}")
    return client_update(policy, algorithm, job, cfg, rollouts=source, release=release)  # feedback_sft: no losses


def publish_global(registry: AdapterRegistry, policy: Policy, state: dict[str, torch.Tensor],
                   label: str) -> AdapterVersion:
    """Make ``state`` the client's current adapter (a running app loads it before its next answer).

    Publishing the tensors the current version already holds (for the same base model) is a no-op that returns
    the current version, so a global adapter that reaches the device twice (after a round, then with the next
    round's job) is one version.

    Raises:
        AdapterError: ``state`` does not fit the policy's adapter (names, shapes, float dtype, finite values);
            nothing is published.
    """
    model = model_fingerprint(policy)
    current = registry.current()
    if current is not None and current.model == model:
        served = registry.load(current)
        if served.keys() == state.keys() and all(torch.equal(served[k], state[k].detach().cpu()) for k in state):
            return current
    return registry.publish(state, label, model, reference=policy.adapter.params)


def train_local(policy: Policy, task: Task, cfg: Config, state_dir: str | Path, client_id: int = 0,
                lr: float | None = None) -> dict[str, Any]:
    """``fedspear train-local``: one SPEAR update from the store, published as the next adapter version.

    The update starts from the client's current adapter (or the policy's initial one when none of this model
    exists). With no wins there is no update and nothing is published.

    Args:
        policy: a loaded policy for the client's config.
        task: the client's task.
        cfg: the client's config, with the policy's ``model.max_seq_len`` (``models.fit_config``).
        state_dir: the client's state folder (``traces.sqlite``, ``adapters/``).
        client_id: the client index used in the seed.
        lr: learning rate (default ``optim.lr``).

    Returns:
        A summary: ``round``, ``published`` (the new version or None), ``from_version`` and the metrics.
    """
    state_dir = Path(state_dir)
    registry = AdapterRegistry(state_dir / ADAPTERS_DIR)
    fingerprint = model_fingerprint(policy)
    current = registry.current()
    if current is not None and current.model == fingerprint:
        start = registry.load(current)
    else:
        current, start = None, policy.adapter.get()  # the freshly loaded policy's initial adapter
    with TraceStore(state_dir / STORE_FILE) as store:
        round_idx = len(store.trainings()) + 1
        job = ClientJob(client_id, round_idx, [], cfg.optim.lr if lr is None else lr,
                        client_seed(cfg.data.seed, round_idx, client_id), start)
        result = update_from_store(policy, task, cfg, store, job, label=f"local round {round_idx}", release=False)
    published = None
    if result.adapter is not None:
        published = publish_global(registry, policy, result.adapter, f"local round {round_idx}")
    return {"round": round_idx, "from_version": current.version if current else None,
            "published": published.to_dict() if published else None, "weight": result.weight,
            "metrics": result.metrics}
