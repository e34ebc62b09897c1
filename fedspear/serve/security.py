"""Who may use a served client: the state folder's secret token, and owner-only files.

``fedspear serve`` keeps people's questions, answers and hints on the device. Other users of the same machine
must not read them or poison training, and other web sites open in the person's browser must not drive the API.
Two things enforce it:

- **Owner-only files.** The state folder and its ``adapters/`` folder are ``0700``; the trace database and the
  token file are ``0600`` (:func:`owner_only_dir`, :func:`owner_only_file`). Looser modes found on an existing
  folder are tightened, with a warning.
- **A secret token per state folder** (``<state>/token``, :func:`state_token`), made once with
  :func:`secrets.token_urlsafe` and reused by every later ``serve``, as notebook servers do. ``fedspear serve``
  prints the page URL with it once (``http://127.0.0.1:8000/?token=...``); the page keeps it (the browser's
  storage of that origin) and sends it in the ``X-Fedspear-Token`` header of every API call, which the app
  compares in constant time (:func:`token_matches`). A custom header cannot be sent by a plain HTML form, and a
  ``fetch`` from another origin that sends it needs a CORS preflight, which the app never grants.

``fedspear train-local``, the store-backed SuperNode (:mod:`fedspear.serve.supernode`) and the simulated people
(:mod:`fedspear.serve.simulate`) open the folder through :func:`secure_state` too: they use the same token (the
simulated people send it over HTTP; the others reach the store directly, as the folder's owner).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

logger = logging.getLogger("fedspear")

TOKEN_FILE = "token"
TOKEN_HEADER = "X-Fedspear-Token"
TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 43 characters, 256 bits


class TokenError(RuntimeError):
    """The token file cannot be read or holds no usable token; the message says what to do."""


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


def state_token(state_dir: str | Path) -> str:
    """The state folder's secret token: read ``<state>/token``, or create it (``0600``) when missing.

    Two processes creating it at once agree: each writes a whole token to its own temporary file and links it into
    place (``os.link`` fails when the name exists), so the token file is never seen half written and the loser
    reads the winner's.

    Raises:
        TokenError: the token file is unreadable or holds no usable token.
    """
    path = Path(state_dir) / TOKEN_FILE
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".token-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            os.unlink(tmp)
    _tighten(path, 0o600)
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"{path}: unreadable ({exc}); delete it to make a new token") from None
    if len(token) < 20 or not token.isascii() or not token.replace("-", "").replace("_", "").isalnum():
        raise TokenError(f"{path}: not a fedspear token; delete it to make a new one")
    return token


def secure_state(state_dir: str | Path) -> str:
    """Make the state folder owner-only and return its token (see the module docstring)."""
    return state_token(owner_only_dir(Path(state_dir)))


def token_matches(given: str | bytes | None, token: str) -> bool:
    """Whether ``given`` is ``token``, compared in constant time (:func:`hmac.compare_digest`)."""
    if given is None:
        return False
    raw = given if isinstance(given, bytes) else given.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(raw, token.encode())


def page_url(host: str, port: int, token: str) -> str:
    """The URL that opens the page with the token (printed once by ``fedspear serve``)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"
