"""The run folder (``output_dir``): resolved config, per-round metrics, adapters, checkpoint and report.

Layout::

    run_dir/
      config.yaml             the resolved Config (cfg.to_yaml())
      metrics.jsonl           one JSON object per round (round 0 = the initial evaluation): a RoundRow
                              (fedspear/federation/rounds.py) as RoundRow.to_dict() writes it
      adapters/round_NNNN/    global adapters saved at evaluation rounds
      checkpoint/state.safetensors  the latest resumable state: one file, committed atomically
      plots/*.png, report.md  written by :func:`fedspear.report.write_report`

metrics.jsonl is append-only and each row is flushed and fsync-ed, so a crash loses at most the row being
written; :meth:`RunRecord.read_metrics` skips such a truncated last line.

The checkpoint is one safetensors file whose metadata names its round, the length and SHA-256 of
metrics.jsonl up to that round's row, and a SHA-256 over its own header entries, metadata and tensor bytes.
It is written to a temporary file, fsync-ed, renamed over the old one and the folder fsync-ed, so the round
can never disagree with the tensors; :meth:`RunRecord.read_checkpoint` verifies all of it before a resume
and raises :class:`RunFileError` naming the damaged file. A folder whose run never completed round 0 holds
no checkpoint and can be started again.

A run owns its folder: :meth:`RunRecord.create` (and :meth:`RunRecord.lock` for a resume) takes an exclusive
lock on ``run_dir/.fedspear-run.lock`` (``filelock``, an ``flock`` on Unix) that is held until the run ends or its
process dies, so a folder a live run holds is refused (:class:`RunInUseError`) and never taken for a failed
start, while a folder whose process died is free again. :func:`claim_new_folder` makes a folder that did not
exist (``name``, else ``name-1``, ``name-2``...) for output_dir names that are meant to be new (``{time}``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from fedspear.config import Config
from fedspear.federation.rounds import RoundRow

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
REPORT_FILE = "report.md"
CHECKPOINT_FILE = "state.safetensors"
CHECKPOINT_FORMAT = "fedspear-checkpoint-1"
LOCK_FILE = ".fedspear-run.lock"  # flock-ed by the process that runs in the folder; holds its pid
MAX_SUFFIX = 1000  # claim_new_folder tries name, name-1 ... name-MAX_SUFFIX
REPORT_TITLE = "# Run report: "
# What a start that failed before its first checkpoint may leave; removed when the folder is started again.
_START_LEFTOVERS = (METRICS_FILE, "data_stats.json", REPORT_FILE, "plots", "adapters", "checkpoint",
                    "tensorboard", "wandb")
# Write failures a user fixes on the machine (free space, quota, a read-only mount, permissions): one line, exit 2.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})

# Test hook: called with a label after every durable write of the run folder ("config", "metrics",
# "adapter", "checkpoint.tmp", "checkpoint.replace"); a test makes it raise to simulate a kill at that point.
fault_hook: Callable[[str], None] | None = None


class RunExistsError(ValueError):
    """The output folder already holds a started or finished run."""


class RunInUseError(RunExistsError):
    """Another live process holds the run folder (it is running or resuming a run there)."""


class RunDirError(ValueError):
    """``output_dir`` cannot hold a run (empty, a file, below a file, not writable)."""


class RunFileError(ValueError):
    """A file of the run folder (checkpoint, metrics.jsonl) is damaged or disagrees with the others."""


class RunWriteError(RunDirError):
    """The disk refused a write of the run folder (no space left, quota, read-only, permission denied)."""


@contextlib.contextmanager
def disk_errors(path: Path, what: str, advice: str) -> Iterator[None]:
    """Turn an ``OSError`` of :data:`DISK_ERRNOS` raised inside the block into one :class:`RunWriteError` line.

    Other errors pass through unchanged.

    Args:
        path: the file or folder being written (the message names it).
        what: what was being written, e.g. "the checkpoint of round 3".
        advice: what the user does next, e.g. "free space, then continue with `fedspear run --resume DIR`".

    Raises:
        RunWriteError: ``"{file}: {strerror} while writing {what}; {advice}"`` (e.g. "no space left on device").
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        reason = os.strerror(exc.errno).lower()
        raise RunWriteError(f"{path}: {reason} while writing {what}; {advice}") from exc


def durable_step(label: str) -> None:
    """Mark the end of one durable write of the run folder (calls :data:`fault_hook` when a test set it)."""
    if fault_hook is not None:  # looked up at call time, so tests can patch it
        fault_hook(label)


