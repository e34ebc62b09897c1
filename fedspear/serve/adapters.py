"""Numbered adapter versions in a client's state folder, and the one the running app serves.

Layout of ``<state>/adapters/``::

    v0000.safetensors ...   one file per published version (PEFT state-dict names -> CPU tensors)
    current.json            {"version", "label", "model", "file", "created_at"} of the version to serve
    history.jsonl           one line per published version, oldest first

:meth:`AdapterRegistry.publish` first checks the tensors against the running model's adapter
(:func:`check_adapter`: the same names, shapes, a floating dtype, finite values) and refuses another layout
before anything is written. It writes the tensors (a uniquely named temporary file, fsync, rename) before it
points ``current.json`` at them (also by rename), so a reader sees either the old or the new version, never a
partial file. Publishing holds a cross-process file lock (``.publish.lock``, :mod:`filelock`), so two processes
publishing at once (``train-local`` while the SuperNode publishes a global adapter) get distinct versions and
both land in the history. The folder is owner-only (``0700``). Whoever obtains a new global adapter publishes it (``fedspear train-local``, a Flower client
receiving the server's aggregate, ``fedspear serve --adapter``); the app calls :meth:`LiveAdapter.refresh`
before each answer and loads it without a restart.

A version belongs to one base model, named by :func:`model_fingerprint`: a version of another model (the
client switched base models) is never loaded; the app then continues from the new model's latest version in
the history, or publishes its initial adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from fedspear.config import ConfigError
from fedspear.models import Policy
from fedspear.serve.security import owner_only_dir

ADAPTERS_DIR = "adapters"  # the adapter versions' folder in a client's state folder

logger = logging.getLogger("fedspear")

LOCK_FILE = ".publish.lock"
LOCK_TIMEOUT_S = 120.0


class AdapterError(ConfigError):
    """An adapter does not fit the running base model and LoRA settings (nothing was published)."""


def check_adapter(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], what: str = "the adapter") -> None:
    """Refuse an adapter that the running model cannot load: other names, shapes, a non-float dtype, NaN or inf.

    Args:
        state: the adapter to publish (PEFT state-dict names -> tensors).
        reference: the running policy's adapter (``policy.adapter.params``): its names and shapes are the base
            model's LoRA layout (target modules, rank).
        what: how the message names ``state`` (e.g. the folder it was read from).

    Raises:
        AdapterError: one line naming the first difference and what to do.
    """
    extra, missing = sorted(set(state) - set(reference)), sorted(set(reference) - set(state))
    fix = "; pass an adapter trained for this model and LoRA settings (model.*, lora.*)"
    if extra or missing:
        example = f"unexpected '{extra[0]}'" if extra else f"missing '{missing[0]}'"
        raise AdapterError(f"{what} does not fit this model: {len(extra)} unexpected and {len(missing)} missing "
                           f"tensors ({example}){fix}")
    for key, ref in reference.items():
        t = state[key]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise AdapterError(f"{what}: '{key}' is {getattr(t, 'dtype', type(t).__name__)}, not a float tensor{fix}")
        if tuple(t.shape) != tuple(ref.shape):
            raise AdapterError(f"{what}: '{key}' has shape {tuple(t.shape)}, this model expects {tuple(ref.shape)} "
                               f"(another LoRA rank or base model){fix}")
        if not bool(torch.isfinite(t).all()):
            raise AdapterError(f"{what}: '{key}' holds NaN or infinite values; it cannot be served")


@dataclass(frozen=True)
class AdapterVersion:
    """One published adapter.

    Attributes:
        version: its number (0, 1, ...), unique within the state folder.
        label: where it came from ("initial", "local round 3", "server round 7", ...).
        model: the fingerprint of the base model it belongs to.
        file: its tensor file, relative to the adapters folder.
        created_at: publication time (Unix seconds).
    """

    version: int
    label: str
    model: str
    file: str
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_fingerprint(policy: Policy) -> str:
    """``<model name>@<12 hex digits>``: the digits hash the tokenizer's vocabulary and the adapter's layout.

    Stored token ids and adapter tensors are only meaningful for the same tokenizer and LoRA layout, so a
    trace or adapter of another fingerprint is never trained on or loaded.
    """
    if policy.fingerprint is not None:
        return policy.fingerprint
    h = hashlib.sha256()
    vocab = policy.tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    for key, param in sorted(policy.adapter.params.items()):
        h.update(f"{key}:{tuple(param.shape)};".encode())
    policy.fingerprint = f"{policy.model_name}@{h.hexdigest()[:12]}"
    return policy.fingerprint


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(final: Path) -> Path:
    """A fresh, uniquely named (``mkstemp``) empty file next to ``final``, to write and then rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(tmp)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class AdapterRegistry:
    """The adapter versions of one client (see the module docstring).

    Args:
        folder: the adapters folder (created when missing; owner-only).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = owner_only_dir(Path(folder))
        self.lock = FileLock(str(self.folder / LOCK_FILE), timeout=LOCK_TIMEOUT_S, mode=0o600)

    @property
    def current_file(self) -> Path:
        return self.folder / "current.json"

    def current(self) -> AdapterVersion | None:
        """The version to serve, or None when none was published yet."""
        try:
            data = json.loads(self.current_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"{self.current_file}: unreadable ({exc}); delete it to start from the initial "
                               "adapter") from None
        return AdapterVersion(**data)

    def history(self) -> list[AdapterVersion]:
        """Every published version, oldest first."""
        path = self.folder / "history.jsonl"
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(AdapterVersion(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a torn last line after a crash; the version itself is in current.json
        return out

    def _next_version(self) -> int:
        numbers = [int(p.stem[1:]) for p in self.folder.glob("v*.safetensors") if p.stem[1:].isdigit()]
        current = self.current()
        if current is not None:
            numbers.append(current.version)
        return max(numbers, default=-1) + 1

    def publish(self, state: dict[str, torch.Tensor], label: str, model: str,
                reference: dict[str, torch.Tensor] | None = None) -> AdapterVersion:
        """Save ``state`` as the next version and make it current (under the cross-process publish lock).

        Args:
            state: adapter tensors (PEFT state-dict names).
            label: where it came from, shown on the page.
            model: the base model's :func:`model_fingerprint`.
            reference: the running model's adapter; when given, ``state`` is checked against it first
                (:func:`check_adapter`) and nothing is written when it does not fit.

        Returns:
            The new version.

        Raises:
            AdapterError: ``state`` does not fit ``reference``.
            filelock.Timeout: another process held the publish lock for over two minutes.
        """
        if reference is not None:
            check_adapter(state, reference, f"adapter '{label}'")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        with self.lock:
            version = self._next_version()
            name = f"v{version:04d}.safetensors"
            tmp = _temp_name(self.folder / name)
            try:
                save_file(tensors, str(tmp), metadata={"model": model, "label": label})
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, self.folder / name)
            finally:
                tmp.unlink(missing_ok=True)
            entry = AdapterVersion(version, label, model, name, time.time())
            _atomic_write_bytes(self.current_file, json.dumps(entry.to_dict()).encode())
            with open(self.folder / "history.jsonl", "a") as f:
                f.write(json.dumps(entry.to_dict()) + "\n")
                f.flush()
                os.fsync(f.fileno())
        logger.info("published adapter v%d (%s)", version, label)
        return entry

    def load(self, version: AdapterVersion) -> dict[str, torch.Tensor]:
        """The tensors of a published version (CPU)."""
        return load_file(str(self.folder / version.file))


def load_peft_adapter(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read an adapter saved by ``save_adapter`` / ``save_pretrained`` (e.g. ``runs/x/adapters/round_010``).

    Raises:
        FileNotFoundError: the folder holds no ``adapter_model.safetensors``.
    """
    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such adapter file; pass a folder written by `fedspear run`")
    return load_file(str(path))


