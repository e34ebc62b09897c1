"""``fedspear serve``: a local web app where people ask, judge answers, give hints and accept revisions.

The page (``/``, files in ``static/``) drives the JSON API below; the OpenAPI document is ``/openapi.json``.

    GET  /api/status                              model, served adapter version, store counts, limits
    GET  /api/examples?limit=&offset=&group=&kind= task items to ask (never their answers)
    POST /api/ask                 {question | example_id, stream}     first answer (streamed when stream=true)
    POST /api/interactions/{id}/verdict {attempt, correct}            the person's verdict on the latest answer
    POST /api/interactions/{id}/revise  {hint, stream}                a revision from the person's hint
    POST /api/interactions/{id}/close                                 give up on the question
    GET  /api/interactions/{id}, GET /api/interactions?limit=         stored interactions

Every ``/api/`` call needs this server's secret, drawn at its start and never written anywhere
(:mod:`fedspear.serve.security`): the page carries it in an ``HttpOnly``, ``SameSite=Strict`` cookie that
``GET /?login=<one-time code>`` (the link ``fedspear serve`` prints) sets once before redirecting to ``/``;
programs in the same process may send it in the ``X-Fedspear-Token`` header instead (``app.state.secret``).
Every POST also needs ``Content-Type: application/json``: a plain HTML form cannot send it, and a cross-origin
``fetch`` that tries needs a CORS preflight, which is never granted. The page and its static files need no
login (they hold no data); no response may be framed (``X-Frame-Options: DENY``, CSP ``frame-ancestors 'none'``).

Streamed answers are newline-delimited JSON (``application/x-ndjson``): ``start``, ``token``..., then ``done``
(sent only after the trace is committed) or ``error``. Requests are refused with a 4xx status code and a
``detail`` message: 401 not logged in, 404 unknown id, 409 the interaction is in another state (e.g.
judged in another tab), 411/413 missing length or body over the limit, 415 a POST that is not JSON, 422 bad
input (too long, empty, control characters, invalid Unicode, a question that leaves no room for a revision),
429 over the rate limit (``Retry-After`` says when
to retry). Requests whose Host is not a loopback name (``127.0.0.1``, ``localhost``, ``[::1]``, with or
without a port) are refused with 400 (no DNS rebinding), and without CORS other sites cannot call the API. A used,
unknown or earlier server's login code answers 403.

The rate limit (answers per minute) is keyed on the peer address of a request that carried the valid secret,
never on a header the client picks: it protects the device (one answer is generated at a time, so a runaway
script or a stuck page would starve the person's own answers and fill the store with traces training would
use), not secrecy, which the secret provides.

Run it with ``fedspear serve [--config PRESET] [--state DIR] [--port N] [KEY=VALUE ...]`` (binds 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from fedspear.serve.gates import PAGE_CSP, HostCheck, NoFraming, SessionGate, server_port
from fedspear.serve.runtime import ClientRuntime, Plan
from fedspear.serve.security import LOGIN_PARAM, TOKEN_HEADER, LoginCodes, cookie_name, new_secret, page_url, url_host
from fedspear.serve.store import NotFoundError, StateError, StoreError

logger = logging.getLogger("fedspear")

STATIC_DIR = Path(__file__).resolve().parent / "static"
SESSION_HEADER = "X-Fedspear-Session"
MAX_ID = 2**62
_SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


@dataclass
class ServeOptions:
    """Web-layer settings.

    Attributes:
        rate_per_minute: answers (questions + revisions) one client may request per minute.
        max_body_bytes: largest request body accepted.
        allowed_hosts: host names accepted in the Host header, with or without a port (["*"] = any); default the
            loopback names. An IPv6 address may be given with or without brackets.
    """

    rate_per_minute: int = 30
    max_body_bytes: int = 1024 * 1024
    allowed_hosts: list[str] | None = None


# --------------------------------------------------------------------------- request and response bodies


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AskRequest(_Strict):
    question: str | None = Field(None, max_length=20000, description="free-text question (or give example_id)")
    example_id: str | None = Field(None, max_length=200, description="a task item's id from /api/examples")
    stream: bool = Field(False, description="stream the answer as newline-delimited JSON events")


class VerdictRequest(_Strict):
    attempt: int = Field(..., ge=0, le=1000, description="index of the judged answer (0 = first answer)")
    correct: bool = Field(..., description="true: right / accept the revision; false: wrong / reject it")


class ReviseRequest(_Strict):
    hint: str = Field(..., max_length=20000, description="partial feedback; must not give the answer away")
    stream: bool = False


class AdapterInfo(BaseModel):
    version: int
    label: str
    model: str
    file: str
    created_at: float


class AttemptView(BaseModel):
    idx: int
    prompt: str
    text: str
    finished: bool
    feedback: str | None
    verdict: bool | None
    verdict_at: float | None
    created_at: float
    adapter_version: int
    adapter_label: str
    seed: int
    gen_seconds: float
    first_token_seconds: float | None
    tokens: int


class InteractionView(BaseModel):
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
    revisions_left: int
    trained_count: int
    attempts: list[AttemptView]


class Latency(BaseModel):
    seconds: float
    first_token_seconds: float | None
    tokens: int


class AnswerResponse(BaseModel):
    attempt: int
    adapter: AdapterInfo | None
    latency: Latency
    interaction: InteractionView


class ExampleItem(BaseModel):
    id: str
    prompt: str
    kind: str
    group: str | None
    choices: list[str]


class ErrorBody(BaseModel):
    detail: Any


_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody, "description": why} for code, why in [
    (400, "malformed request (body not UTF-8 JSON, bad Content-Length or Host)"),
    (401, "not logged in (no valid session cookie or X-Fedspear-Token of this server's start)"),
    (404, "unknown interaction or task item"), (409, "the interaction is in another state"),
    (411, "a body without Content-Length"), (413, "body over the size limit"),
    (415, "a POST without Content-Type: application/json"),
    (422, "invalid input"), (429, "over the rate limit"), (503, "the trace store cannot be used")]}
_STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "the answer; with stream=true, newline-delimited JSON events",
          "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}}


# --------------------------------------------------------------------------- middleware and helpers


class RateLimiter:
    """At most ``per_minute`` events per key in any 60-second window."""

    def __init__(self, per_minute: int, window_s: float = 60.0) -> None:
        self.per_minute, self.window_s = per_minute, window_s
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> float | None:
        """Count one event; returns None when allowed, else the seconds until the next one is."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._hits) > 10000:  # forget idle clients
                self._hits = {k: q for k, q in self._hits.items() if q and now - q[-1] < self.window_s}
            hits = self._hits.setdefault(key, deque())
            while hits and now - hits[0] >= self.window_s:
                hits.popleft()
            if len(hits) >= self.per_minute:
                return self.window_s - (now - hits[0])
            hits.append(now)
            return None


