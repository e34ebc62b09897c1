"""The page's ASGI gates (fedspear.serve.gates): cookie parsing and the merged no-framing policy."""

from __future__ import annotations

import pytest

from fedspear.serve.gates import cookies, merge_csp


def test_cookies_are_read_by_name():
    assert cookies("a=1; fedspear_session_80=abc; b=") == {"a": "1", "fedspear_session_80": "abc", "b": ""}
    assert cookies('x="q"; junk; =v; x=2') == {"x": "2"}  # the last of a repeated name; malformed pairs skipped
    assert cookies("") == {}


@pytest.mark.parametrize(("policy", "merged"), [
    ("", "frame-ancestors 'none'"),
    ("default-src 'self'", "default-src 'self'; frame-ancestors 'none'"),
    ("default-src 'self'; frame-ancestors *;", "default-src 'self'; frame-ancestors 'none'"),  # replaced, not added
    ("FRAME-ANCESTORS https://a.example; img-src data:", "img-src data:; frame-ancestors 'none'"),
    # two policies in one header are both enforced: each forbids framing
    ("default-src 'self', script-src 'none'",
     "default-src 'self'; frame-ancestors 'none', script-src 'none'; frame-ancestors 'none'"),
])
def test_merge_csp(policy, merged):
    assert merge_csp(policy) == merged
