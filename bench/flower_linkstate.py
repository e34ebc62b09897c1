"""Why Flower's simulation runtime slows down at large N: the cost of its message extractor, measured directly.

Flower 1.42's simulation policy (``flwr/server/superlink/fleet/vce/vce_api.py: add_messages_to_queue``) sweeps
every one of the N simulated nodes every 0.1 s with ``InMemoryLinkState.get_message_ins(node_id, limit=1)``,
which scans the whole message store (``list(message_ins_store)``, ``_check_stored_messages`` per message) under
the state's lock until it finds that node's message. So:

- a sweep with no message queued costs O(N) (it runs all the time, in the process that also runs the ServerApp);
- delivering N messages pushed at once (fedspear's discovery sends every node a ``query``) costs O(N^2).

This script builds the real ``InMemoryLinkState`` with N registered simulated nodes and times both, with stand-in
messages (only the metadata fields the scan reads).

Usage:
    python bench/flower_linkstate.py            # N = 1000, 10000
    python bench/flower_linkstate.py 100 1000 10000
"""

from __future__ import annotations

import sys
import time
import types
import uuid


def linkstate_cost(n: int, samples: int = 200) -> dict:
    """Seconds for one extractor sweep over ``n`` nodes with an empty store, and per delivery (mean over
    ``samples`` nodes spread over the store) with ``n`` undelivered messages queued, one per node."""
    import flwr.server.superlink.fleet.vce.vce_api as vce
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.simulation.run_simulation import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    nodes = list(vce._register_nodes(n, factory))  # as the simulation policy registers its nodes
    state = factory.state()
    state.run_ids[1] = types.SimpleNamespace(run=types.SimpleNamespace(federation_id="@none/default"))
    start = time.perf_counter()
    for node in nodes:
        state.get_message_ins(node_id=node, limit=1)
    empty_sweep = time.perf_counter() - start
    for node in nodes:
        meta = types.SimpleNamespace(dst_node_id=node, src_node_id=0, run_id=1, delivered_at="",
                                     created_at=time.time(), ttl=3600.0)
        state.message_ins_store[str(uuid.uuid4())] = types.SimpleNamespace(metadata=meta)
    picked = nodes[:: max(1, n // samples)]
    start = time.perf_counter()
    delivered = sum(len(state.get_message_ins(node_id=node, limit=1)) for node in picked)
    per_delivery = (time.perf_counter() - start) / len(picked)
    assert delivered == len(picked)
    return {"n": n, "empty_sweep_s": empty_sweep, "delivery_s": per_delivery, "deliver_all_s": per_delivery * n}


def main(argv: list[str] | None = None) -> list[dict]:
    sizes = [int(x) for x in (argv if argv is not None else sys.argv[1:])] or [1000, 10000]
    out = []
    for n in sizes:
        r = linkstate_cost(n)
        out.append(r)
        print(f"N={n}: a sweep with no message queued {r['empty_sweep_s'] * 1e3:.0f} ms (every 0.1 s); with N "
              f"messages queued, one delivery {r['delivery_s'] * 1e3:.2f} ms -> all N delivered in ~{r['deliver_all_s']:.0f} s")
    return out


if __name__ == "__main__":
    main()
