"""The served page's gates, as ASGI middleware: who is logged in, which Host names are served, no framing.

Used by :func:`fedspear.serve.app.create_app` (docs/serving.md, "Who may use it"); the secrets and the Host parser
are in :mod:`fedspear.serve.security`. Plain ASGI, no web framework: each refusal is a JSON ``{"detail": ...}``
with its status code, sent before the request body is read.
"""

from __future__ import annotations

import json
from typing import Any

from fedspear.serve.security import TOKEN_HEADER, cookie_name, parse_host, token_matches, url_host


async def refuse(send: Any, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer an HTTP request with ``status`` and the JSON body ``{"detail": detail}``."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def cookies(header: str) -> dict[str, str]:
    """The name -> value pairs of a ``Cookie`` header (the last of a repeated name; malformed pairs skipped)."""
    out = {}
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip():
            out[name.strip()] = value.strip().strip('"')
    return out


NOT_LOGGED_IN = ("not logged in: open the one-time link `fedspear serve` printed when it started "
                 "(http://127.0.0.1:PORT/?login=...); each link logs in one browser once, and a restart of "
                 "`fedspear serve` ends every login and prints a new link")


class SessionGate:
    """ASGI middleware: every ``/api/`` request needs this server's ``secret`` (else 401), in its session cookie
    (:func:`~fedspear.serve.security.cookie_name`) or the ``X-Fedspear-Token`` header, and every POST a JSON
    content type (else 415), checked before the body is read."""

    UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})

    def __init__(self, app: Any, secret: str) -> None:
        self.app, self.secret = app, secret
        self.header = TOKEN_HEADER.lower().encode()

    def logged_in(self, scope: dict) -> bool:
        """Whether the request carries the secret (header or cookie), compared in constant time."""
        headers = dict(scope.get("headers", []))  # lower-case names; the last of repeated headers
        if token_matches(headers.get(self.header), self.secret):
            return True
        raw = headers.get(b"cookie")
        if raw is None:
            return False
        return token_matches(cookies(raw.decode("latin-1")).get(cookie_name(server_port(scope))), self.secret)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            status, detail = 0, ""
            if not self.logged_in(scope):
                status, detail = 401, NOT_LOGGED_IN
            elif scope["method"] in self.UNSAFE:
                kind = dict(scope.get("headers", [])).get(b"content-type", b"").split(b";")[0].strip().lower()
                if kind != b"application/json":
                    status, detail = 415, "send the request body as JSON (Content-Type: application/json)"
            if status:
                await refuse(send, status, detail, [(b"www-authenticate", TOKEN_HEADER.encode())] if status == 401
                             else [])
                return
        await self.app(scope, receive, send)


def server_port(scope: dict) -> int | None:
    """The port the server listens on (from the socket, not from a header the client picks)."""
    server = scope.get("server")
    return int(server[1]) if server and server[1] is not None else None


class HostCheck:
    """ASGI middleware: 400 unless the Host header names one of ``allowed`` (["*"] = any), read by
    :func:`~fedspear.serve.security.parse_host` (``[::1]:8000`` is ``::1``; Starlette's TrustedHostMiddleware
    split it at the first colon and refused it)."""

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.allowed = {parse_host(url_host(name.strip().removeprefix("[").removesuffix("]")))[0]
                        for name in allowed if name != "*"}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.any:
            value = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
            try:
                host, _ = parse_host(value)
                allowed = host in self.allowed
            except ValueError:
                allowed = False
            if not allowed:
                await refuse(send, 400, f"Host {value[:100]!r} is not a name of this server; open "
                                        "http://127.0.0.1:PORT/ (or localhost, [::1])")
                return
        await self.app(scope, receive, send)


FRAME_ANCESTORS = "frame-ancestors 'none'"
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; "
            + FRAME_ANCESTORS)


class NoFraming:
    """ASGI middleware: every response forbids framing (clickjacking): ``X-Frame-Options: DENY`` and
    ``frame-ancestors 'none'`` added to the response's Content-Security-Policy (or as its only directive)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers, policies = [], []
                for k, v in message.get("headers", []):
                    if k.lower() == b"content-security-policy":
                        policies.append(v.decode("latin-1"))
                    elif k.lower() != b"x-frame-options":
                        headers.append((k, v))
                headers.append((b"x-frame-options", b"DENY"))
                headers.extend((b"content-security-policy", merge_csp(p).encode("latin-1")) for p in policies or [""])
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def merge_csp(policy: str) -> str:
    """A Content-Security-Policy value with ``frame-ancestors 'none'`` in place of any ``frame-ancestors``
    directive, in each of its comma-separated policies (every policy is enforced, so each must forbid framing)."""
    merged = []
    for one in policy.split(",") if policy.strip() else [""]:
        kept = [d.strip() for d in one.split(";") if d.strip() and d.split()[0].lower() != "frame-ancestors"]
        merged.append("; ".join([*kept, FRAME_ANCESTORS]))
    return ", ".join(merged)
