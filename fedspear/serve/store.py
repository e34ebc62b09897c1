"""The local trace store: every interaction of a served client, in one SQLite file on the device.

One *interaction* is a question and its attempts: attempt 0 is the first answer y0 to the task prompt x0,
attempt k >= 1 the k-th revision, generated from the revision prompt built from x0, the latest answer and
the person's hint. Each attempt keeps the exact prompt ids fed to the model, the sampled completion ids
(EOS only where emitted), the decoded text, the adapter version that produced it, timings and the person's
verdict. The interaction's ``state`` follows the person's verdicts::

    awaiting_verdict --right (y0)--> accepted             (win (x0, y0))
    awaiting_verdict --right (y')--> fixed                (win (x0, y'), lose (x0, y0) with confidence 1.0)
    awaiting_verdict --wrong-------> awaiting_hint        while revisions are left, else unfixed
    awaiting_hint    --hint--------> awaiting_verdict     (a new revision attempt)
    awaiting_hint / a judged-wrong y0 closed by the person -> unfixed   (lose (x0, y0) with confidence 0.5)
    awaiting_verdict on y0 closed by the person -------> abandoned     (never judged: not trained on)

Durability: WAL journal, ``synchronous=FULL``, one transaction per change, committed before the caller
answers the page, so a ``kill -9`` loses no acknowledged trace. One connection per store object, guarded by
a lock (the app's threads share it); other processes (``fedspear train-local``) open their own and WAL lets
them read while the app writes. Nothing here is ever sent anywhere: :mod:`fedspear.serve.learning` turns
traces into adapter updates, and only adapter tensors and scalar metrics leave the device.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedspear.serve.security import owner_only_file

SCHEMA_VERSION = 1
STORE_FILE = "traces.sqlite"  # the store's file name in a client's state folder

AWAITING_VERDICT = "awaiting_verdict"
AWAITING_HINT = "awaiting_hint"
ACCEPTED = "accepted"
FIXED = "fixed"
UNFIXED = "unfixed"
ABANDONED = "abandoned"
TRAINABLE_STATES = (ACCEPTED, FIXED, UNFIXED)
OPEN_STATES = (AWAITING_VERDICT, AWAITING_HINT)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS interactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    state TEXT NOT NULL,
    model TEXT NOT NULL,
    example_id TEXT,
    question TEXT NOT NULL,
    prompt TEXT NOT NULL,
    max_revisions INTEGER NOT NULL,
    trained_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS interactions_by_state ON interactions (state, model, trained_count, created_at);
CREATE TABLE IF NOT EXISTS attempts (
    interaction_id INTEGER NOT NULL REFERENCES interactions (id),
    idx INTEGER NOT NULL,
    feedback TEXT,
    prompt TEXT NOT NULL,
    prompt_ids TEXT NOT NULL,
    completion_ids TEXT NOT NULL,
    text TEXT NOT NULL,
    finished INTEGER NOT NULL,
    adapter_version INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    created_at REAL NOT NULL,
    gen_seconds REAL NOT NULL,
    first_token_seconds REAL,
    verdict INTEGER,
    verdict_at REAL,
    PRIMARY KEY (interaction_id, idx)
);
CREATE TABLE IF NOT EXISTS trainings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    label TEXT NOT NULL,
    interaction_ids TEXT NOT NULL,
    metrics TEXT NOT NULL
);
"""


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message says what to do."""


class NotFoundError(StoreError):
    """No interaction with that id."""


class StateError(StoreError):
    """The change does not fit the interaction's state (e.g. a second tab already judged that answer)."""


@dataclass
class NewAttempt:
    """A generated answer about to be stored.

    Attributes:
        prompt: the prompt text (x0, or the revision prompt).
        prompt_ids: the prompt ids as fed to the model.
        completion_ids: the sampled ids, EOS only where generation emitted it.
        text: the decoded completion.
        finished: whether generation emitted EOS.
        adapter_version: the adapter version that generated it.
        seed: the sampler seed.
        gen_seconds: generation wall time.
        first_token_seconds: time to the first streamed token (None when not streamed).
        feedback: the hint this revision answers; None for a first answer.
    """

    prompt: str
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    finished: bool
    adapter_version: int
    seed: int
    gen_seconds: float
    first_token_seconds: float | None = None
    feedback: str | None = None


