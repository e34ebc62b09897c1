"""The trace store: the interaction state machine, durability (WAL, kill -9), concurrency, restarts."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from fedspear.serve.store import (
    ABANDONED,
    ACCEPTED,
    AWAITING_HINT,
    AWAITING_VERDICT,
    FIXED,
    UNFIXED,
    NewAttempt,
    NotFoundError,
    StateError,
    StoreError,
    TraceStore,
)


def attempt(text: str, ids: list[int], version: int = 0, feedback: str | None = None) -> NewAttempt:
    return NewAttempt(prompt=f"prompt for {text}", prompt_ids=[1, 2, 3], completion_ids=ids, text=text,
                      finished=True, adapter_version=version, seed=7, gen_seconds=0.25, first_token_seconds=0.05,
                      feedback=feedback)


def new(store: TraceStore, model: str = "m@1", max_revisions: int = 2, text: str = "B") -> int:
    it = store.create_interaction(session="tab1", question="q?", prompt="Question: q?\nAnswer:", model=model,
                                  max_revisions=max_revisions, first=attempt(text, [5, 9]))
    return it.id


def test_fix_by_revision_keeps_every_field(tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        iid = new(store)
        it = store.get(iid)
        assert (it.state, it.session, it.question, it.max_revisions, it.revisions_left) == (
            AWAITING_VERDICT, "tab1", "q?", 2, 2)
        a0 = it.attempts[0]
        assert (a0.idx, a0.prompt_ids, a0.completion_ids, a0.text, a0.verdict, a0.seed) == (0, [1, 2, 3], [5, 9], "B",
                                                                                            None, 7)
        assert store.set_verdict(iid, 0, False).state == AWAITING_HINT
        it = store.add_revision(iid, attempt("C", [6, 9], version=3, feedback="think of grass"))
        assert it.state == AWAITING_VERDICT and it.revisions_left == 1
        assert (it.latest.idx, it.latest.feedback, it.latest.completion_ids, it.latest.adapter_version) == (
            1, "think of grass", [6, 9], 3)
        it = store.set_verdict(iid, 1, True)
        assert it.state == FIXED
        assert [a.verdict for a in it.attempts] == [False, True]
        assert all(a.verdict_at is not None and a.verdict_at >= a.created_at for a in it.attempts)


def test_state_machine_refuses_out_of_turn_changes(tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        iid = new(store, max_revisions=1)
        with pytest.raises(StateError):  # no hint before a wrong verdict
            store.add_revision(iid, attempt("C", [6], feedback="hint"))
        with pytest.raises(StateError):  # attempt 1 does not exist yet
            store.set_verdict(iid, 1, True)
        store.set_verdict(iid, 0, False)
        with pytest.raises(StateError):  # a second tab judging the same answer again
            store.set_verdict(iid, 0, True)
        with pytest.raises(ValueError):
            store.add_revision(iid, attempt("C", [6], feedback=None))
        store.add_revision(iid, attempt("C", [6], feedback="hint"))
        # the only revision is rejected: no revision left -> unfixed
        assert store.set_verdict(iid, 1, False).state == UNFIXED
        with pytest.raises(StateError):
            store.add_revision(iid, attempt("D", [7], feedback="hint"))
        with pytest.raises(NotFoundError):
            store.get(iid + 1)
        with pytest.raises(NotFoundError):
            store.set_verdict(iid + 1, 0, True)


def test_close_gives_unfixed_after_a_wrong_verdict_else_abandoned(tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        judged, unjudged, right = new(store), new(store), new(store)
        store.set_verdict(judged, 0, False)
        store.set_verdict(right, 0, True)
        assert store.close_interaction(judged).state == UNFIXED
        assert store.close_interaction(unjudged).state == ABANDONED
        assert store.close_interaction(right).state == ACCEPTED  # closed already: unchanged
        counts = store.counts()
        assert (counts[UNFIXED], counts[ABANDONED], counts[ACCEPTED], counts["total"], counts["untrained"]) == (
            1, 1, 1, 3, 2)


def test_training_candidates_least_trained_then_newest_and_same_model_only(tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        ids = []
        for _ in range(4):
            iid = new(store)
            store.set_verdict(iid, 0, True)
            ids.append(iid)
        other = new(store, model="other@2")
        store.set_verdict(other, 0, True)
        open_one = new(store)  # not judged: never a candidate
        store.mark_trained([ids[3], ids[2]], "round 1", {"wins": 2})
        got = [it.id for it in store.training_candidates("m@1", limit=3)]
        assert got == [ids[1], ids[0], ids[3]]  # untrained newest first, then trained newest first
        assert open_one not in [it.id for it in store.training_candidates("m@1", limit=10)]
        assert [it.id for it in store.training_candidates("other@2", limit=10)] == [other]
        log = store.trainings()
        assert len(log) == 1 and log[0]["interaction_ids"] == [ids[3], ids[2]] and log[0]["metrics"] == {"wins": 2}
        assert store.get(ids[3]).trained_count == 1 and store.get(ids[0]).trained_count == 0


def test_wal_mode_and_survives_reopen_with_another_model(tmp_path):
    path = tmp_path / "t.sqlite"
    with TraceStore(path) as store:
        iid = new(store, model="old@1")
        store.set_verdict(iid, 0, True)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
    with TraceStore(path) as store:  # a restart with another base model keeps the old traces
        assert store.get(iid).state == ACCEPTED and store.get(iid).attempts[0].completion_ids == [5, 9]
        assert store.training_candidates("new@2", 10) == []
        assert store.counts("old@1")["accepted"] == 1 and store.counts("new@2")["total"] == 0
        assert store.integrity() == "ok"


def test_not_a_store_is_a_clear_error(tmp_path):
    bad = tmp_path / "t.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable trace store"):
        TraceStore(bad)


def test_two_tabs_and_a_second_process_write_concurrently(tmp_path):
    """Two threads on one store (two browser tabs) and a second connection (train-local) at the same time."""
    path = tmp_path / "t.sqlite"
    app_store, other = TraceStore(path), TraceStore(path)
    errors: list[Exception] = []

    def tab(store: TraceStore, n: int) -> None:
        try:
            for _ in range(n):
                iid = new(store)
                store.set_verdict(iid, 0, False)
                store.add_revision(iid, attempt("C", [6], feedback="h"))
                store.set_verdict(iid, 1, True)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=tab, args=(s, 25)) for s in (app_store, app_store, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    counts = app_store.counts()
    assert counts[FIXED] == counts["total"] == 75
    assert all(len(it.attempts) == 2 for it in app_store.recent(limit=100))
    assert app_store.integrity() == "ok"
    app_store.close()
    other.close()


WRITER = """
import sys
from fedspear.serve.store import NewAttempt, TraceStore
store = TraceStore(sys.argv[1])
for i in range(100000):
    a = NewAttempt("p", [1, 2], [3, i % 50], f"answer {i}", True, 0, i, 0.1)
    it = store.create_interaction(session="k", question=f"q{i}", prompt="p", model="m", max_revisions=0, first=a)
    store.set_verdict(it.id, 0, i % 2 == 0)
    print(it.id, flush=True)   # acknowledged: printed only after both commits
"""


def test_kill_9_loses_no_acknowledged_trace(tmp_path):
    path = tmp_path / "t.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    acked = []
    deadline = time.monotonic() + 60
    while len(acked) < 40 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            acked.append(int(line))
    proc.kill()  # SIGKILL, mid-write
    proc.wait(timeout=30)
    assert len(acked) >= 40
    with TraceStore(path) as store:
        assert store.integrity() == "ok"
        for n, iid in enumerate(acked):  # every acknowledged interaction is there with its verdict
            it = store.get(iid)
            assert it.question == f"q{n}" and it.attempts[0].completion_ids == [3, n % 50]
            assert it.state == (ACCEPTED if n % 2 == 0 else UNFIXED)
