"""The web app: the API a page drives, its errors, streaming, rate limits, adapter pickup, two tabs at once."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from serve_fixtures import http, make_client, tiny_world_dir

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from fedspear.serve.app import RateLimiter, ServeOptions, ThreadedServer, create_app  # noqa: E402
from fedspear.serve.runtime import ClientRuntime, person_feedback, question_prompt  # noqa: E402
from fedspear.tasks.prompts import build_revision_prompt  # noqa: E402

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = ClientRuntime(*make_client(tiny_world_dir(tmp_path_factory)), tmp_path_factory.mktemp("client"), seed=0)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def client(runtime):
    app = create_app(runtime, ServeOptions(rate_per_minute=10_000))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.headers["X-Fedspear-Session"] = "tab-a"
        c.headers["X-Fedspear-Token"] = app.state.secret
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
    expected = build_revision_prompt(it["prompt"], y0, feedback, runtime.task.answer_format,
                                     runtime.cfg.gen.revision_template)
    stored = runtime.store.get(iid).attempts[1]
    assert a1["prompt"] == expected and stored.prompt_ids == runtime.policy.encode(expected)
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
    ({"question": "zorvik " * 150}, 422, "too long to be revised after a wrong answer"),
    ({"question": "q", "colour": 1}, 422, "Extra inputs"),
    ({"example_id": "no-such-item"}, 404, "no task item 'no-such-item'"),
])
def test_bad_questions_are_refused_clearly(client, body, status, detail):
    res = client.post("/api/ask", json=body)
    assert res.status_code == status and detail in json.dumps(res.json()["detail"])


def test_a_question_must_leave_room_for_a_revision(client, runtime):
    """The longest question the ask check lets through can still be revised after a wrong answer (the hint was
    refused with 422 every time before); one word more is refused when asked, and nothing is stored."""
    def fits(words: int) -> bool:
        try:
            runtime.prepare_ask(question="zorvik " * words)
            return True
        except ValueError:
            return False

    words = next(n for n in range(150, 0, -1) if fits(n))
    limit = len(runtime.policy.encode(question_prompt(runtime.task, "zorvik " * words)))
    y1, seq = runtime.cfg.gen.max_new_tokens_y1, runtime.cfg.model.max_seq_len
    assert limit + 1 <= seq - runtime.cfg.gen.max_new_tokens_y0  # one word more passed the old check
    before = runtime.store.counts()["total"]
    res = client.post("/api/ask", json={"question": "zorvik " * (words + 1), "stream": True})
    detail = res.json()["detail"]
    assert res.status_code == 422 and f"tokens, at most {limit} leave room for a revision prompt" in detail
    assert f"model.max_seq_len={seq}" in detail and "shorten the question" in detail
    assert runtime.store.counts()["total"] == before
    iid = client.post("/api/ask", json={"question": "zorvik " * words}).json()["interaction"]["id"]
    assert client.post(f"/api/interactions/{iid}/verdict", json={"attempt": 0, "correct": False}).status_code == 200
    long_hint = client.post(f"/api/interactions/{iid}/revise", json={"hint": "think of grass " * 33})
    assert long_hint.status_code == 422 and "shorten the hint" in long_hint.json()["detail"]
    rev = client.post(f"/api/interactions/{iid}/revise", json={"hint": "think of grass"})
    assert rev.status_code == 200 and rev.json()["attempt"] == 1
    assert len(runtime.store.get(iid).attempts[1].prompt_ids) + y1 <= seq


def test_out_of_turn_and_malformed_requests(client):
    iid = client.post("/api/ask", json={"question": "Where does the zorvik live?"}).json()["interaction"]["id"]
    assert client.post(f"/api/interactions/{iid}/revise", json={"hint": "x"}).status_code == 409
    assert client.post(f"/api/interactions/{iid}/verdict", json={"attempt": 1, "correct": True}).status_code == 409
    assert client.post(f"/api/interactions/{iid}/verdict", json={"attempt": 0, "correct": False}).status_code == 200
    assert client.post(f"/api/interactions/{iid}/verdict", json={"attempt": 0, "correct": True}).status_code == 409
    assert client.post(f"/api/interactions/{iid}/revise", json={"hint": "h" * 501}).status_code == 422
    assert client.post(f"/api/interactions/{iid}/close", headers=JSON).json()["state"] == "unfixed"
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
    app = create_app(runtime, ServeOptions(rate_per_minute=2))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        c.headers["X-Fedspear-Token"] = app.state.secret
        ask = {"question": "What color is the zorvik?"}
        assert [c.post("/api/ask", json=ask, headers={"X-Fedspear-Session": "fast"}).status_code
                for _ in range(3)] == [200, 200, 429]
        res = c.post("/api/ask", json=ask, headers={"X-Fedspear-Session": "fast"})
        assert res.status_code == 429 and int(res.headers["Retry-After"]) >= 1 and "per minute" in res.json()["detail"]
        # the key is the logged-in client, not the tab label it sends: rotating made-up sessions does not reset it
        assert [c.post("/api/ask", json=ask, headers={"X-Fedspear-Session": f"other-{i}"}).status_code
                for i in range(3)] == [429, 429, 429]
        assert c.post("/api/ask", json=ask, headers={"X-Fedspear-Session": "x" * 300}).status_code == 422
        # nor does a wrong secret get through to the limiter or the model
        assert c.post("/api/ask", json=ask, headers={"X-Fedspear-Token": "x" * 43}).status_code == 401


def test_a_new_global_adapter_answers_without_restart(client, runtime):
    state = {k: v + 0.01 for k, v in runtime.policy.adapter.get().items()}
    published = runtime.registry.publish(state, "server round 1", runtime.fingerprint)
    done = client.post("/api/ask", json={"question": "What color is the zorvik?"}).json()
    assert done["adapter"]["version"] == published.version and done["adapter"]["label"] == "server round 1"
    assert done["interaction"]["attempts"][0]["adapter_version"] == published.version
    live = runtime.policy.adapter.get()
    assert all(torch.allclose(live[k], state[k]) for k in state)
    assert client.get("/api/status").json()["adapter"]["version"] == published.version


def test_two_tabs_at_once_over_http(runtime):
    """Two tabs run whole conversations at the same time against a real server; the store stays consistent."""
    before = runtime.store.counts()["total"]
    errors: list[str] = []
    with ThreadedServer(create_app(runtime, ServeOptions(rate_per_minute=10_000))) as server:
        secret = server.app.state.secret

        def tab(name: str) -> None:
            for _ in range(3):
                status, done = http("POST", server.url + "/api/ask", {"question": "What color is the zorvik?"}, name,
                                    token=secret)
                iid = done["interaction"]["id"]
                steps = [http("POST", f"{server.url}/api/interactions/{iid}/verdict", {"attempt": 0, "correct": False},
                              name, token=secret),
                         http("POST", f"{server.url}/api/interactions/{iid}/revise", {"hint": "think of grass"}, name,
                              token=secret),
                         http("POST", f"{server.url}/api/interactions/{iid}/verdict", {"attempt": 1, "correct": True},
                              name, token=secret)]
                if status != 200 or [s for s, _ in steps] != [200, 200, 200]:
                    errors.append(f"{name}: {status} {[s for s, _ in steps]}")

        threads = [threading.Thread(target=tab, args=(f"tab-{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _, mine = http("GET", server.url + "/api/interactions?limit=50", session="tab-0", token=secret)
    assert errors == []
    assert runtime.store.counts()["total"] == before + 6
    assert len(mine) == 3 and all(it["session"] == "tab-0" and it["state"] == "fixed" for it in mine)
    assert runtime.store.integrity() == "ok"


# --------------------------------------------------------------------------- who may call the API (issues 12, 23)

API_CALLS = [("GET", "/api/status", None), ("GET", "/api/examples", None), ("GET", "/api/interactions", None),
             ("GET", "/api/interactions/1", None), ("POST", "/api/ask", {"question": "q"}),
             ("POST", "/api/interactions/1/verdict", {"attempt": 0, "correct": False}),
             ("POST", "/api/interactions/1/revise", {"hint": "h"}), ("POST", "/api/interactions/1/close", {})]


@pytest.mark.parametrize(("method", "path", "body"), API_CALLS)
def test_every_api_call_needs_the_secret(runtime, method, path, body):
    app = create_app(runtime)
    secret = app.state.secret
    with TestClient(app, base_url="http://127.0.0.1") as c:
        for headers in ({}, {"X-Fedspear-Token": ""}, {"X-Fedspear-Token": secret[:-1]},
                        {"X-Fedspear-Token": secret + "x"}, {"Cookie": f"fedspear_session_81={secret}"},
                        {"Cookie": f"fedspear_session_80={secret}x"}, {"Authorization": f"Bearer {secret}"}):
            res = c.request(method, path, json=body, headers=headers)
            assert res.status_code == 401 and "?login=" in res.json()["detail"], (headers, res.text)
        # the page and its files hold no data and load without it, and tell how to get in
        page = c.get("/")
        assert page.status_code == 200 and 'data-testid="locked"' in page.text and "?login=" in page.text
        assert page.headers["Referrer-Policy"] == "no-referrer"
        script = c.get("/static/app.js").text
        assert "X-Fedspear-Token" not in script and 'localStorage.setItem' not in script
        for headers in ({"X-Fedspear-Token": secret}, {"Cookie": f"other=1; fedspear_session_80={secret}"}):
            assert c.request(method, path, json=body, headers=headers).status_code != 401


def _cookie_attributes(set_cookie: str) -> tuple[str, str, set[str]]:
    """(name, value, lower-case attributes) of one Set-Cookie header."""
    pair, *attributes = [part.strip() for part in set_cookie.split(";")]
    name, _, value = pair.partition("=")
    return name, value, {a.lower() for a in attributes}


def test_the_login_link_sets_an_httponly_strict_cookie_once(runtime):
    app = create_app(runtime)
    code = app.state.login.issue()
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as c:
        res = c.get(f"/?login={code}")
        # a redirect to the clean URL (no code in the history), with the session cookie of this start
        assert res.status_code == 303 and res.headers["location"] == "/"
        assert res.headers["cache-control"] == "no-store" and res.headers["referrer-policy"] == "no-referrer"
        name, value, attributes = _cookie_attributes(res.headers["set-cookie"])
        assert (name, value) == ("fedspear_session_80", app.state.secret)  # port 80 of http://127.0.0.1
        assert attributes == {"httponly", "samesite=strict", "path=/"}  # no Max-Age: gone with the browser
        assert c.get("/api/status").status_code == 200  # the client's cookie jar sends it
        assert c.get(f"/?login={code}").status_code == 303  # the same browser, logged in, opens the link again
    with TestClient(app, base_url="http://127.0.0.1", follow_redirects=False) as other:
        for url in (f"/?login={code}", f"/?login={code}x", "/?login=", "/?login=%FF"):
            res = other.get(url)  # used, unknown or empty: no cookie, and the page says why
            assert res.status_code == 403 and "set-cookie" not in res.headers, url
            assert "used already" in res.text and res.headers["x-frame-options"] == "DENY"
        assert other.get("/api/status").status_code == 401
        second = app.state.login.issue()  # every code works once, independently
        assert other.get(f"/?login={second}").status_code == 303 and other.get("/api/status").status_code == 200


def test_a_new_start_on_the_same_state_folder_accepts_no_earlier_login(runtime):
    old = create_app(runtime)
    with TestClient(old, base_url="http://127.0.0.1", follow_redirects=False) as c:
        c.get(f"/?login={old.state.login.issue()}")
        cookie = f"fedspear_session_80={c.cookies['fedspear_session_80']}"
    unused = old.state.login.issue()
    # the next `fedspear serve` of the folder: a new runtime on the same state folder, a new app
    again = ClientRuntime(runtime.policy, runtime.task, runtime.cfg, runtime.state_dir, seed=0)
    try:
        new = create_app(again)
        assert new.state.secret != old.state.secret and not (runtime.state_dir / "token").exists()
        assert old.state.secret not in "".join(p.read_bytes().decode("latin-1") for p in runtime.state_dir.rglob("*")
                                                 if p.is_file())
        with TestClient(new, base_url="http://127.0.0.1", follow_redirects=False) as c:
            assert c.get("/api/status", headers={"Cookie": cookie}).status_code == 401
            assert c.get("/api/status", headers={"X-Fedspear-Token": old.state.secret}).status_code == 401
            assert c.get(f"/?login={unused}").status_code == 403  # an earlier start's unused link
            assert c.get(f"/?login={new.state.login.issue()}").status_code == 303
            assert c.get("/api/status").status_code == 200
    finally:
        again.close()


def test_no_response_may_be_framed(client):
    responses = {"page": client.get("/"), "script": client.get("/static/app.js"), "api": client.get("/api/status"),
                 "401": client.get("/api/status", headers={"X-Fedspear-Token": "x"}),
                 "404": client.get("/api/interactions/999999"), "bad host": client.get("/", headers={"Host": "x.y"})}
    assert [r.status_code for r in responses.values()] == [200, 200, 200, 401, 404, 400]
    for what, res in responses.items():
        assert res.headers["x-frame-options"] == "DENY", what
        policy = res.headers["content-security-policy"]
        assert policy.count("frame-ancestors") == 1 and policy.endswith("frame-ancestors 'none'"), (what, policy)
    # the page's own policy is kept, with framing forbidden in it
    assert responses["page"].headers["content-security-policy"].startswith("default-src 'self'; ")


@pytest.mark.parametrize(("host", "status"), [
    ("[::1]:8000", 200), ("[::1]", 200), ("[0:0:0:0:0:0:0:1]:8000", 200), ("127.0.0.1:8000", 200),
    ("127.0.0.1", 200), ("localhost:8000", 200), ("LOCALHOST", 200),
    ("::1", 400), ("[::1", 400), ("[::1]8000", 400), ("[::2]:8000", 400), ("evil.example:8000", 400),
    ("127.0.0.1:http", 400), ("", 400)])
def test_the_host_check_reads_ipv6_in_brackets(client, host, status):
    res = client.get("/api/status", headers={"Host": host})
    assert res.status_code == status, res.text
    if status == 400:
        assert "not a name of this server" in res.json()["detail"]


def test_cross_site_form_post_cannot_close_an_interaction(client, runtime):
    """What a page on another origin can send without a CORS preflight: a form post (no custom header)."""
    done = client.post("/api/ask", json={"question": "Where does the zorvik live?"}).json()
    iid = done["interaction"]["id"]
    client.post(f"/api/interactions/{iid}/verdict", json={"attempt": 0, "correct": False})
    before = runtime.store.get(iid)
    assert before.state == "awaiting_hint"
    evil = {"Origin": "http://evil.example", "X-Fedspear-Token": ""}
    for content_type, data in [("application/x-www-form-urlencoded", b""), ("multipart/form-data; boundary=x",
                                                                            b"--x--"), ("text/plain", b"{}")]:
        res = client.post(f"/api/interactions/{iid}/close", content=data, headers={**evil, "Content-Type": content_type})
        assert res.status_code == 401 and "detail" in res.json()
    # even with the token, a state change must be JSON (a form cannot set both)
    res = client.post(f"/api/interactions/{iid}/close", content=b"", headers={"Content-Type": "text/plain"})
    assert res.status_code == 415 and "application/json" in res.json()["detail"]
    after = runtime.store.get(iid)
    assert after.state == "awaiting_hint" and after.updated_at == before.updated_at  # no lose trace was made
    assert "access-control-allow-origin" not in {k.lower() for k in res.headers}
    pre = client.options("/api/ask", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "x-fedspear-token"})
    assert "access-control-allow-origin" not in {k.lower() for k in pre.headers}


@pytest.mark.parametrize(("raw", "status", "detail"), [
    (b'{"question": "\\ud800"}', 422, "string_unicode"),  # a lone surrogate (was HTTP 500)
    (b'{"question": "ok", "colour": "\\udfff\\ud800"}', 422, "extra_forbidden"),
    (b'{"\\ud800": 1}', 422, "string_unicode"),  # ... in a key
    (b'{"question": "\xff\xfe\xc3"}', 400, "error parsing the body"),  # invalid UTF-8 bytes
    (b'{"question": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "error parsing the body"),  # deep nesting
    (b'{"question": ' + b"[" * 300 + b"]" * 300 + b"}", 422, "string_type"),  # deep, parses: echo cut short
    (b'{"question": ' + b"9" * 5000 + b"}", 400, "error parsing the body"),  # an int past Python's digit limit
    (b'{"question": 1e999}', 422, "string_type"),  # parses as inf (was HTTP 500)
    (b'{"question": NaN}', 422, "string_type"),
])
def test_malformed_json_is_a_4xx_with_detail(client, raw, status, detail):
    res = client.post("/api/ask", content=raw, headers=JSON)
    assert res.status_code == status and detail in res.text
    assert res.json()["detail"]


@pytest.mark.parametrize("raw", [b'{"attempt": 1e999, "correct": true}', b'{"attempt": -Infinity, "correct": true}',
                                 b'{"attempt": ' + b"1" * 4000 + b', "correct": true}', b'{"attempt": 0, "correct": "\\udc80"}'])
def test_huge_numbers_and_surrogates_in_a_verdict(client, raw):
    res = client.post("/api/interactions/1/verdict", content=raw, headers=JSON)
    assert res.status_code == 422 and res.json()["detail"]


def test_json_safe_keeps_what_renders_and_fixes_what_does_not():
    from fedspear.serve.app import json_safe

    assert json_safe({"a": [1, 2.5, None, True, "é"]}) == {"a": [1, 2.5, None, True, "é"]}
    assert json_safe(["\ud800x", float("inf"), float("nan")]) == ["?x", "inf", "nan"]
    assert json_safe("y" * 300) == "y" * 200 + "…"
    deep: list = []
    for _ in range(20):
        deep = [deep]
    assert json_safe(deep) == [[[[[["…"]]]]]]
    json.dumps(json_safe({"ctx": ValueError("\udc80")}), allow_nan=False).encode()
