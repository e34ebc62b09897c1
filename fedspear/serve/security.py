"""Who may use a served client: a secret that lives only as long as the server, and owner-only files.

``fedspear serve`` keeps people's questions, answers and hints on the device. Other users of the same machine
must not read them or poison training, and other web sites open in the person's browser must not drive the API.
Three things enforce it (docs/serving.md, "Who may use it"):

- **Owner-only files.** The state folder and its ``adapters/`` folder are ``0700``; the trace database is
  ``0600`` (:func:`owner_only_dir`, :func:`owner_only_file`). Looser modes found on an existing folder are
  tightened, with a warning. No secret is kept in the folder: a ``token`` file left by an earlier fedspear is
  deleted (:func:`secure_state`).
- **A secret per server start.** Each app (:func:`fedspear.serve.app.create_app`) draws a random secret
  (:func:`new_secret`) that exists only in that process's memory, so it opens nothing once the server stops and
  no later ``serve`` of the same folder accepts it. ``fedspear serve`` prints a one-time login link
  (``http://127.0.0.1:8000/?login=<code>``, :func:`page_url`, :class:`LoginCodes`); opening it exchanges the code
  (once) for the secret in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Path=/``) and redirects to the clean
  URL, so the page's JavaScript never sees the secret and the browser history keeps only a used code.
  Programs in the same process (the simulated people, tests) may send the secret in the ``X-Fedspear-Token``
  header instead; a program in another process logs in with the printed link as a browser does.
- **The Host check** accepts only the loopback names, read by :func:`parse_host` (``host``, ``host:port``,
  ``[v6]`` and ``[v6]:port``), so DNS rebinding cannot reach the API.

``fedspear train-local``, the store-backed SuperNode (:mod:`fedspear.flower.served_client_app`) and the simulated people
(:mod:`fedspear.serve.simulate`) open the folder through :func:`secure_state` too; they reach the store
directly, as the folder's owner.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import stat
import threading
from pathlib import Path

logger = logging.getLogger("fedspear")

TOKEN_HEADER = "X-Fedspear-Token"
LOGIN_PARAM = "login"
SECRET_BYTES = 32  # secrets.token_urlsafe(32): 43 characters, 256 bits
LEGACY_TOKEN_FILE = "token"  # where fedspear before issue 23 kept a token reused by every start; deleted


def owner_only_dir(folder: Path) -> Path:
    """Create ``folder`` (and parents) and make it ``0700``; tighten a looser existing mode with a warning."""
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(folder, 0o700)
    return folder


def owner_only_file(path: Path) -> Path:
    """Create ``path`` empty when missing (mode ``0600`` from the start); tighten a looser mode with a warning."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    _tighten(path, 0o600)
    return path


def _tighten(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & 0o077:
        logger.warning("%s was readable by other users (mode %o); setting it to %o", path, current, mode)
        os.chmod(path, mode)


def secure_state(state_dir: str | Path) -> Path:
    """Make the state folder owner-only and delete a ``token`` file an earlier fedspear left in it.

    That file held a secret reused by every ``serve`` of the folder; nothing reads it any more, and a secret
    that outlives the server is what this module avoids (see the module docstring).

    Returns:
        The state folder.
    """
    folder = owner_only_dir(Path(state_dir))
    legacy = folder / LEGACY_TOKEN_FILE
    if legacy.is_file():
        legacy.unlink(missing_ok=True)
        logger.info("%s: deleted the old page token (the page now logs in with a link printed at each start)",
                    legacy)
    return folder


def new_secret() -> str:
    """A fresh random secret (:func:`secrets.token_urlsafe`, 256 bits), never written anywhere."""
    return secrets.token_urlsafe(SECRET_BYTES)


def token_matches(given: str | bytes | None, token: str) -> bool:
    """Whether ``given`` is ``token``, compared in constant time (:func:`hmac.compare_digest`)."""
    if given is None:
        return False
    raw = given if isinstance(given, bytes) else given.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(raw, token.encode())


class LoginCodes:
    """One-time login codes of one server: each opens one browser session, once.

    Only a digest of each unused code is kept; :meth:`redeem` forgets a code as it accepts it, under a lock, so
    two requests with the same code cannot both log in.
    """

    def __init__(self) -> None:
        self._unused: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _digest(code: str) -> str:
        return hashlib.sha256(code.encode("utf-8", "surrogateescape")).hexdigest()

    def issue(self) -> str:
        """A new code (256 random bits) that :meth:`redeem` accepts once."""
        code = new_secret()
        with self._lock:
            self._unused.add(self._digest(code))
        return code

    def redeem(self, code: str | None) -> bool:
        """Whether ``code`` is an unused code of this server; it is used up by this call."""
        if not code:
            return False
        digest = self._digest(code)
        with self._lock:
            if digest in self._unused:
                self._unused.remove(digest)
                return True
        return False


def cookie_name(port: int | None) -> str:
    """The session cookie's name for the server on ``port``.

    Cookies are kept per host, not per port (RFC 6265, section 8.5): the port in the name keeps two servers on one
    host from overwriting each other's login.
    """
    return f"fedspear_session_{port}" if port else "fedspear_session"


def parse_host(value: str) -> tuple[str, int | None]:
    """Split an HTTP ``Host`` header into (host, port): ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``.

    The host comes back lower-case and without brackets, an IPv6 address in its compressed form (``[::1]:8000``
    -> ``("::1", 8000)``); the port is None
    when absent or empty (RFC 3986, section 3.2.3 allows ``host:``).

    Raises:
        ValueError: an empty value, an unclosed or invalid bracketed IPv6 address, an IPv6 address without
            brackets (``::1``), or a port that is not a number from 0 to 65535.
    """
    text = value.strip()
    if not text:
        raise ValueError("empty Host")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"Host {value!r}: '[' without ']'")
        host, rest = text[1:end], text[end + 1 :]
        try:
            host = ipaddress.IPv6Address(host).compressed  # one spelling: [0:0:0:0:0:0:0:1] is ::1
        except ValueError:
            raise ValueError(f"Host {value!r}: {host!r} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise ValueError(f"Host {value!r}: unexpected {rest!r} after ']'")
        port_text = rest[1:]
    else:
        if text.count(":") > 1:
            raise ValueError(f"Host {value!r}: an IPv6 address must be in brackets, e.g. [::1]:8000")
        host, _, port_text = text.partition(":")
        if not host:
            raise ValueError(f"Host {value!r}: no host name")
    if not port_text:
        return host.lower(), None
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"Host {value!r}: port {port_text!r} is not a number from 0 to 65535")
    return host.lower(), int(port_text)


def url_host(host: str) -> str:
    """``host`` as written in a URL: an IPv6 address in brackets (``::1`` -> ``[::1]``), anything else as is."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def page_url(host: str, port: int, code: str) -> str:
    """The one-time login link ``fedspear serve`` prints: ``http://HOST:PORT/?login=CODE``."""
    return f"http://{url_host(host)}:{port}/?{LOGIN_PARAM}={code}"