@dataclass
class Attempt(NewAttempt):
    """A stored attempt: :class:`NewAttempt` plus its index, time and verdict (True right, False wrong, None)."""

    idx: int = 0
    created_at: float = 0.0
    verdict: bool | None = None
    verdict_at: float | None = None


@dataclass
class Interaction:
    """One question and its attempts (see the module docstring for ``state``)."""

    id: int
    session: str
    created_at: float
    updated_at: float
    state: str
    model: str
    example_id: str | None
    question: str
    prompt: str
    max_revisions: int
    trained_count: int
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def latest(self) -> Attempt:
        return self.attempts[-1]

    @property
    def revisions_left(self) -> int:
        return max(0, self.max_revisions - (len(self.attempts) - 1))

    def to_dict(self, with_ids: bool = False) -> dict[str, Any]:
        """A JSON-ready view; token ids only with ``with_ids``."""
        out = asdict(self)
        out["revisions_left"] = self.revisions_left
        if not with_ids:
            for a in out["attempts"]:
                del a["prompt_ids"], a["completion_ids"]
        return out


class TraceStore:
    """The SQLite trace store of one client (see the module docstring).

    Args:
        path: the database file (created with its folder when missing; the file is made owner-only, ``0600``,
            and SQLite gives its journal files the same mode).
        timeout_s: how long to wait for another process's write lock.

    Raises:
        StoreError: the file is not a fedspear store, is corrupt, or has a newer schema.
    """

    def __init__(self, path: str | Path, timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            for path in (self.path, self.path.with_name(self.path.name + "-wal"),
                         self.path.with_name(self.path.name + "-shm")):
                if path == self.path or path.exists():  # SQLite gives new journal files the database's mode
                    owner_only_file(path)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the trace store ({exc.strerror})") from None
        try:
            self._db = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None,
                                       check_same_thread=False)
            self._setup(timeout_s)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable trace store ({exc}); move it away to start a new one") from None

    def _setup(self, timeout_s: float) -> None:
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode}); put the store on a local disk")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise StoreError(f"{self.path}: integrity check failed ({check}); move it away to start a new one")
        with self._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: written by a newer fedspear (schema {row[0]} > {SCHEMA_VERSION}); "
                                 "upgrade fedspear")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), rolled back on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------------------------------ writes

    def create_interaction(self, *, session: str, question: str, prompt: str, model: str, max_revisions: int,
                           first: NewAttempt, example_id: str | None = None) -> Interaction:
        """Store a new interaction with its first answer (state ``awaiting_verdict``); committed on return."""
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO interactions (session, created_at, updated_at, state, model, example_id, question, "
                "prompt, max_revisions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session, now, now, AWAITING_VERDICT, model, example_id, question, prompt, int(max_revisions)))
            interaction_id = int(cur.lastrowid)
            self._insert_attempt(db, interaction_id, 0, first, now)
        return self.get(interaction_id)

    def add_revision(self, interaction_id: int, attempt: NewAttempt) -> Interaction:
        """Store the next revision of an interaction that awaits a hint; committed on return.

        Raises:
            NotFoundError: no such interaction.
            StateError: it does not await a hint (already revised, judged or closed, e.g. in another tab).
        """
        if not attempt.feedback:
            raise ValueError("a revision needs the feedback it answers")
        now = time.time()
        with self._write() as db:
            state, n_attempts, max_revisions = self._state(db, interaction_id)
            if state != AWAITING_HINT or n_attempts > max_revisions:
                raise StateError(f"interaction {interaction_id} is {state}, not awaiting a hint")
            self._insert_attempt(db, interaction_id, n_attempts, attempt, now)
            db.execute("UPDATE interactions SET state = ?, updated_at = ? WHERE id = ?",
                       (AWAITING_VERDICT, now, interaction_id))
        return self.get(interaction_id)

    def set_verdict(self, interaction_id: int, attempt_idx: int, correct: bool) -> Interaction:
        """Record the person's verdict on the latest attempt and move the state; committed on return.

        Raises:
            NotFoundError: no such interaction.
            StateError: the attempt is not the latest one awaiting a verdict.
        """
        now = time.time()
        with self._write() as db:
            state, n_attempts, max_revisions = self._state(db, interaction_id)
            if state != AWAITING_VERDICT or attempt_idx != n_attempts - 1:
                raise StateError(f"interaction {interaction_id} is {state}; attempt {attempt_idx} cannot be judged "
                                 f"(latest attempt: {n_attempts - 1})")
            if correct:
                new_state = ACCEPTED if attempt_idx == 0 else FIXED
            else:
                new_state = AWAITING_HINT if attempt_idx < max_revisions else UNFIXED
            db.execute("UPDATE attempts SET verdict = ?, verdict_at = ? WHERE interaction_id = ? AND idx = ?",
                       (int(bool(correct)), now, interaction_id, attempt_idx))
            db.execute("UPDATE interactions SET state = ?, updated_at = ? WHERE id = ?",
                       (new_state, now, interaction_id))
        return self.get(interaction_id)

    def close_interaction(self, interaction_id: int) -> Interaction:
        """The person gives up: a wrong first answer becomes ``unfixed``, an unjudged one ``abandoned``.

        Closing an interaction that is already closed returns it unchanged.
        """
        now = time.time()
        with self._write() as db:
            state, _, _ = self._state(db, interaction_id)
            if state in OPEN_STATES:
                first_verdict = db.execute("SELECT verdict FROM attempts WHERE interaction_id = ? AND idx = 0",
                                           (interaction_id,)).fetchone()[0]
                new_state = UNFIXED if first_verdict == 0 else ABANDONED
                db.execute("UPDATE interactions SET state = ?, updated_at = ? WHERE id = ?",
                           (new_state, now, interaction_id))
        return self.get(interaction_id)

    def mark_trained(self, interaction_ids: list[int], label: str, metrics: dict[str, Any]) -> int:
        """Count one more training use of each interaction and log the training; returns the training id."""
        with self._write() as db:
            db.executemany("UPDATE interactions SET trained_count = trained_count + 1 WHERE id = ?",
                           [(i,) for i in interaction_ids])
            cur = db.execute("INSERT INTO trainings (created_at, label, interaction_ids, metrics) VALUES (?, ?, ?, ?)",
                             (time.time(), label, json.dumps(interaction_ids), json.dumps(metrics, default=float)))
            return int(cur.lastrowid)

    @staticmethod
    def _state(db: sqlite3.Connection, interaction_id: int) -> tuple[str, int, int]:
        row = db.execute("SELECT state, max_revisions, (SELECT COUNT(*) FROM attempts WHERE interaction_id = i.id) "
                         "FROM interactions AS i WHERE id = ?", (interaction_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no interaction {interaction_id}")
        return row[0], int(row[2]), int(row[1])

    @staticmethod
    def _insert_attempt(db: sqlite3.Connection, interaction_id: int, idx: int, a: NewAttempt, now: float) -> None:
        db.execute(
            "INSERT INTO attempts (interaction_id, idx, feedback, prompt, prompt_ids, completion_ids, text, finished, "
            "adapter_version, seed, created_at, gen_seconds, first_token_seconds) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (interaction_id, idx, a.feedback, a.prompt, json.dumps([int(t) for t in a.prompt_ids]),
             json.dumps([int(t) for t in a.completion_ids]), a.text, int(a.finished), int(a.adapter_version),
             int(a.seed), now, float(a.gen_seconds), a.first_token_seconds))

    # ------------------------------------------------------------------------------------------- reads

    def get(self, interaction_id: int) -> Interaction:
        """One interaction with its attempts.

        Raises:
            NotFoundError: no such interaction.
        """
        with self._lock:
            row = self._db.execute(f"SELECT {_INTERACTION_COLUMNS} FROM interactions WHERE id = ?",
                                   (interaction_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no interaction {interaction_id}")
            return self._with_attempts([row])[0]

    def recent(self, limit: int = 20, session: str | None = None) -> list[Interaction]:
        """The newest interactions (of one session when given), newest first."""
        where, args = ("WHERE session = ?", (session,)) if session is not None else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT {_INTERACTION_COLUMNS} FROM interactions {where} "
                                    "ORDER BY id DESC LIMIT ?", (*args, int(limit))).fetchall()
            return self._with_attempts(rows)

    def training_candidates(self, model: str, limit: int) -> list[Interaction]:
        """Closed, judged interactions of ``model`` to train on: least-trained first, newest first among equals."""
        placeholders = ", ".join("?" for _ in TRAINABLE_STATES)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_INTERACTION_COLUMNS} FROM interactions WHERE state IN ({placeholders}) AND model = ? "
                "ORDER BY trained_count ASC, created_at DESC, id DESC LIMIT ?",
                (*TRAINABLE_STATES, model, int(limit))).fetchall()
            return self._with_attempts(rows)

    def counts(self, model: str | None = None) -> dict[str, int]:
        """Interactions per state, ``total``, and ``untrained`` trainable ones (of ``model`` when given)."""
        where, args = ("WHERE model = ?", (model,)) if model is not None else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT state, COUNT(*), SUM(trained_count = 0) FROM interactions {where} "
                                    "GROUP BY state", args).fetchall()
        out = {s: 0 for s in (*OPEN_STATES, *TRAINABLE_STATES, ABANDONED)}
        untrained = 0
        for state, n, fresh in rows:
            out[state] = int(n)
            if state in TRAINABLE_STATES:
                untrained += int(fresh or 0)
        out["total"] = sum(out.values())
        out["untrained"] = untrained
        return out

    def trainings(self) -> list[dict[str, Any]]:
        """The training log, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, created_at, label, interaction_ids, metrics FROM trainings "
                                    "ORDER BY id").fetchall()
        return [{"id": r[0], "created_at": r[1], "label": r[2], "interaction_ids": json.loads(r[3]),
                 "metrics": json.loads(r[4])} for r in rows]

    def integrity(self) -> str:
        """SQLite's full ``integrity_check`` result ("ok" when healthy)."""
        with self._lock:
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def _with_attempts(self, rows: list[tuple]) -> list[Interaction]:
        out = [Interaction(*row) for row in rows]
        if not out:
            return out
        by_id = {i.id: i for i in out}
        placeholders = ", ".join("?" for _ in by_id)
        for r in self._db.execute(f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE interaction_id IN ({placeholders}) "
                                  "ORDER BY interaction_id, idx", tuple(by_id)).fetchall():
            by_id[r[0]].attempts.append(Attempt(
                prompt=r[3], prompt_ids=json.loads(r[4]), completion_ids=json.loads(r[5]), text=r[6],
                finished=bool(r[7]), adapter_version=r[8], seed=r[9], gen_seconds=r[11], first_token_seconds=r[12],
                feedback=r[2], idx=r[1], created_at=r[10], verdict=None if r[13] is None else bool(r[13]),
                verdict_at=r[14]))
        return out


_INTERACTION_COLUMNS = ("id, session, created_at, updated_at, state, model, example_id, question, prompt, "
                        "max_revisions, trained_count")
_ATTEMPT_COLUMNS = ("interaction_id, idx, feedback, prompt, prompt_ids, completion_ids, text, finished, "
                    "adapter_version, seed, created_at, gen_seconds, first_token_seconds, verdict, verdict_at")
