"""Owner-only files, the per-start secret and its one-time login codes, the Host parser (fedspear.serve.security)."""

from __future__ import annotations

import logging
import os
import stat
import threading

import pytest

from fedspear.serve.security import (
    LEGACY_TOKEN_FILE,
    LoginCodes,
    cookie_name,
    new_secret,
    owner_only_dir,
    page_url,
    parse_host,
    secure_state,
    token_matches,
)
from fedspear.serve.store import TraceStore


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_state_folder_is_owner_only_and_holds_no_secret(tmp_path, caplog):
    state = tmp_path / "client"
    assert secure_state(state) == state and _mode(state) == 0o700 and list(state.iterdir()) == []
    # a token an earlier fedspear kept there (it opened every later serve of the folder) is deleted
    (state / LEGACY_TOKEN_FILE).write_text("A" * 43 + "\n")
    with caplog.at_level(logging.INFO, logger="fedspear"):
        secure_state(state)
    assert not (state / LEGACY_TOKEN_FILE).exists() and "deleted the old page token" in caplog.text


def test_loose_modes_are_tightened_with_a_warning(tmp_path, caplog):
    state = tmp_path / "client"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    db = state / "traces.sqlite"
    TraceStore(db).close()
    os.chmod(db, 0o664)
    with caplog.at_level(logging.WARNING, logger="fedspear"):
        secure_state(state)
        TraceStore(db).close()
    assert (_mode(state), _mode(db)) == (0o700, 0o600)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert warned.count("readable by other users") == 2 and "mode 755" in warned and "mode 664" in warned


def test_a_new_store_is_owner_only_from_the_start(tmp_path):
    old = os.umask(0o022)
    try:
        with TraceStore(tmp_path / "s" / "traces.sqlite") as store:
            store.counts()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "s" / "traces.sqlite") == 0o600 and _mode(tmp_path / "s") == 0o700
    assert _mode(owner_only_dir(tmp_path / "a" / "b")) == 0o700


def test_secrets_are_fresh_and_compared_exactly():
    one, two = new_secret(), new_secret()
    assert one != two and len(one) == 43 and one.replace("-", "").replace("_", "").isalnum()  # token_urlsafe(32)
    assert token_matches("abc", "abc") and token_matches(b"abc", "abc")
    assert not token_matches(None, "abc") and not token_matches("abd", "abc") and not token_matches("ab", "abc")
    assert not token_matches("\udc80", "abc") and not token_matches(b"\xff", "abc")


def test_a_login_code_works_once():
    codes = LoginCodes()
    first, second = codes.issue(), codes.issue()
    assert first != second and len(first) == 43
    assert codes.redeem(first) and not codes.redeem(first)  # used up
    assert not codes.redeem(None) and not codes.redeem("") and not codes.redeem(second + "x")
    assert not LoginCodes().redeem(second)  # another server's code
    assert codes.redeem(second)


def test_two_requests_with_one_code_log_in_once():
    codes = LoginCodes()
    code = codes.issue()
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(codes.redeem(code))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 15 + [True]


def test_page_url_and_cookie_name():
    assert page_url("127.0.0.1", 8000, "c0de") == "http://127.0.0.1:8000/?login=c0de"
    assert page_url("::1", 9, "c") == "http://[::1]:9/?login=c"  # was http://::1... -> every request 400
    assert page_url("localhost", 80, "c") == "http://localhost:80/?login=c"
    assert cookie_name(8000) == "fedspear_session_8000" and cookie_name(None) == "fedspear_session"


@pytest.mark.parametrize(("value", "parsed"), [
    ("[::1]:8000", ("::1", 8000)),  # [v6]:port (Starlette's check read the host as "[")
    ("[::1]", ("::1", None)),  # [v6]
    ("[0:0:0:0:0:0:0:1]:80", ("::1", 80)),  # one spelling per address
    ("[FE80::A]:1", ("fe80::a", 1)),
    ("127.0.0.1:8000", ("127.0.0.1", 8000)),  # host:port
    ("127.0.0.1", ("127.0.0.1", None)),  # host
    ("LocalHost:65535", ("localhost", 65535)),
    ("localhost:", ("localhost", None)),  # RFC 3986: an empty port
    (" localhost ", ("localhost", None)),
])
def test_parse_host(value, parsed):
    assert parse_host(value) == parsed


@pytest.mark.parametrize(("value", "message"), [
    ("", "empty Host"), ("::1", "must be in brackets"), ("::1:8000", "must be in brackets"),
    ("[::1", "without ']'"), ("[::1]8000", "after ']'"), ("[localhost]:1", "not an IPv6 address"),
    ("[127.0.0.1]", "not an IPv6 address"), ("host:http", "not a number"), ("host:65536", "not a number"),
    ("host:-1", "not a number"), ("host:١٢", "not a number"), (":8000", "no host name"),
])
def test_parse_host_refuses_what_is_not_a_host(value, message):
    with pytest.raises(ValueError, match=message):
        parse_host(value)
