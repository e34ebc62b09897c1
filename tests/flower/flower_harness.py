"""Starting and stopping Flower processes in tests: SuperLink, SuperNodes, `flwr run`, on free loopback ports.

Every process a test starts carries a marker in its environment, which its children (SuperExec, ServerApp,
ClientApp, Ray workers) inherit; :meth:`Processes.close` ends every live process with that marker, first with
SIGTERM, then SIGKILL, so a test leaves nothing behind even when Flower detached a child into its own session.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
MARKER = "FEDSPEAR_FLOWER_TEST"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    """Poll ``predicate`` until it is true; raise TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a snapshot)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(_children(current))
    return out


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Processes:
    """The processes of one test, each in its own session, all marked for cleanup.

    Args:
        log_dir: where each process's stdout+stderr go (``<name>.log``).
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.token = uuid.uuid4().hex
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, **extra)
        env[MARKER] = self.token
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
        return env

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        """Start ``argv`` in a new session with the marker; output goes to ``log_dir/<name>.log``."""
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env(**env), start_new_session=True, cwd=self.log_dir)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_tree(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a started process and every descendant it has now (a crash of that machine)."""
        for pid in _tree(self.procs[name].pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        self.procs[name].wait(timeout=30)

    def marked(self) -> list[int]:
        """Live processes that carry this test's marker."""
        needle = f"{MARKER}={self.token}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if needle in (entry / "environ").read_bytes() and _alive(int(entry.name)):
                        pids.append(int(entry.name))
                except OSError:
                    continue
        return pids

    def close(self, grace: float = 10.0) -> list[int]:
        """End every marked process (SIGTERM, then SIGKILL after ``grace`` s); returns those still alive."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            pids = self.marked()
            for proc in self.procs.values():
                if proc.poll() is None:
                    pids.append(proc.pid)
            for pid in set(pids):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (self.marked() or any(p.poll() is None for p in self.procs.values())):
                time.sleep(0.2)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.wait(timeout=5)
        return self.marked()


def start_superlink(procs: Processes, port: int, home: Path, *, simulation: bool = False,
                    database: Path | None = None, name: str = "superlink", timeout: float = 60.0) -> subprocess.Popen:
    """A SuperLink on 127.0.0.1:``port`` (no TLS, no runtime dependency installation); waits until it answers."""
    argv = [str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port)]
    if simulation:
        argv.append("--simulation")
    if database is not None:
        argv += ["--database", str(database)]
    proc = procs.start(name, argv, FLWR_HOME=str(home))

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{procs.log(name)[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as res:
                return res.status == 200
        except OSError:
            return False

    wait_for(healthy, timeout, f"{name} on port {port}")
    return proc


def start_supernode(procs: Processes, name: str, superlink_port: int, home: Path, node_config: str,
                    **env: str) -> subprocess.Popen:
    """A SuperNode connected to the local SuperLink, with its own Flower home and runtime port."""
    argv = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{superlink_port}",
            "--port", str(free_port()), "--node-config", node_config]
    return procs.start(name, argv, FLWR_HOME=str(home), **env)


def flwr_run(procs: Processes, name: str, app_dir: Path, *args: str) -> subprocess.Popen:
    """Start ``flwr run APP fedspear --stream ARGS`` (the app's own .flwr config names the SuperLink)."""
    argv = [str(BIN / "flwr"), "run", str(app_dir), "fedspear", "--stream", *args]
    return procs.start(name, argv, FLWR_HOME=str(app_dir / ".flwr"))


def metrics_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