def fsync_dir(path: Path) -> None:
    """fsync a folder, so renames and new files in it survive a power loss (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def metrics_line(row: RoundRow | dict[str, Any]) -> str:
    """A row as its metrics.jsonl line, without the newline: JSON, NaN/inf as null (``json.loads`` of it is what
    :meth:`RunRecord.read_metrics` returns for that row)."""
    data = row.to_dict() if isinstance(row, RoundRow) else row
    return json.dumps(_jsonable(data), allow_nan=False, ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(allow_nan=False)`` accepts: NaN/inf become None,
    numpy/torch scalars become Python numbers, tuples and sets become lists, other objects their str()."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars, one-element tensors
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def _fsync_write(path: Path, text: str, mode: str) -> None:
    with open(path, mode, encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _probe_name() -> str:
    """A write-test file name unique to this process and call."""
    return f".fedspear-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def check_output_dir(run_dir: Path, key: str = "output_dir") -> None:
    """Raise :class:`RunDirError` unless ``run_dir`` is, or can be made, a writable folder.

    Refused: an empty path (it would write into the current folder), an existing regular file, a path below
    a file, a folder that cannot be created or written.
    """
    text = str(run_dir).strip()
    if not text or Path(text) == Path("."):
        raise RunDirError(f"{key} is empty; set it to a new folder, e.g. {key}=runs/my-run")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{key}={path} is an existing file, not a folder; choose a folder path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirError(f"{key}={path}: {parent} is a file, so no folder can be made below it; "
                                  "choose another path")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / _probe_name()  # a name of this process's own: racing starts never unlink each other's
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"{key}={path} cannot be written ({exc.strerror or exc}); choose a folder you can "
                          "write to") from None


def claim_new_folder(path: Path, key: str = "output_dir") -> Path:
    """Create a folder that did not exist: ``path``, or ``path-1``, ``path-2``... when that name is taken.

    Each try is one ``os.mkdir``, which fails when the name exists, so processes that race for one name (runs
    started in the same second with ``{time}`` in ``output_dir``) each get a folder of their own.

    Returns:
        The folder created.

    Raises:
        RunDirError: the parent cannot be made or written, or ``MAX_SUFFIX`` names are taken.
    """
    path = Path(str(path).strip()).expanduser()
    if path.parent != Path("."):
        check_output_dir(path.parent, key)
    for i in range(MAX_SUFFIX + 1):
        candidate = path if i == 0 else path.with_name(f"{path.name}-{i}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunDirError(f"{key}={candidate} cannot be created ({exc.strerror or exc}); choose a folder you "
                              "can write to") from None
        if i:
            logger.info("%s exists (another run started in the same second); this run uses %s", path, candidate)
        return candidate
    raise RunDirError(f"{key}={path}: {path.name}-1 to -{MAX_SUFFIX} all exist; choose another output_dir")


def _probe_dir(path: Path) -> None:
    """Create and remove a file in ``path`` (an ``OSError`` when the folder cannot take new files)."""
    probe = path / _probe_name()
    with open(probe, "wb"):
        pass
    probe.unlink()


class RunRecord:
    """Reads and writes one run folder.

    A record that created (:meth:`create`) or locked (:meth:`lock`) its folder holds it until :meth:`release`,
    the end of a ``with`` block, or the end of the record or its process (keep the record while the run goes).

    Args:
        run_dir: the run folder (``cfg.output_dir``); nothing is created until :meth:`create`.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.config_path = self.run_dir / CONFIG_FILE
        self.metrics_path = self.run_dir / METRICS_FILE
        self.report_path = self.run_dir / REPORT_FILE
        self._lock: Any = None

    def __enter__(self) -> RunRecord:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def lock(self) -> None:
        """Hold the folder for this process: an exclusive, non-blocking lock on ``.fedspear-run.lock``.

        The operating system drops the lock when the process ends, however it ends, so a folder whose run died
        is never held. Holding it again through the same record is a no-op.

        Raises:
            RunInUseError: another live process holds the folder (the message names its pid).
            RunDirError: the lock file cannot be created (the folder is missing or not writable).
        """
        from filelock import FileLock, Timeout

        if self._lock is not None and self._lock.is_locked:
            return
        lock = FileLock(self.run_dir / LOCK_FILE, thread_local=False, on_acquired=_write_pid)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # a TimeoutError, so before OSError
            pid = _read_pid(self.run_dir / LOCK_FILE)
            holder = f" (pid {pid})" if pid else ""
            raise RunInUseError(
                f"output folder {self.run_dir} is in use by a running fedspear process{holder}; wait for it to end "
                "or choose another output_dir"
            ) from None
        except OSError as exc:
            raise RunDirError(f"{self.run_dir} cannot be locked for this run ({exc.strerror or exc}); choose a "
                              "folder you can write to") from None
        self._lock = lock

    def release(self) -> None:
        """Let other processes use the folder (no-op when this record does not hold it)."""
        if self._lock is not None:
            self._lock.release(force=True)
            self._lock = None

    def has_run(self) -> bool:
        """Whether the folder holds a run that completed round 0: a checkpoint, or metrics rows of rounds >= 1.

        A folder left by a start that failed earlier (config.yaml, perhaps a round-0 row) is not a run.
        """
        ckpt = self.checkpoint_dir()
        if (ckpt / CHECKPOINT_FILE).exists() or (ckpt / "round.json").exists():
            return True
        try:
            return self.last_completed_round() >= 1
        except ValueError:  # a damaged metrics file: something is there, never overwrite it silently
            return True

    def create(self, cfg: Config, resume: bool = False) -> None:
        """Create the folder and write config.yaml.

        A folder whose run never completed round 0 is reused: what that start left (metrics, adapters,
        report) is removed first, with a warning.

        Args:
            cfg: the resolved configuration.
            resume: continue a run in this folder; its config.yaml is kept (written only if missing).

        The folder is locked first (:meth:`lock`) and stays held by this record until :meth:`release`.

        Raises:
            RunDirError: the folder cannot be created or written (see :func:`check_output_dir`).
            RunInUseError: another live process holds the folder.
            RunExistsError: when not resuming and the folder already holds a run.
        """
        check_output_dir(self.run_dir)
        self.lock()
        try:
            if not resume and self.has_run():
                raise RunExistsError(
                    f"output folder {self.run_dir} already holds a run; continue it with `fedspear run --resume "
                    f"{self.run_dir}` or choose a new output_dir (e.g. output_dir={self.run_dir}_2)"
                )
            if not resume:
                self._clear_failed_start()
            if not (resume and self.config_path.exists()):
                with disk_errors(self.config_path, "the run's config", "free space (or fix the folder's permissions) "
                                 "and run the command again"):
                    _fsync_write(self.config_path, cfg.to_yaml(), "w")
                fsync_dir(self.run_dir)
                durable_step("config")
        except BaseException:
            self.release()
            raise

    def check_writable(self) -> None:
        """Raise :class:`RunWriteError` unless a resumed run can write everything it will write: new files in the
        folder and in checkpoint/, adapters/ and plots/ (where they exist), and appends to metrics.jsonl and
        report.md. Nothing is changed (a probe file is created and removed)."""
        advice = (f"make the run folder writable (e.g. chmod -R u+w {self.run_dir}) or copy it to a writable "
                  "place and resume that copy")
        targets = [self.run_dir] + [d for d in (self.checkpoint_dir(), self.run_dir / "adapters",
                                                self.run_dir / "plots") if d.is_dir()]
        for folder in targets:
            with disk_errors(folder, "a resumed run's files", advice):
                _probe_dir(folder)
        for path in (self.metrics_path, self.report_path):
            if path.exists():
                with disk_errors(path, "a resumed run's files", advice), open(path, "ab"):
                    pass

    def discard_start(self, remove_config: bool, made: Path | None) -> None:
        """Remove what a start that failed before round 0 wrote, so nothing of it is left behind.

        Args:
            remove_config: also remove config.yaml (the start wrote it; False when resuming a folder's own config).
            made: the first folder the start created (the run folder or a missing parent of it), or None: the run
                folder and its parents up to ``made`` are removed when they are then empty.
        """
        names = [*_START_LEFTOVERS, CONFIG_FILE] if remove_config else list(_START_LEFTOVERS)
        for name in names:  # still holding the lock: no other start can write here meanwhile
            path = self.run_dir / name
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        if made is None:
            return
        self.release()  # the folder goes: give up the lock, then remove its file and the empty folders
        with contextlib.suppress(OSError):
            (self.run_dir / LOCK_FILE).unlink()
        folder = self.run_dir
        while True:
            try:
                folder.rmdir()  # only when empty: never a file this start did not write
            except OSError:
                return
            if folder == made or folder.parent == folder:
                return
            folder = folder.parent

    def first_missing_folder(self) -> Path | None:
        """The outermost folder of the run folder's path that does not exist yet (what :meth:`create` will make),
        or None when the run folder exists."""
        if self.run_dir.exists():
            return None
        missing = self.run_dir
        while not missing.parent.exists() and missing.parent != missing:
            missing = missing.parent
        return missing

    def _clear_failed_start(self) -> None:
        left = [name for name in _START_LEFTOVERS if (self.run_dir / name).exists()]
        if self.config_path.exists() or left:
            logger.warning("%s holds a start that never completed round 0; starting it again (removing %s)",
                           self.run_dir, ", ".join(left) or "nothing")
        for name in left:
            path = self.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def append_metrics(self, row: RoundRow | dict[str, Any]) -> None:
        """Append one row (a :class:`~fedspear.federation.rounds.RoundRow` or a JSON object) to metrics.jsonl
        (NaN/inf stored as null), flushed and fsync-ed.

        A partial last line left by a crash is cut off first, so the new row starts on its own line.
        """
        line = metrics_line(row)
        what = f"the row of round {row.round if isinstance(row, RoundRow) else row.get('round')}"
        with disk_errors(self.metrics_path, what, self.resume_advice()):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._drop_partial_last_line()
            _fsync_write(self.metrics_path, line + "\n", "a")
        durable_step("metrics")

    def _drop_partial_last_line(self) -> None:
        if not self.metrics_path.exists():
            return
        data = self.metrics_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning("%s: dropping a partial last line (%d bytes)", self.metrics_path, len(data) - keep)
            with open(self.metrics_path, "r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """All rows of metrics.jsonl ([] when there is none); an unreadable last line (a crash) is skipped.

        Raises:
            RunFileError: a line other than the last is not a JSON object, or the file is not UTF-8 text.
        """
        if not self.metrics_path.exists():
            return []
        try:
            lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise RunFileError(f"{self.metrics_path}: not UTF-8 text ({exc.reason} at byte {exc.start}); the file "
                               "is damaged: restore it from a backup") from None
        rows: list[dict[str, Any]] = []
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                if lineno == len(lines):
                    logger.warning("%s: skipping a truncated last line (%s)", self.metrics_path, exc)
                    break
                raise RunFileError(f"{self.metrics_path}:{lineno}: corrupt metrics row ({exc}); the file is "
                                   "damaged: restore it from a backup") from None
            rows.append(row)
        return rows

    def read_rows(self) -> list[RoundRow]:
        """The rows of metrics.jsonl (:meth:`read_metrics`) as :class:`~fedspear.federation.rounds.RoundRow`
        objects, in file order; old or partial rows parse too (:meth:`RoundRow.from_dict`)."""
        return [RoundRow.from_dict(row) for row in self.read_metrics()]

    def last_completed_round(self) -> int:
        """The highest "round" in metrics.jsonl, or -1 when no row has one."""
        rounds = [row["round"] for row in self.read_metrics() if isinstance(row.get("round"), int)]
        return max(rounds, default=-1)

    def adapter_dir(self, round_idx: int) -> Path:
        """Folder of the global adapter saved after round ``round_idx`` (adapters/round_NNNN)."""
        return self.run_dir / "adapters" / f"round_{round_idx:04d}"

    def checkpoint_dir(self) -> Path:
        """Folder of the latest resumable state."""
        return self.run_dir / "checkpoint"

    def truncate_metrics_after(self, round_idx: int) -> None:
        """Keep only rows with round <= ``round_idx`` (rows without a round are kept); atomic rewrite.

        Used on resume, to drop rows of rounds after the checkpoint.
        """
        rows = [
            row for row in self.read_metrics() if not isinstance(row.get("round"), int) or row["round"] <= round_idx
        ]
        tmp = self.metrics_path.with_name(METRICS_FILE + ".tmp")
        text = "".join(json.dumps(row, allow_nan=False, ensure_ascii=False) + "\n" for row in rows)
        _fsync_write(tmp, text, "w")
        os.replace(tmp, self.metrics_path)
        fsync_dir(self.run_dir)

    # ------------------------------------------------------------------------------------------ checkpoint

    def checkpoint_path(self) -> Path:
        """The checkpoint file, ``checkpoint/state.safetensors``."""
        return self.checkpoint_dir() / CHECKPOINT_FILE

    def has_checkpoint(self) -> bool:
        """Whether a checkpoint file exists (it is verified only when read)."""
        return self.checkpoint_path().is_file()

    def write_checkpoint(self, tensors: dict[str, torch.Tensor], round_idx: int) -> None:
        """Commit the resumable state of round ``round_idx`` as one atomically replaced, fsync-ed file.

        The metadata holds the round, the byte length and SHA-256 of metrics.jsonl as it is now (it must
        already hold the round's row) and a SHA-256 over the header entries, the metadata and the tensor bytes.

        Args:
            tensors: name -> CPU tensor (any shapes and dtypes).
            round_idx: the last completed round.
        """
        from safetensors.torch import save

        metrics = self.metrics_path.read_bytes() if self.metrics_path.exists() else b""
        meta = {"format": CHECKPOINT_FORMAT, "round": str(round_idx), "metrics_bytes": str(len(metrics)),
                "metrics_sha256": hashlib.sha256(metrics).hexdigest()}
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        header, data = _split_safetensors(save(tensors, metadata=meta))
        meta["sha256"] = _checkpoint_digest(header, data)
        blob = save(tensors, metadata=meta)
        ckpt = self.checkpoint_dir()
        tmp = ckpt / (CHECKPOINT_FILE + ".tmp")
        kept = "the previous checkpoint is kept; " if self.has_checkpoint() else ""
        with disk_errors(self.checkpoint_path(), f"the checkpoint of round {round_idx}", kept + self.resume_advice()):
            try:
                ckpt.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as fh:
                    fh.write(blob)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)  # a partial file must not stay behind
                raise
        durable_step("checkpoint.tmp")
        os.replace(tmp, self.checkpoint_path())
        fsync_dir(ckpt)
        durable_step("checkpoint.replace")

    def resume_advice(self) -> str:
        """What to do after a failed write: free space (or fix permissions), then resume this folder."""
        return f"free space (or fix the folder's permissions), then continue with `fedspear run --resume {self.run_dir}`"

    def read_checkpoint(self) -> tuple[int, dict[str, torch.Tensor]]:
        """Read and verify the checkpoint and metrics.jsonl up to it; cut metrics rows written after it.

        Returns:
            (round, tensors).

        Raises:
            RunFileError: the checkpoint is missing, unreadable, truncated, altered (checksum), or metrics.jsonl
                is shorter than or differs from what the checkpoint recorded; the message names the file and
                what to do.
        """
        from safetensors.torch import load

        path = self.checkpoint_path()
        if not path.is_file():
            raise RunFileError(f"{path}: no checkpoint; {self._restart_hint()}")
        blob = path.read_bytes()
        try:
            header, data = _split_safetensors(blob)
            meta = header.get("__metadata__") or {}
            if meta.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("no fedspear checkpoint metadata (written by another program or version)")
            if meta.get("sha256") != _checkpoint_digest(header, data):
                raise ValueError("checksum mismatch: its bytes were altered")
            round_idx, metrics_len = int(meta["round"]), int(meta["metrics_bytes"])
            metrics_sha = str(meta["metrics_sha256"])
            tensors = load(blob)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise RunFileError(f"{path}: damaged checkpoint ({_short(exc)}); {self._restart_hint()}") from None
        metrics = self.metrics_path.read_bytes() if self.metrics_path.exists() else b""
        if len(metrics) < metrics_len or hashlib.sha256(metrics[:metrics_len]).hexdigest() != metrics_sha:
            problem = "shorter than" if len(metrics) < metrics_len else "different from"
            raise RunFileError(
                f"{self.metrics_path}: {problem} what the checkpoint of round {round_idx} recorded (damaged or "
                f"edited); restore it from a backup, or {self._restart_hint()}"
            )
        if len(metrics) > metrics_len:  # rows of a round that ended after its row but before its checkpoint
            with open(self.metrics_path, "r+b") as fh:
                fh.truncate(metrics_len)
                fh.flush()
                os.fsync(fh.fileno())
        return round_idx, tensors

    def _restart_hint(self) -> str:
        saved = sorted(p.name for p in (self.run_dir / "adapters").glob("round_*") if p.is_dir())
        last = f" (its last saved adapter is adapters/{saved[-1]})" if saved else ""
        return (f"this run cannot be resumed{last}: start it again with `fedspear run` and a new output_dir, "
                f"or delete {self.run_dir} and rerun")


def _write_pid(fd: int) -> None:
    """filelock's ``on_acquired`` hook: the lock file holds the pid of the process that holds it."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _split_safetensors(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(header JSON, tensor data) of a safetensors file's bytes; ValueError when the layout is broken."""
    if len(blob) < 8:
        raise ValueError(f"only {len(blob)} bytes")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > len(blob) - 8:
        raise ValueError(f"header of {size} bytes in a file of {len(blob)} (truncated)")
    try:
        header = json.loads(blob[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, blob[8 + size :]


def _checkpoint_digest(header: dict[str, Any], data: bytes) -> str:
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != "sha256"}
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    digest = hashlib.sha256(json.dumps([entries, meta], sort_keys=True).encode())
    digest.update(data)
    return digest.hexdigest()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
