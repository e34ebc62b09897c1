"""The web app: the API a page drives, its errors, streaming, rate limits, adapter pickup, two tabs at once."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from serve_fixtures import http, make_engine, tiny_world_dir

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from fedspear.serve.app import RateLimiter, ServeOptions, ThreadedServer, create_app  # noqa: E402
from fedspear.serve.runtime import ClientRuntime, person_feedback  # noqa: E402
from fedspear.tasks.prompts import build_revision_prompt  # noqa: E402


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = ClientRuntime(make_engine(tiny_world_dir(tmp_path_factory)), tmp_path_factory.mktemp("client"), seed=0)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def client(runtime):
    with TestClient(create_app(runtime, ServeOptions(rate_per_minute=10_000)), base_url="http://127.0.0.1") as c:
        c.headers["X-Fedspear-Session"] = "tab-a"
        yield c


def _stream(client, path: str, body: dict) -> list[dict]:
    with client.stream("POST", path, json={**body, "stream": True}) as res:
        assert res.status_code == 200 and res.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in res.iter_lines() if line.strip()]


def test_page_static_files_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and 'data-testid="question"' in page.text and "Give a hint, not the answer" in page.text
    assert client.get("/static/app.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/ask", "/api/status", "/api/examples", "/api/interactions/{interaction_id}/verdict",
            "/api/interactions/{interaction_id}/revise", "/api/interactions/{interaction_id}/close"} <= set(spec["paths"])


def test_ask_wrong_hint_revise_accept(client, runtime):
    done = client.post("/api/ask", json={"question": "What color is the zorvik?"}).json()
    it = done["interaction"]
    assert (done["attempt"], done["adapter"]["version"], it["state"], it["session"]) == (0, 0, "awaiting_verdict",
                                                                                          "tab-a")
    assert it["prompt"].startswith("Question: What color is the zorvik?\n") and it["prompt"].endswith("Answer:")
    assert done["latency"]["tokens"] == it["attempts"][0]["tokens"] >= 1 and done["latency"]["seconds"] > 0
    assert "completion_ids" not in it["attempts"][0]  # token ids stay in the store
    iid = it["id"]
    assert client.post(f"/api/interactions/{iid}/verdict", json={"attempt": 0, "correct": False}).json()["state"] == \
        "awaiting_hint"
    rev = client.post(f"/api/interactions/{iid}/revise", json={"hint": "think of the sky"}).json()
    a1 = rev["interaction"]["attempts"][1]
    assert (rev["attempt"], a1["feedback"], rev["interaction"]["state"]) == (1, "think of the sky", "awaiting_verdict")
    # the revision prompt is built exactly as in training, and its ids are what the model read
    y0 = rev["interaction"]["attempts"][0]["text"]
    feedback = person_feedback(runtime.task, it["prompt"], y0, "think of the sky")
    expected = build_revision_prompt(it["prompt"], y0, feedback, runtime.task.answer_format)
    stored = runtime.store.get(iid).attempts[1]
    assert a1["prompt"] == expected and stored.prompt_ids == runtime.engine.encode(expected)
    final = client.post(f"/api/interactions/{iid}/verdict", json={"attempt": 1, "correct": True}).json()
    assert final["state"] == "fixed" and [a["verdict"] for a in final["attempts"]] == [False, True]
    assert client.get(f"/api/interactions/{iid}").json()["state"] == "fixed"


def test_streamed_answer_is_stored_before_done(client, runtime):
    events = _stream(client, "/api/ask", {"question": "What does the zorvik eat?"})
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) <= {"token"}
    done = events[-1]
    text = done["interaction"]["attempts"][0]["text"]
    assert "".join(e["text"] for e in events if e["event"] == "token").strip() == text
    stored = runtime.store.get(done["interaction"]["id"])
    assert stored.attempts[0].text == text and len(stored.attempts[0].completion_ids) == done["latency"]["tokens"]
    assert events[0]["adapter"] == done["adapter"]


def test_task_items_never_show_the_answer(client):
    items = client.get("/api/examples", params={"limit": 5, "group": "misconception"}).json()
    assert len(items) == 5 and all(set(i) == {"id", "prompt", "kind", "group", "choices"} for i in items)
    done = client.post("/api/ask", json={"example_id": items[0]["id"]}).json()
    assert done["interaction"]["example_id"] == items[0]["id"] and done["interaction"]["prompt"] == items[0]["prompt"]


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({}, 422, "either a question or an example_id"),
    ({"question": "q", "example_id": "x"}, 422, "either a question or an example_id"),
    ({"question": "   "}, 422, "the question is empty"),
    ({"question": "a" * 2001}, 422, "at most 2000"),
    ({"question": "a\x00b"}, 422, "control character (U+0000)"),
    ({"question": "zorvik " * 280}, 422, "tokens, at most"),
    ({"question": "q", "colour": 1}, 422, "Extra inputs"),
    ({"example_id": "no-such-item"}, 404, "no task item 'no-such-item'"),
])
def test_bad_questions_are_refused_clearly(client, body, status, detail):
    res = client.post("/api/ask", json=body)
    assert res.status_code == status and detail in json.dumps(res.json()["detail"])


def test_out_of_turn_and_malformed_requests(client):
    iid = client.post("/api/ask", json={"question": "Where does the zorvik live?"}).json()["interaction"]["id"]
    assert client.post(f"/api/interactions/{iid}/revise", json={"hint": "x"}).status_code == 409
    assert client.post(f"/api/interactions/{iid}/verdict", json={"attempt": 1, "correct": True}).status_code == 409
    assert client.post(f"/api/interactions/{iid}/verdict", json={"attempt": 0, "correct": False}).status_code == 200
    assert client.post(f"/api/interactions/{iid}/verdict", json={"attempt": 0, "correct": True}).status_code == 409
    assert client.post(f"/api/interactions/{iid}/revise", json={"hint": "h" * 501}).status_code == 422
    assert client.post(f"/api/interactions/{iid}/close").json()["state"] == "unfixed"
    assert client.post("/api/interactions/999999/verdict", json={"attempt": 0, "correct": True}).status_code == 404
    assert client.get("/api/interactions/0").status_code == 422
    assert client.get(f"/api/interactions/{2**70}").status_code == 422
    assert client.post("/api/ask", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    big = client.post("/api/ask", content=b"x" * 1_100_000, headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and "over the limit" in big.json()["detail"]
    assert client.get("/api/status", headers={"Host": "evil.example"}).status_code == 400


def test_rate_limit_per_client(runtime):
    limiter = RateLimiter(2)
    assert [limiter.hit("a", now=t) for t in (0.0, 1.0)] == [None, None]
    assert limiter.hit("a", now=2.0) == pytest.approx(58.0) and limiter.hit("b", now=2.0) is None
    assert limiter.hit("a", now=60.5) is None  # the first hit left the window
    with TestClient(create_app(runtime, ServeOptions(rate_per_minute=2)), base_url="http://127.0.0.1") as c:
        ask = {"question": "What color is the zorvik?"}
        assert [c.post("/api/ask", json=ask, headers={"X-Fedspear-Session": "fast"}).status_code
                for _ in range(3)] == [200, 200, 429]
        res = c.post("/api/ask", json=ask, headers={"X-Fedspear-Session": "fast"})
        assert res.status_code == 429 and int(res.headers["Retry-After"]) >= 1 and "per minute" in res.json()["detail"]
        assert c.post("/api/ask", json=ask, headers={"X-Fedspear-Session": "other"}).status_code == 200


def test_a_new_global_adapter_answers_without_restart(client, runtime):
    state = {k: v + 0.01 for k, v in runtime.engine.global_state.items()}
    published = runtime.registry.publish(state, "server round 1", runtime.fingerprint)
    done = client.post("/api/ask", json={"question": "What color is the zorvik?"}).json()
    assert done["adapter"]["version"] == published.version and done["adapter"]["label"] == "server round 1"
    assert done["interaction"]["attempts"][0]["adapter_version"] == published.version
    live = runtime.engine.adapter.get()
    assert all(torch.allclose(live[k], state[k]) for k in state)
    assert client.get("/api/status").json()["adapter"]["version"] == published.version


def test_two_tabs_at_once_over_http(runtime):
    """Two tabs run whole conversations at the same time against a real server; the store stays consistent."""
    before = runtime.store.counts()["total"]
    errors: list[str] = []
    with ThreadedServer(create_app(runtime, ServeOptions(rate_per_minute=10_000))) as server:
        def tab(name: str) -> None:
            for _ in range(3):
                status, done = http("POST", server.url + "/api/ask", {"question": "What color is the zorvik?"}, name)
                iid = done["interaction"]["id"]
                steps = [http("POST", f"{server.url}/api/interactions/{iid}/verdict", {"attempt": 0, "correct": False},
                              name),
                         http("POST", f"{server.url}/api/interactions/{iid}/revise", {"hint": "think of grass"}, name),
                         http("POST", f"{server.url}/api/interactions/{iid}/verdict", {"attempt": 1, "correct": True},
                              name)]
                if status != 200 or [s for s, _ in steps] != [200, 200, 200]:
                    errors.append(f"{name}: {status} {[s for s, _ in steps]}")

        threads = [threading.Thread(target=tab, args=(f"tab-{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _, mine = http("GET", server.url + "/api/interactions?limit=50", session="tab-0")
    assert errors == []
    assert runtime.store.counts()["total"] == before + 6
    assert len(mine) == 3 and all(it["session"] == "tab-0" and it["state"] == "fixed" for it in mine)
    assert runtime.store.integrity() == "ok"
