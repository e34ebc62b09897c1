"""How many CPU threads torch uses: ``model.torch_threads`` (``auto`` or a number).

PyTorch's CPU kernels split each operation over ``torch.get_num_threads()`` threads (OpenMP) that meet at a
barrier when it ends, so one thread that the operating system has parked behind another process holds up all of
them. On a machine whose cores are busy, more threads than free cores make every operation wait for the slowest
thread: measured on this project's 2-core machine (world preset, bench/threads.md), two threads took 7 to 40
times as long as one while other processes ran, and one thread slowed by its fair share when three spinning
processes were added.

``auto`` therefore uses the cores that other processes leave free and keeps one core for them, judged once per
process from the 1-minute load average before the model is loaded:
``max(1, min(cores - 1, MAX_AUTO_THREADS, floor(cores - load + 0.5)))``. The spare core absorbs load that starts
after the judgement (a second program, another run): one thread too many costs far more than one thread too
few. A 2-core machine always gets one thread; an idle 16-core machine :data:`MAX_AUTO_THREADS`. The environment
variable ``OMP_NUM_THREADS``, when set, is taken as the user's choice. A number sets the count
outright. Inter-op parallelism (``torch.set_num_interop_threads``, independent operations run side by side) is
set to 1 on CPU: fedspear's models run one operation after another, so extra inter-op threads only compete
for the same cores. The choice and its reason appear in the run's start line (:func:`describe`).
"""

from __future__ import annotations

import logging
import math
import os

logger = logging.getLogger("fedspear")

MAX_AUTO_THREADS = 8
_chosen: tuple[int, str] | None = None  # the first decision of this process (auto is judged once)


def cpu_cores() -> int:
    """The cores this process may run on (``os.sched_getaffinity`` where available, else ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """The 1-minute load average (runnable processes, ours included); None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def auto_threads(cores: int, load: float | None, env: str | None = None) -> tuple[int, str]:
    """The ``auto`` thread count and why.

    Args:
        cores: usable cores (:func:`cpu_cores`).
        load: the 1-minute load average before this process does its work, or None when unknown.
        env: the value of ``OMP_NUM_THREADS`` (None when unset).

    Returns:
        (threads, reason): ``OMP_NUM_THREADS`` when it is a positive integer; else the free cores,
        ``floor(cores - load + 0.5)`` clamped to ``[1, min(cores - 1, MAX_AUTO_THREADS)]``; with no load average,
        ``min(cores - 1, MAX_AUTO_THREADS)`` (at least 1).
    """
    if env is not None and env.strip().isdigit() and int(env) > 0:
        return int(env), f"OMP_NUM_THREADS={int(env)}"
    top = max(1, min(cores - 1, MAX_AUTO_THREADS))  # one core kept for the rest of the machine
    if load is None:
        return top, f"{cores} cores, no load average"
    free = math.floor(cores - load + 0.5)
    threads = max(1, min(top, free))
    return threads, f"load {load:.1f} on {cores} cores"


def choose_threads(setting: str | int) -> tuple[int, str]:
    """The thread count for ``model.torch_threads`` and why (``auto`` is judged once per process).

    Raises:
        ValueError: ``setting`` is neither ``auto`` nor a positive integer (the config validates it first).
    """
    global _chosen
    text = str(setting).strip().lower()
    if text != "auto":
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"model.torch_threads: '{setting}' is neither auto nor a positive integer")
        return int(text), "model.torch_threads"
    if _chosen is None:
        _chosen = auto_threads(cpu_cores(), load_average(), os.environ.get("OMP_NUM_THREADS"))
    return _chosen


def apply_threads(setting: str | int) -> tuple[int, str]:
    """Set torch's intra-op threads to :func:`choose_threads` and its inter-op threads to 1 (once: torch refuses
    a change after inter-op work has started, which is then left as it is). Returns (threads, reason)."""
    import torch

    threads, reason = choose_threads(setting)
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already started in this process; the count stays
            pass
    return threads, reason


def describe(threads: int, reason: str, device: str) -> str:
    """The start line's thread part, e.g. ``torch threads 1 (auto: load 3.2 on 2 cores)``."""
    source = reason if reason in ("model.torch_threads",) or reason.startswith("OMP_") else f"auto: {reason}"
    text = f"torch threads {threads} ({source}; set model.torch_threads=N to choose)"
    return text if device == "cpu" else f"{text}, on {device}"
