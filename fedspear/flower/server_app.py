"""The fedspear ServerApp: a :class:`~fedspear.federation.server.FederatedServer` whose clients are SuperNodes.

The server logic (sampling, learning rate, seeds, aggregation with ``fl.min_clients`` and failure accounting,
evaluation schedule, metrics rows, checkpoints, resume, report) is the library's, exactly as in ``fedspear run``.
This module only translates: :class:`GridClients` turns a round plan into ``train`` messages to the sampled
clients' nodes and their replies (or their absence) into client reports.

Which node is which client is asked once per node with a ``query`` message (the node answers its
``client-id``, and ``serves-page`` when it is a store-backed device). The client schedule does not depend on
who is connected: a sampled client whose node is not connected, goes offline, replies with an error or misses
``round-timeout`` is recorded as failed in that round's row and the round aggregates the others.

After every round the new global adapter goes to each connected device that serves a page (an ``evaluate``
message, :meth:`GridClients.publish`), so people's pages answer with it at once, sampled or not; a device that
misses it gets it with its next job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedspear.federation.server import ClientReport, RoundPlan, open_server
from fedspear.flower.app_config import ServerSettings
from fedspear.flower.wire import (
    CLIENT_ID_KEY,
    FEDERATION,
    GLOBAL,
    IDENTITY,
    JOB,
    SERVES_PAGE_KEY,
    content_nbytes,
    job_record,
    report_from_reply,
    state_to_record,
)
from fedspear.log import setup_logging

logger = logging.getLogger("fedspear")

app = ServerApp()


MAX_QUERIES_IN_FLIGHT = 256


class GridClients:
    """The client runner of the ServerApp: clients are SuperNodes reached through Flower's Grid.

    Args:
        grid: the ServerApp's Grid.
        num_clients: the federation size ``data.num_clients``.
        config_yaml: the run's resolved config, sent to every client with its job.
        settings: timeouts and poll interval.
    """

    def __init__(self, grid: Grid, num_clients: int, config_yaml: str, settings: ServerSettings) -> None:
        self.grid = grid
        self.num_clients = num_clients
        self.config_yaml = config_yaml
        self.settings = settings
        self.nodes: dict[int, int] = {}  # client id -> node id
        self._claims: dict[int, int] = {}  # node id -> the client id it answered
        self._queries: dict[str, int] = {}  # query message id -> node id
        self._asked: set[int] = set()  # node ids queried (answered or pending)
        self._logged: set[tuple[int, int, int]] = set()  # (node, client, holder) already logged
        self._serves_page: set[int] = set()  # node ids that said they serve a page

    # ------------------------------------------------------------------------------------ discovery

    def _online(self) -> set[int]:
        return set(self.grid.get_node_ids())

    def discover(self) -> None:
        """Forget nodes that went offline, query new nodes, record the answers that have arrived, and map each
        client to one online node that claims it (the one it had, while that one stays online)."""
        online = self._online()
        self._claims = {node: cid for node, cid in self._claims.items() if node in online}
        self._asked &= online | set(self._queries.values())
        # At most MAX_QUERIES_IN_FLIGHT unanswered queries: Flower's simulation policy scans every queued message
        # for each node it polls, so N queries at once made discovery quadratic (N = 10,000: 477 s before round 1,
        # bench/flower_scaling.py); later calls ask the rest.
        new = sorted(online - self._asked)[: max(0, MAX_QUERIES_IN_FLIGHT - len(self._queries))]
        if new:
            content = RecordDict({FEDERATION: ConfigRecord({"num-clients": self.num_clients})})
            msgs = [Message(content, dst_node_id=node, message_type=MessageType.QUERY, group_id="discover")
                    for node in new]
            for msg_id, node in zip(self.grid.push_messages(msgs), new, strict=True):
                self._queries[msg_id] = node
            self._asked.update(new)
        if self._queries:
            for reply in self.grid.pull_messages(list(self._queries)):
                node = self._queries.pop(reply.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                if reply.has_error():
                    logger.warning("node %d refused to join: %s", node, reply.error.reason)
                    continue
                identity = reply.content[IDENTITY]
                self._claims[node] = int(identity[CLIENT_ID_KEY])
                if int(identity.get(SERVES_PAGE_KEY, 0)) == 1:
                    self._serves_page.add(node)
        self.nodes = {cid: node for cid, node in self.nodes.items() if node in self._claims}
        for node, cid in sorted(self._claims.items()):
            holder = self.nodes.setdefault(cid, node)
            if (node, cid, holder) not in self._logged:
                self._logged.add((node, cid, holder))
                if holder == node:
                    logger.info("client %d is node %d", cid, node)
                else:
                    logger.warning("node %d also claims client %d, which node %d has; it stands by", node, cid, holder)

    def wait_for_clients(self, wanted: int, timeout: float) -> None:
        """Discover nodes until ``wanted`` clients are known or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            self.discover()
            if len(self.nodes) >= wanted or time.monotonic() >= deadline:
                break
            time.sleep(self.settings.poll_interval)
        logger.info("%d of %d clients connected: %s", len(self.nodes), self.num_clients, sorted(self.nodes))

    # ------------------------------------------------------------------------------------ one round

    def __call__(self, plan: RoundPlan, global_state: dict[str, Any]) -> list[ClientReport]:
        """Send the sampled clients their jobs and collect their reports (failures included)."""
        self.discover()
        reports: list[ClientReport] = []
        msgs, targets = [], []
        global_record = state_to_record(global_state)
        for cid in plan.selected:
            node = self.nodes.get(cid)
            if node is None:
                reports.append(ClientReport.failure(cid, "not connected"))
                continue
            content = RecordDict({GLOBAL: global_record, JOB: job_record(cid, plan.round_idx, plan.lr,
                                                                          plan.seeds[cid], self.config_yaml)})
            msgs.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN,
                                group_id=str(plan.round_idx)))
            targets.append((cid, node))
        sent = {cid: content_nbytes(msg.content) for msg, (cid, _) in zip(msgs, targets, strict=True)}
        pending = dict(zip(self.grid.push_messages(msgs), targets, strict=True)) if msgs else {}
        reports += self._collect(pending, global_state)
        for report in reports:  # the train message's size, as Flower counts it (fedspear.federation.resources)
            if report.client_id in sent:
                report.details["wire_bytes_down"] = sent[report.client_id]
        return reports

    def publish(self, global_state: dict[str, Any], round_idx: int) -> None:
        """Send the global adapter after ``round_idx`` to every connected client node that serves a page, and wait
        (at most ``round-timeout``, else 120 s) for their acknowledgements. A miss is logged, never fatal."""
        self.discover()
        targets = sorted((cid, node) for cid, node in self.nodes.items() if node in self._serves_page)
        if not targets:
            return
        record = state_to_record(global_state)
        msgs = [Message(RecordDict({GLOBAL: record, JOB: job_record(cid, round_idx, 0.0, 0, self.config_yaml)}),
                        dst_node_id=node, message_type=MessageType.EVALUATE, group_id=f"publish-{round_idx}")
                for cid, node in targets]
        pending = dict(zip(self.grid.push_messages(msgs), targets, strict=True))
        acknowledged = []

        def on_reply(target: tuple[int, int], reply: Message) -> None:
            if reply.has_error():
                logger.warning("client %d (node %d) did not take the global adapter: %s", *target, reply.error.reason)
            else:
                acknowledged.append(target)

        self._await(pending, time.monotonic() + (self.settings.round_timeout or 120.0), on_reply, lambda _: None)
        logger.info("round %d: global adapter sent to %d of %d page-serving devices", round_idx, len(acknowledged),
                    len(targets))

    def _collect(self, pending: dict[str, tuple[int, int]], reference: dict[str, Any]) -> list[ClientReport]:
        """Poll until every pending message has a reply, its node went offline, or the round timed out."""
        timeout = self.settings.round_timeout
        reports: list[ClientReport] = []

        def on_reply(target: tuple[int, int], reply: Message) -> None:
            report = report_from_reply(target[0], reply, reference)
            report.details["node_id"] = target[1]
            if reply.has_content():
                report.details["wire_bytes_up"] = content_nbytes(reply.content)
            reports.append(report)

        def on_offline(target: tuple[int, int]) -> None:
            reports.append(ClientReport.failure(target[0], "node went offline during the round",
                                                details={"node_id": target[1]}))

        late = self._await(pending, time.monotonic() + timeout if timeout > 0 else None, on_reply, on_offline)
        for cid, node in late.values():
            reports.append(ClientReport.failure(cid, f"no reply within round-timeout={timeout:g}s",
                                                details={"node_id": node}))
        return reports

    def _await(self, pending: dict[str, tuple[int, int]], deadline: float | None,
               on_reply: Callable[[tuple[int, int], Message], None], on_offline: Callable[[tuple[int, int]], None]
               ) -> dict[str, tuple[int, int]]:
        """Poll replies to ``pending`` (message id -> (client id, node id)) until each has a reply (``on_reply``) or
        its node went offline (``on_offline``), or ``deadline`` (None = none) passed; returns those still pending."""
        pending = dict(pending)
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                target = pending.pop(reply.metadata.reply_to_message_id, None)
                if target is not None:
                    on_reply(target, reply)
            if not pending:
                break
            online = self._online()
            for msg_id, target in list(pending.items()):
                if target[1] not in online:
                    del pending[msg_id]
                    on_offline(target)
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(self.settings.poll_interval)
        return pending


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the fedspear federation described by the run config on the connected SuperNodes."""
    setup_logging()
    settings = ServerSettings.from_run_config(context.run_config)
    cfg = settings.config()
    server, first_round = open_server(cfg, resume=settings.resume)
    try:  # the server holds its run folder until the run ends, however it ends
        clients = GridClients(grid, cfg.data.num_clients, server.cfg.to_yaml(), settings)
        if first_round <= cfg.fl.rounds:
            clients.wait_for_clients(cfg.data.num_clients, settings.connect_timeout)
        server.run_rounds(clients, first_round, after_round=lambda r: clients.publish(server.global_state, r))
        server.finish()
    finally:
        server.record.release()
