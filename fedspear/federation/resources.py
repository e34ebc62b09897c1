"""What a client update costs: peak memory and the bytes of the adapters it receives and sends.

Memory (measured where the client update runs, reported as the client's scalar metrics, so they cross Flower's
wire like the others; MB = 10**6 bytes):

- ``peak_rss_mb``: the process's resident-set high-water mark (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) at
  the end of the update, over the whole life of the process (model loading, earlier rounds, evaluation; in the
  simulator all clients share one process, and ``fedspear compare``/``sweep`` run their runs one after another
  in one process, so a later run carries an earlier one's peak): what the operating system had to give it.
- ``update_rss_peak_mb``: the resident set's peak while this client's update ran: on Linux the kernel's
  high-water mark, reset when the update starts (``/proc/self/clear_refs``; the lifetime figure above is kept
  across resets); elsewhere the highest RSS sampled every :data:`SAMPLE_S` seconds in a thread (a sampler can
  miss a spike shorter than that). This is the figure to compare between algorithms.
- ``cuda_peak_mb`` (only when CUDA is in use): ``torch.cuda.max_memory_allocated`` over this client's update,
  the peak counter reset when it starts (``torch.cuda.reset_peak_memory_stats``); memory held by PyTorch's
  caching allocator but not allocated to tensors is not counted.

Because a probe resets the process's counters, code that wants lifetime figures afterwards (benches) reads
:func:`process_peak_rss_mb` and :func:`process_cuda_peak_mb`, which keep them across resets.

With ``fl.batch_clients`` the round's rollouts run as one batched call: each client's figures then cover that
shared rollout and its own training.

Traffic (counted by the server, :func:`client_bytes`, the same in every front end): ``bytes_down`` is the
``nbytes`` of the round's global adapter, which every selected client is sent (every tensor, as the server holds
it; counted for a client that then failed too), ``bytes_up`` that of the adapter the client sent back (0 without
an update or when it failed). On Flower the messages' own sizes (the records' ``count_bytes``: the adapter as
serialised, bfloat16 travelling as float32, plus the job with the run's config and the metrics) are
``wire_bytes_down`` and ``wire_bytes_up``. :func:`round_resources` sums them per round (docs/architecture.md).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

MB = 1_000_000
SAMPLE_S = 0.05
MEMORY_KEYS = ("peak_rss_mb", "update_rss_peak_mb", "cuda_peak_mb")
T = TypeVar("T")


def state_nbytes(state: Mapping[str, Any] | None) -> int:
    """Sum of ``tensor.nbytes`` (numel x element size) over an adapter state; 0 for None."""
    if not state:
        return 0
    return int(sum(t.numel() * t.element_size() for t in state.values()))


def _maxrss_bytes() -> int:
    """``ru_maxrss`` in bytes (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


_lifetime_peak = 0  # the process's high-water mark (bytes) seen before any reset by a probe
_lifetime_cuda_peak = 0  # the same for torch.cuda.max_memory_allocated


def process_peak_rss_mb() -> float:
    """The process's resident-set high-water mark in MB over its whole life, resets by probes included."""
    global _lifetime_peak
    _lifetime_peak = max(_lifetime_peak, _maxrss_bytes())
    return _lifetime_peak / MB


def process_cuda_peak_mb() -> float | None:
    """``torch.cuda.max_memory_allocated`` over the process's life in MB (the probes' per-update resets
    included); None without CUDA in use."""
    global _lifetime_cuda_peak
    cuda = _cuda()
    if cuda is None:
        return None
    _lifetime_cuda_peak = max(_lifetime_cuda_peak, int(cuda.max_memory_allocated()))
    return _lifetime_cuda_peak / MB


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (``echo 5 > /proc/self/clear_refs``,
    Linux >= 4.0), so that ``ru_maxrss`` then measures from now; False where that is not possible."""
    process_peak_rss_mb()  # keep the lifetime figure first
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def current_rss_bytes() -> int | None:
    """The process's resident set now, in bytes (``/proc/self/statm``, else psutil); None when unknown."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


def _cuda() -> Any:
    """The ``torch.cuda`` module when torch is imported and CUDA has been initialised; None otherwise."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


class MemoryProbe:
    """Context manager measuring the peak memory of the code it wraps; :meth:`metrics` after it exits.

    On Linux the kernel's high-water mark is reset on entry (:func:`reset_peak_rss`) and read on exit, which
    catches every peak; elsewhere a thread samples the resident set every ``interval_s`` seconds (it can miss a
    spike shorter than that).

    Example::

        with MemoryProbe() as probe:
            result = algorithm.train(policy, job, data)
        result.metrics.update(probe.metrics())
    """

    def __init__(self, interval_s: float = SAMPLE_S) -> None:
        self.interval_s = interval_s
        self.peak_rss: int | None = None
        self.cuda_peak: int | None = None
        self._kernel_peak = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cuda = None

    def _sample(self) -> None:
        rss = current_rss_bytes()
        if rss is not None and (self.peak_rss is None or rss > self.peak_rss):
            self.peak_rss = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> MemoryProbe:
        self._cuda = _cuda()
        if self._cuda is not None:
            process_cuda_peak_mb()  # keep the lifetime figure first
            self._cuda.reset_peak_memory_stats()
        self._kernel_peak = reset_peak_rss()
        self._sample()
        if not self._kernel_peak:
            self._thread = threading.Thread(target=self._run, name="fedspear-memory-probe", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if self._kernel_peak:
            self.peak_rss = max(self.peak_rss or 0, _maxrss_bytes())
        global _lifetime_peak
        if self.peak_rss is not None:  # statm and ru_maxrss round differently: the lifetime peak is never below
            _lifetime_peak = max(_lifetime_peak, self.peak_rss)
        cuda = self._cuda or _cuda()  # CUDA may have been initialised inside the block
        if cuda is not None:
            self.cuda_peak = int(cuda.max_memory_allocated())
            process_cuda_peak_mb()

    def metrics(self) -> dict[str, float]:
        """``peak_rss_mb``, ``update_rss_peak_mb`` (when RSS can be read) and ``cuda_peak_mb`` (on CUDA)."""
        out = {"peak_rss_mb": round(process_peak_rss_mb(), 1)}
        if self.peak_rss is not None:
            out["update_rss_peak_mb"] = round(self.peak_rss / MB, 1)
        if self.cuda_peak is not None:
            out["cuda_peak_mb"] = round(self.cuda_peak / MB, 1)
        return out


def measured(fn: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """Run ``fn()`` inside a :class:`MemoryProbe`; returns its result and the probe's metrics."""
    with MemoryProbe() as probe:
        out = fn()
    return out, probe.metrics()


def merge_memory(*parts: Mapping[str, float]) -> dict[str, float]:
    """The memory metrics of consecutive pieces of one update (a shared rollout, then training): the maximum of
    each key present."""
    out: dict[str, float] = {}
    for part in parts:
        for key in MEMORY_KEYS:
            if key in part:
                out[key] = max(out.get(key, part[key]), part[key])
    return out


def client_bytes(global_state: Mapping[str, Any], adapter: Mapping[str, Any] | None) -> dict[str, int]:
    """A client row's traffic: ``bytes_down`` (the global adapter sent) and ``bytes_up`` (the adapter returned)."""
    return {"bytes_down": state_nbytes(global_state), "bytes_up": state_nbytes(adapter)}


def round_resources(client_rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A round row's ``resources``: memory maxima over its clients and traffic sums and per-client means.

    Args:
        client_rows: the round's client rows (``metrics`` with the memory keys; ``bytes_down``/``bytes_up`` and,
            on Flower, ``wire_bytes_down``/``wire_bytes_up``).

    Returns:
        ``peak_rss_mb_max``, ``update_rss_peak_mb_max``, ``cuda_peak_mb_max`` (each only when a client reported
        it), ``bytes_down``, ``bytes_up`` (sums), ``bytes_down_per_client``, ``bytes_up_per_client`` (means over
        the round's clients, failed ones included), and the ``wire_`` sums when present.
    """
    rows = list(client_rows)
    out: dict[str, Any] = {}
    for key in MEMORY_KEYS:
        values = [r.get("metrics", {}).get(key) for r in rows]
        values = [v for v in values if isinstance(v, (int, float))]
        if values:
            out[f"{key}_max"] = max(values)
    for key in ("bytes_down", "bytes_up"):
        total = sum(r.get(key) or 0 for r in rows)
        out[key] = int(total)
        out[f"{key}_per_client"] = total / len(rows) if rows else 0.0
    for key in ("wire_bytes_down", "wire_bytes_up"):
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if values:
            out[key] = int(sum(values))
    return out
