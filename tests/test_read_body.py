"""limits.read_body reads the ASGI messages of a request body itself: the body in one or
several messages, a client that leaves first, a body over the cap with or without more
to come (only then is the rest drained)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
from starlette.requests import Request

from manager.api.limits import read_body
from manager.api.wire import GatewayError


def request(messages: Iterable[dict[str, Any]]) -> tuple[Request, list[dict[str, Any]]]:
    """A request whose receive hands out `messages` in turn (and fails past them, as a
    read of a finished body would wait for the client's disconnect)."""
    left = list(messages)

    async def receive() -> dict[str, Any]:
        if not left:
            raise AssertionError("read past the end of the body")
        return left.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [], "query_string": b""}
    return Request(scope, receive), left


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


def test_a_body_in_one_or_several_messages() -> None:
    req, _ = request([body(b'{"a": 1}')])
    assert asyncio.run(read_body(req, 100)) == b'{"a": 1}'
    req, _ = request([body(b'{"a"', True), body(b"", True), body(b": 1}")])
    assert asyncio.run(read_body(req, 100)) == b'{"a": 1}'


def test_a_client_that_leaves_before_its_body() -> None:
    req, _ = request([body(b"{", True), {"type": "http.disconnect"}])
    with pytest.raises(GatewayError) as caught:
        asyncio.run(read_body(req, 100))
    assert caught.value.failure.code == "client_disconnected"


@pytest.mark.parametrize("more", [False, True])
def test_a_body_over_the_cap_is_refused_and_the_rest_drained(more: bool) -> None:
    rest = [body(b"x" * 50, True), body(b"x")] if more else []
    req, left = request([body(b"x" * 60, True), body(b"x" * 60, more), *rest])
    with pytest.raises(GatewayError) as caught:
        asyncio.run(read_body(req, 100))
    assert caught.value.failure.status == 413
    assert left == []  # drained to its end, and not read past it