class BodyLimit:
    """ASGI middleware: 413 for a declared body over ``max_bytes``, 411 for a body without Content-Length."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.lower(): v for k, v in scope.get("headers", [])}
            length = headers.get(b"content-length")
            status, detail = 0, ""
            if length is None and b"transfer-encoding" in headers:
                status, detail = 411, "send the body with a Content-Length header"
            elif length is not None:
                try:
                    size = int(length)
                except ValueError:
                    size = -1
                if size < 0:
                    status, detail = 400, "invalid Content-Length"
                elif size > self.max_bytes:
                    status, detail = 413, f"request body of {size} bytes is over the limit of {self.max_bytes}"
            if status:
                await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _client_key(request: Request, secret: str) -> str:
    """The rate-limit key: the peer address and (a digest of) the secret it proved, never a client-chosen header."""
    peer = request.client.host if request.client else "unknown"
    return f"{peer}|{hashlib.sha256(secret.encode()).hexdigest()[:16]}"


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` made renderable as strict UTF-8 JSON: lone surrogates replaced, non-finite floats and other
    objects as text, nesting below 6 levels and strings over 200 characters cut (an error echoes its input)."""
    if isinstance(value, str):
        text = value.encode("utf-8", "replace").decode("utf-8")
        return text if len(text) <= 200 else text[:200] + "…"
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= 6:
        return "…"
    if isinstance(value, dict):
        return {json_safe(str(k)): json_safe(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, list | tuple):
        return [json_safe(v, depth + 1) for v in list(value)[:50]]
    return json_safe(str(value), depth)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with FastAPI's error list, made JSON-safe (a lone surrogate in the input broke the default: HTTP 500)."""
    return JSONResponse({"detail": json_safe(list(exc.errors()))}, status_code=422)


def _session_name(session: str | None) -> str:
    """The page's tab label stored with an interaction (not an identity: any logged-in caller may set it)."""
    return session if session and _SESSION_RE.match(session) else "anonymous"


def _raise_http(exc: Exception) -> None:
    """Map a runtime or store error to its HTTP error."""
    if isinstance(exc, NotFoundError | LookupError):
        raise HTTPException(404, str(exc.args[0]) if exc.args else "not found") from None
    if isinstance(exc, StateError):
        raise HTTPException(409, str(exc)) from None
    if isinstance(exc, ValueError):
        raise HTTPException(422, str(exc)) from None
    if isinstance(exc, StoreError):
        raise HTTPException(503, str(exc)) from None
    raise exc


def _events(runtime: ClientRuntime, plan: Plan) -> AsyncIterator[bytes]:
    """Run ``plan`` in a producer thread (which owns the model lock) and relay its events as NDJSON lines.

    If the page goes away, the generator is closed and generation is cancelled; the producer always
    finishes and releases the model, whatever the consumer does.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    end = object()

    def put(item: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            cancel.set()

    def produce() -> None:
        try:
            for event in runtime.run(plan, cancel):
                put(event)
        except (StoreError, ValueError) as exc:
            status = 409 if isinstance(exc, StateError) else 404 if isinstance(exc, NotFoundError) else 422
            put({"event": "error", "status": status, "detail": str(exc)})
        except Exception as exc:  # noqa: BLE001 - reported to the page, logged here
            logger.exception("generation failed")
            put({"event": "error", "status": 500, "detail": f"generation failed: {type(exc).__name__}"})
        finally:
            put(end)

    async def relay() -> AsyncIterator[bytes]:
        threading.Thread(target=produce, name="fedspear-answer", daemon=True).start()
        try:
            while True:
                event = await queue.get()
                if event is end:
                    break
                yield (json.dumps(event) + "\n").encode()
        finally:
            cancel.set()

    return relay()


# --------------------------------------------------------------------------- the app


def create_app(runtime: ClientRuntime, options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI app of one served client.

    Args:
        runtime: the client (policy, store, adapters).
        options: web-layer settings.

    Returns:
        The app; run it with uvicorn, or call it in-process (tests). ``app.state.secret`` is this app's secret
        (random, in memory only: a new app, i.e. a new server start, accepts no earlier login) and
        ``app.state.login`` its :class:`~fedspear.serve.security.LoginCodes` (``issue()`` makes a one-time code
        for :func:`~fedspear.serve.security.page_url`).
    """
    options = options or ServeOptions()
    secret = new_secret()
    login = LoginCodes()
    limiter = RateLimiter(options.rate_per_minute)
    app = FastAPI(title="fedspear client", version="1", docs_url=None, redoc_url=None,
                  description="Ask, judge, hint, revise; every trace stays on this device. Every /api/ call needs "
                              "the session cookie set by the one-time link `fedspear serve` prints (or, from the "
                              f"same process, this start's secret in the {TOKEN_HEADER} header).")
    app.add_middleware(SessionGate, secret=secret)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    app.add_middleware(HostCheck, allowed=options.allowed_hosts or LOOPBACK_NAMES)
    app.add_middleware(NoFraming)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.state.runtime, app.state.secret, app.state.login = runtime, secret, login
    gate = SessionGate(None, secret)

    def rate_check(request: Request) -> None:
        wait = limiter.hit(_client_key(request, secret))
        if wait is not None:
            raise HTTPException(429, f"too many answers requested; at most {options.rate_per_minute} per minute, "
                                     f"retry in {wait:.0f} s", headers={"Retry-After": str(max(1, round(wait)))})

    async def answer(plan: Plan, stream: bool) -> Any:
        if stream:
            return StreamingResponse(_events(runtime, plan), media_type="application/x-ndjson",
                                     headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        try:
            done = await asyncio.to_thread(runtime.run_to_end, plan)
        except (StoreError, ValueError) as exc:
            _raise_http(exc)
        if not done:
            raise HTTPException(500, "generation was cancelled")
        return {k: v for k, v in done.items() if k != "event"}

    @app.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        private = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        if LOGIN_PARAM not in request.query_params:
            return FileResponse(STATIC_DIR / "index.html", headers={**private, "Content-Security-Policy": PAGE_CSP})
        # the one-time link: exchange the code for the session cookie, then a clean URL (no secret in history)
        if login.redeem(request.query_params.get(LOGIN_PARAM)):
            done = RedirectResponse("/", status_code=303, headers=private)
            done.set_cookie(cookie_name(server_port(request.scope)), secret, path="/", httponly=True,
                            samesite="strict")
            return done
        if gate.logged_in(request.scope):  # this browser is in already (the link opened twice)
            return RedirectResponse("/", status_code=303, headers=private)
        return HTMLResponse(_USED_LINK_PAGE, status_code=403, headers={**private, "Content-Security-Policy": PAGE_CSP})

    @app.get("/api/status", responses=_ERRORS, summary="model, served adapter, store counts and limits")
    def status() -> dict[str, Any]:
        return runtime.status()

    @app.get("/api/examples", response_model=list[ExampleItem], responses=_ERRORS,
             summary="task items a person can ask")
    async def examples(limit: int = Query(20, ge=1, le=500), offset: int = Query(0, ge=0, le=10**6),
                       group: str | None = Query(None, max_length=64),
                       kind: str | None = Query(None, max_length=64)) -> list[dict[str, Any]]:
        return await asyncio.to_thread(runtime.list_examples, limit, offset, group, kind)

    @app.post("/api/ask", response_model=AnswerResponse, responses={**_STREAM_RESPONSE, **_ERRORS},
              summary="ask a question (free text or a task item)")
    async def ask(body: AskRequest, request: Request,
                  session: str | None = Header(None, alias=SESSION_HEADER, max_length=200)) -> Any:
        try:
            plan = await asyncio.to_thread(runtime.prepare_ask, body.question, body.example_id, _session_name(session))
        except (ValueError, LookupError) as exc:
            _raise_http(exc)
        rate_check(request)
        return await answer(plan, body.stream)

    @app.post("/api/interactions/{interaction_id}/verdict", response_model=InteractionView, responses=_ERRORS,
              summary="mark the latest answer right (accept) or wrong (reject)")
    def verdict(body: VerdictRequest, interaction_id: int = PathParam(..., ge=1, le=MAX_ID)) -> Any:
        try:
            return _view(runtime, runtime.verdict(interaction_id, body.attempt, body.correct))
        except StoreError as exc:
            _raise_http(exc)

    @app.post("/api/interactions/{interaction_id}/revise", response_model=AnswerResponse,
              responses={**_STREAM_RESPONSE, **_ERRORS}, summary="revise the latest wrong answer from a hint")
    async def revise(body: ReviseRequest, request: Request,
                     interaction_id: int = PathParam(..., ge=1, le=MAX_ID)) -> Any:
        try:
            plan = await asyncio.to_thread(runtime.prepare_revise, interaction_id, body.hint)
        except (StoreError, ValueError) as exc:
            _raise_http(exc)
        rate_check(request)
        return await answer(plan, body.stream)

    @app.post("/api/interactions/{interaction_id}/close", response_model=InteractionView, responses=_ERRORS,
              summary="give up on a question")
    def close(interaction_id: int = PathParam(..., ge=1, le=MAX_ID)) -> Any:
        try:
            return _view(runtime, runtime.close_interaction(interaction_id))
        except StoreError as exc:
            _raise_http(exc)

    @app.get("/api/interactions/{interaction_id}", response_model=InteractionView, responses=_ERRORS,
             summary="one stored interaction")
    def get_interaction(interaction_id: int = PathParam(..., ge=1, le=MAX_ID)) -> Any:
        try:
            return _view(runtime, runtime.store.get(interaction_id))
        except StoreError as exc:
            _raise_http(exc)

    @app.get("/api/interactions", response_model=list[InteractionView], responses=_ERRORS,
             summary="recent interactions")
    def list_interactions(limit: int = Query(20, ge=1, le=200),
                          session: str | None = Header(None, alias=SESSION_HEADER, max_length=200)) -> Any:
        only = session if session and _SESSION_RE.match(session) else None
        return [_view(runtime, it) for it in runtime.store.recent(limit, only)]

    return app


_USED_LINK_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fedspear client</title></head>
<body><h1>This login link does not work (any more)</h1>
<p>A link printed by <code>fedspear serve</code> logs in one browser, once, and only while the server that printed it
runs. This one was used already, or belongs to an earlier start. If this browser logged in with it, open
<a href="/">the page</a>; otherwise restart <code>fedspear serve</code> and open the new link it prints.</p>
</body></html>
"""


def _view(runtime: ClientRuntime, interaction: Any) -> dict[str, Any]:
    from fedspear.serve.runtime import interaction_view

    return interaction_view(interaction, runtime)


# --------------------------------------------------------------------------- running it


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ThreadedServer:
    """A uvicorn server in a background thread (simulated federations, tests).

    Args:
        app: the ASGI app.
        host: address to bind.
        port: port to bind (default: a free one).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None) -> None:
        import uvicorn

        self.app, self.host, self.port = app, host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def serve(runtime: ClientRuntime, host: str = "127.0.0.1", port: int = 8000,
          options: ServeOptions | None = None) -> None:
    """Run the app with uvicorn until interrupted (blocking)."""
    import uvicorn

    options = options or ServeOptions()
    if options.allowed_hosts is None and host not in LOOPBACK_NAMES:
        logger.warning("serving on %s: anyone who can reach this address can read the traces; prefer 127.0.0.1",
                       host)
        options.allowed_hosts = ["*"]
    app = create_app(runtime, options)
    logger.info("fedspear serve: state %s", runtime.state_dir)
    # printed once: the first browser that opens it gets this start's session cookie, and the code is used up
    print(f"fedspear serve: open {page_url(host, port, app.state.login.issue())}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
