"""`fedspear serve` and `fedspear train-local` as processes: a kill -9 mid-answer, a restart, a local round."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request

import pytest
from serve_fixtures import REPO, ServeProcess, http, open_link, run_train_local, tiny_world_dir

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return tiny_world_dir(tmp_path_factory)


def _stream_first_token(url: str, body: dict, cookie: str) -> dict:
    """Start a streamed answer and return once its first token arrived (the answer is still being generated)."""
    req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-Fedspear-Session": "test",
                                          "Cookie": cookie})
    res = urllib.request.urlopen(req, timeout=60)
    events = []
    while not any(e["event"] == "token" for e in events):
        events.append(json.loads(res.readline()))
    return {"events": events, "response": res}


def test_kill_9_mid_revision_restart_train_and_the_new_adapter_answers(tiny_world, tmp_path):
    state = tmp_path / "client"
    # a slow model (0.4 s per token) so that the kill lands while a revision is being generated
    with ServeProcess(state, tiny_world, "--token-delay-ms", "400") as server:
        # the one-time login link is printed once; the folder, store and adapters are owner-only, and no secret is
        # written into the folder
        link = server.link
        assert link.startswith(f"http://127.0.0.1:{server.port}/?login=") and len(link.split("=", 1)[1]) >= 40
        assert server.log.read_text().count(link) == 1
        assert {p: oct(os.stat(state / p).st_mode & 0o777) for p in ("", "traces.sqlite", "adapters")} == {
            "": "0o700", "traces.sqlite": "0o600", "adapters": "0o700"}
        assert not (state / "token").exists()
        assert http("GET", server.url + "/api/status")[0] == 401
        cookie = server.cookie
        assert cookie.startswith(f"fedspear_session_{server.port}=")
        spec = server.api("GET", "/openapi.json")[1]
        assert spec["info"]["title"] == "fedspear client" and "/api/ask" in spec["paths"]
        status, done = server.api("POST", "/api/ask", {"question": "What color is the zorvik?"})
        assert status == 200 and done["adapter"]["version"] == 0
        iid, y0 = done["interaction"]["id"], done["interaction"]["attempts"][0]["text"]
        assert server.api("POST", f"/api/interactions/{iid}/verdict", {"attempt": 0, "correct": False})[0] == 200
        partial = _stream_first_token(f"{server.url}/api/interactions/{iid}/revise", {"hint": "think of grass"},
                                      server.cookie)
        assert partial["events"][0]["event"] == "start"
        server.kill9()
        partial["response"].close()
    assert (state / "traces.sqlite-wal").exists() or (state / "traces.sqlite").exists()

    with ServeProcess(state, tiny_world) as server:  # the same state folder, a fresh process
        # the earlier start's login opens nothing (a new secret per start) and its link is used up or unknown
        assert server.link != link
        old = f"fedspear_session_{server.port}={cookie.split('=', 1)[1]}"  # the old secret, under this port's name
        assert http("GET", server.url + "/api/status", cookie=old)[0] == 401
        assert open_link(server.url + "/?" + link.split("?", 1)[1])[0] == 403
        assert server.cookie != old and server.api("GET", "/api/status")[0] == 200
        status, it = server.api("GET", f"/api/interactions/{iid}")
        # everything acknowledged survived; the unacknowledged revision left no trace
        assert status == 200 and it["state"] == "awaiting_hint" and len(it["attempts"]) == 1
        assert it["attempts"][0]["text"] == y0 and it["attempts"][0]["verdict"] is False
        status, rev = server.api("POST", f"/api/interactions/{iid}/revise", {"hint": "think of grass"})
        assert status == 200 and rev["attempt"] == 1
        assert server.api("POST", f"/api/interactions/{iid}/verdict",
                    {"attempt": 1, "correct": True})[1]["state"] == "fixed"

        summary = run_train_local(state, tiny_world)  # uses the state folder's config.yaml, as serve wrote it
        assert summary["published"]["version"] == 1 and summary["metrics"]["wins_revision"] == 1.0

        status, again = server.api("POST", "/api/ask", {"question": "What color is the zorvik?"})
        assert again["adapter"]["version"] == 1 and again["adapter"]["label"] == "local round 1"
        assert server.api("GET", "/api/status")[1]["counts"]["fixed"] == 1
        server.stop()
        assert server.proc.returncode == 0


def test_clear_errors_before_loading_anything(tiny_world, tmp_path):
    state = tmp_path / "client"
    state.mkdir()
    (state / "traces.sqlite").write_bytes(b"not a database" * 200)
    with socket.socket() as busy:  # a port another program listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        cmd = [sys.executable, "-m", "fedspear", "serve", "--state", str(state), "--port", port]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "cannot listen there" in out.stderr
    cmd[cmd.index(port)] = "0"
    assert "choose a port between 1 and 65535" in subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                                                                 timeout=120).stderr
    from fedspear.serve.app import free_port

    cmd[cmd.index("0")] = str(free_port())
    out = subprocess.run(cmd + [f"model.model_name={tiny_world}"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "not a usable trace store" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "fedspear", "train-local", "--state", str(tmp_path / "none")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no trace store" in out.stderr


def test_an_adapter_of_another_rank_is_refused_and_the_folder_is_unchanged(tiny_world, tmp_path):
    from serve_fixtures import make_client, make_policy, serve_overrides

    from fedspear.models import save_adapter
    from fedspear.serve.runtime import ClientRuntime

    other = make_policy(tiny_world, **{"lora.r": 4})
    save_adapter(other, other.adapter.get(), tmp_path / "rank4")
    state = tmp_path / "client"
    ClientRuntime(*make_client(tiny_world), state, seed=0).close()  # a client that served its initial adapter

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file()}

    before = snapshot()
    from fedspear.serve.app import free_port

    cmd = [sys.executable, "-m", "fedspear", "serve", "--state", str(state), "--port", str(free_port()),
           "--config", "default", "--adapter", str(tmp_path / "rank4"), *serve_overrides(tiny_world)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [line for line in out.stderr.splitlines() if line.startswith("fedspear: error")]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(errors) == 1 and "shape" in errors[0] and "(4, " in errors[0] and "LoRA rank" in errors[0]
    assert snapshot() == before  # nothing published: the next serve / train-local still work
    # the refused adapter never became current; the client still serves (and loads) its own v0
    ClientRuntime(*make_client(tiny_world), state, seed=0).close()
