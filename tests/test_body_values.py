"""check_values is skipped for a body it cannot refuse (schema.values_known_good): read
by orjson (finite numbers, valid Unicode) with at most MAX_DEPTH brackets. Whatever the
body, a skip never lets through what check_values would refuse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from manager.api.schema import MAX_DEPTH, check_values, values_known_good
from manager.api.wire import GatewayError, parse_body_strict

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(st.characters(codec=None), max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(st.characters(codec=None), max_size=4), inner, max_size=3),
    max_leaves=20)


def _refused(body: Any) -> bool:
    try:
        check_values(body)
    except GatewayError:
        return True
    return False


def _nested(depth: int) -> bytes:
    return b'{"a": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.text(max_size=4), _VALUES, max_size=4))
@example(body={"x": float("nan")})
@example(body={"x": [float("inf")]})
@example(body={"\ud800": 1})
@example(body={"x": "a\udfff"})
def test_a_skipped_check_would_have_passed(body: dict[str, Any]) -> None:
    raw = json.dumps(body, allow_nan=True).encode()  # lone surrogates as \\ud800 escapes
    parsed, strict = parse_body_strict(raw)
    if values_known_good(raw, strict):
        assert not _refused(parsed)


@pytest.mark.parametrize(("raw", "good"), [
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', True),
    (b'{"t": NaN}', False), (b'{"t": 1e400}', False), (b'{"t": "\\ud800"}', False),
    (b'{"seed": 123456789012345678901234567890}', False),  # json reads it (exact)
    (_nested(MAX_DEPTH - 1), True),  # the object's brace and 99 brackets
    (_nested(MAX_DEPTH), False), (_nested(MAX_DEPTH + 1), False),
])
def test_bodies_known_good_or_checked(raw: bytes, good: bool) -> None:
    body, strict = parse_body_strict(raw)
    assert values_known_good(raw, strict) is good
    if not good and b"seed" not in raw:
        assert _refused(body)
