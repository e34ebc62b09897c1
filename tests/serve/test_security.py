"""The state folder's token and owner-only files (fedspear.serve.security)."""

from __future__ import annotations

import logging
import os
import stat
import threading

import pytest

from fedspear.serve.security import (
    TOKEN_FILE,
    TokenError,
    owner_only_dir,
    page_url,
    secure_state,
    state_token,
    token_matches,
)
from fedspear.serve.store import TraceStore


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_token_is_made_once_owner_only_and_reused(tmp_path):
    state = tmp_path / "client"
    token = secure_state(state)
    assert _mode(state) == 0o700 and _mode(state / TOKEN_FILE) == 0o600
    assert len(token) == 43 and token.replace("-", "").replace("_", "").isalnum()  # token_urlsafe(32)
    assert secure_state(state) == token == state_token(state)
    assert secure_state(tmp_path / "other") != token  # one secret per state folder


def test_two_processes_creating_the_token_agree(tmp_path):
    tokens: list[str] = []
    threads = [threading.Thread(target=lambda: tokens.append(secure_state(tmp_path / "c"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(tokens)) == 1 and len(tokens) == 8


def test_loose_modes_are_tightened_with_a_warning(tmp_path, caplog):
    state = tmp_path / "client"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / TOKEN_FILE).write_text("A" * 43 + "\n")
    os.chmod(state / TOKEN_FILE, 0o644)
    db = state / "traces.sqlite"
    TraceStore(db).close()
    os.chmod(db, 0o664)
    with caplog.at_level(logging.WARNING, logger="fedspear"):
        assert secure_state(state) == "A" * 43
        TraceStore(db).close()
    assert (_mode(state), _mode(state / TOKEN_FILE), _mode(db)) == (0o700, 0o600, 0o600)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert warned.count("readable by other users") == 3 and "mode 755" in warned and "mode 664" in warned


def test_a_new_store_is_owner_only_from_the_start(tmp_path):
    old = os.umask(0o022)
    try:
        with TraceStore(tmp_path / "s" / "traces.sqlite") as store:
            store.counts()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "s" / "traces.sqlite") == 0o600 and _mode(tmp_path / "s") == 0o700
    assert _mode(owner_only_dir(tmp_path / "a" / "b")) == 0o700


@pytest.mark.parametrize("content", ["", "short", "x" * 43 + " y", "é" * 43])
def test_a_damaged_token_file_is_a_clear_error(tmp_path, content):
    (tmp_path / TOKEN_FILE).write_text(content)
    with pytest.raises(TokenError, match="delete it"):
        state_token(tmp_path)


def test_token_comparison():
    assert token_matches("abc", "abc") and token_matches(b"abc", "abc")
    assert not token_matches(None, "abc") and not token_matches("abd", "abc") and not token_matches("ab", "abc")
    assert not token_matches("\udc80", "abc") and not token_matches(b"\xff", "abc")
    assert page_url("127.0.0.1", 8000, "t0k") == "http://127.0.0.1:8000/?token=t0k"
    assert page_url("::1", 9, "t") == "http://[::1]:9/?token=t"
