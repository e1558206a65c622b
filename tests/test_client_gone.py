"""A gateway request whose client leaves before its answer is ready (manager/api/relay.py):
the work is stopped and the leaving is told apart from a cancellation from outside."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request
from starlette.types import Message

from manager.api.relay import done_unless_gone, unless_gone
from manager.servers.inference import RequestAborted


def _request(leaves: asyncio.Event, listening: asyncio.Event | None = None) -> Request:
    """A request whose body was read; its next receive() is the client's disconnect,
    once `leaves` is set (the ASGI server says so that way). `listening` is set when
    someone waits for it."""

    async def receive() -> Message:
        if listening is not None:
            listening.set()
        await leaves.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/v1/messages",
                    "headers": []}, receive)


def test_a_client_that_leaves_first_stops_the_work() -> None:
    async def run() -> tuple[bool, list[str], bool]:
        leaves, stopped = asyncio.Event(), []
        work = asyncio.ensure_future(asyncio.Event().wait())  # never done by itself
        leaves.set()
        left = await done_unless_gone(_request(leaves), work, lambda: stopped.append("stop"))
        return left, stopped, work.done()

    left, stopped, done = asyncio.run(run())
    assert left and stopped == ["stop"] and not done


def test_work_done_first_is_not_stopped() -> None:
    async def run() -> tuple[bool, list[str], object]:
        stopped: list[str] = []
        work = asyncio.ensure_future(asyncio.sleep(0, result="answer"))
        left = await done_unless_gone(_request(asyncio.Event()), work,
                                      lambda: stopped.append("stop"))
        return left, stopped, work.result()

    assert asyncio.run(run()) == (False, [], "answer")


def test_an_opening_whose_client_left_is_cancelled_and_says_why() -> None:
    async def run() -> asyncio.Future[None]:
        leaves, listening = asyncio.Event(), asyncio.Event()
        opening = asyncio.ensure_future(asyncio.Event().wait())
        waiting = asyncio.ensure_future(unless_gone(_request(leaves, listening), opening))
        await listening.wait()
        leaves.set()  # the client leaves while the stream is being opened
        with pytest.raises(RequestAborted, match="its client went away"):
            await waiting
        return opening

    assert asyncio.run(run()).cancelled()


def test_an_opening_cancelled_from_outside_stays_a_cancellation() -> None:
    async def run() -> None:
        listening = asyncio.Event()
        opening = asyncio.ensure_future(asyncio.Event().wait())
        waiting = asyncio.ensure_future(
            unless_gone(_request(asyncio.Event(), listening), opening))
        await listening.wait()
        waiting.cancel()  # e.g. the dashboard stopping
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert opening.cancelled()

    asyncio.run(run())
