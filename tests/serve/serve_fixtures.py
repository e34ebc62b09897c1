"""Helpers for the served client's tests: a tiny world base model, configs, policies, `fedspear serve` processes.

Test modules import what they need (``import serve_fixtures``) and wrap :func:`tiny_world_dir` in a fixture.
This is not a conftest.py:
a second conftest module would shadow ``tests/conftest.py`` for the modules that ``from conftest import``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def tiny_world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in world's base model at its 'tiny' preset (a few seconds to build, once per test session)."""
    from fedspear.world_base import build_base

    out = tmp_path_factory.getbasetemp() / "serve-tiny-world"
    if not (out / "config.json").is_file():
        build_base(out, preset="tiny", seed=0, progress=False)
    return out


def serve_overrides(model_dir: Path, **extra: object) -> list[str]:
    """Overrides of the default preset (the world) for a fast served client."""
    base = {"model.model_name": str(model_dir), "model.device_map": "cpu", "gen.max_new_tokens_y0": 6,
            "gen.max_new_tokens_y1": 6, "fl.local_train_steps": 2, "optim.batch_size": 2,
            "data.max_eval_examples": 8}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def serve_config(model_dir: Path, **extra: object):
    from fedspear.cli import resolve_config
    from fedspear.config import load_config

    return load_config(resolve_config("default"), serve_overrides(model_dir, **extra))


def make_policy(model_dir: Path, **extra: object):
    """A policy for the serve config, carrying its fitted config and task as ``.cfg`` / ``.task`` (conftest.build_rig)."""
    from conftest import build_rig

    from fedspear.tasks import get_task

    cfg = serve_config(model_dir, **extra)
    return build_rig(cfg, get_task(cfg.data.dataset))


def make_client(model_dir: Path, **extra: object):
    """(policy, task, config) of a served client: the first arguments of ``ClientRuntime`` / ``train_local``."""
    policy = make_policy(model_dir, **extra)
    return policy, policy.task, policy.cfg


def teach(served, right: str, fixed: str, hint: str) -> None:
    """A person's session at a served client (a ``ClientRuntime``): the answer to ``right`` is marked right, the
    answer to ``fixed`` wrong, then revised with ``hint`` and the revision accepted."""
    done = served.run_to_end(served.prepare_ask(question=right))
    served.verdict(done["interaction"]["id"], 0, True)
    done = served.run_to_end(served.prepare_ask(question=fixed))
    iid = done["interaction"]["id"]
    served.verdict(iid, 0, False)
    served.run_to_end(served.prepare_revise(iid, hint))
    served.verdict(iid, 1, True)


def http(method: str, url: str, body: dict | None = None, session: str = "test", timeout: float = 60.0,
         token: str = "", cookie: str = ""):
    """(status, parsed JSON or text) of one request, with the served app's secret (``token``, sent in the
    X-Fedspear-Token header: in-process apps) or its session cookie (``cookie``, a ``name=value`` pair) when given."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Fedspear-Session": session}
    if token:
        headers["X-Fedspear-Token"] = token
    if cookie:
        headers["Cookie"] = cookie
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            raw = res.read()
            status = res.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def open_link(url: str, cookie: str = "") -> tuple[int, dict[str, str], str]:
    """GET ``url`` once without following a redirect: (status, lower-case headers, body)."""
    parts = urllib.parse.urlsplit(url)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                     headers={"Cookie": cookie} if cookie else {})
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read().decode(errors="replace")
    finally:
        conn.close()


class ServeProcess:
    """`fedspear serve` in a subprocess on a free loopback port; stopped (and waited for) on exit.

    ``link`` is the one-time login link it printed; ``cookie`` logs in with it on first use (a browser test opens
    the link itself instead).
    """

    def __init__(self, state: Path, model_dir: Path, *args: str, extra: dict | None = None) -> None:
        from fedspear.serve.app import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = state
        self.log = state.parent / f"serve-{state.name}-{self.port}.log"
        state.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "fedspear", "serve", "--state", str(state), "--port", str(self.port),
               "--config", "default", "--seed", "0", *args, *serve_overrides(model_dir, **(extra or {}))]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        self._cookie = ""

    @property
    def link(self) -> str:
        """The one-time login link `fedspear serve` printed ("" before it has)."""
        found = re.search(r"fedspear serve: open (http://\S+)", self.log.read_text(errors="replace"))
        return found.group(1) if found else ""

    @property
    def cookie(self) -> str:
        """This start's session cookie (``name=value``), from opening the printed link once."""
        if not self._cookie:
            status, headers, _ = open_link(self.link)
            assert status == 303 and headers["location"] == "/", (status, headers)
            self._cookie = headers["set-cookie"].split(";")[0]
        return self._cookie

    def api(self, method: str, path: str, body: dict | None = None, **kw: object):
        """``http`` on this server, logged in."""
        return http(method, self.url + path, body, cookie=self.cookie, **kw)

    def wait_ready(self, timeout: float = 180.0) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fedspear serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if self.link and http("GET", self.url + "/", timeout=5)[0] == 200:  # the page loads (no login)
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"fedspear serve did not start in {timeout} s:\n{self.log.read_text()}")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def __enter__(self) -> ServeProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_train_local(state: Path, model_dir: Path, **extra: object) -> dict:
    """`fedspear train-local --state STATE` in a subprocess; its JSON summary."""
    cmd = [sys.executable, "-m", "fedspear", "-q", "train-local", "--state", str(state),
           *serve_overrides(model_dir, **extra)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])