class LiveAdapter:
    """The adapter loaded into a served policy, kept in step with the registry's current version.

    Args:
        policy: the served policy (its live model gets each new version).
        registry: the client's adapter registry.

    Attributes:
        loaded: the version in the live model.
        state: its tensors (CPU), the start state of the client's updates between rounds.
    """

    def __init__(self, policy: Policy, registry: AdapterRegistry) -> None:
        self.policy = policy
        self.registry = registry
        self.fingerprint = model_fingerprint(policy)
        self.loaded: AdapterVersion | None = None
        self.state: dict[str, torch.Tensor] = {}
        self._seen: tuple[int, int] | None = None

    def start(self, initial: dict[str, torch.Tensor] | None = None, label: str = "") -> AdapterVersion:
        """Load the current version, or publish one first: ``initial`` when given, else the adapter the policy's
        live model holds (a freshly loaded policy's initial adapter).

        A current version of another base model is left in the history; this model's latest version (or, when it
        has none, its initial adapter) is published again and served.
        """
        current = self.registry.current()
        reference = self.policy.adapter.params  # the running model's LoRA layout: names and shapes
        if initial is not None:
            current = self.registry.publish(initial, label or "imported", self.fingerprint, reference)
        elif current is None or current.model != self.fingerprint:
            mine = [v for v in self.registry.history()
                    if v.model == self.fingerprint and (self.registry.folder / v.file).is_file()]
            if current is not None:
                logger.warning("adapter v%d belongs to %s, not %s; switching to %s", current.version, current.model,
                               self.fingerprint, f"v{mine[-1].version}" if mine else "this model's initial adapter")
            if mine:  # this model was served here before: continue from its latest version
                current = self.registry.publish(self.registry.load(mine[-1]), mine[-1].label, self.fingerprint,
                                                reference)
            else:
                current = self.registry.publish(self.policy.adapter.get(), "initial", self.fingerprint, reference)
        self._load(current)
        return current

    def refresh(self) -> bool:
        """Load the registry's current version when it changed; call it while holding the model lock.

        Returns:
            True when a new version was loaded.
        """
        try:
            st = self.registry.current_file.stat()
        except FileNotFoundError:
            return False
        seen = (st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return False
        current = self.registry.current()
        self._seen = seen
        if current is None or (self.loaded is not None and current.version == self.loaded.version):
            return False
        if current.model != self.fingerprint:
            logger.warning("ignoring adapter v%d: it belongs to %s, not %s", current.version, current.model,
                           self.fingerprint)
            return False
        self._load(current, seen)
        logger.info("now serving adapter v%d (%s)", current.version, current.label)
        return True

    def _load(self, version: AdapterVersion, seen: tuple[int, int] | None = None) -> None:
        state = self.registry.load(version)
        self.policy.adapter.set(state)  # raises KeyError when the layout differs
        self.state = {k: v.clone() for k, v in state.items()}
        self.loaded = version
        if seen is None:
            st = self.registry.current_file.stat()
            seen = (st.st_mtime_ns, st.st_size)
        self._seen = seen

    def restore(self) -> None:
        """Put the loaded version back into the live model (after the policy trained)."""
        self.policy.adapter.set(self.state)
