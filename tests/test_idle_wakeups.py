"""An idle dashboard sleeps: Gradio's queue polls slowly while nobody is here and fast as
soon as a request comes; the serving loop wakes once a second, or at once for a stop."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import gradio as gr
import httpx
import pytest
import uvicorn

from components.gradio_queue import (
    EVENT_POLL_S,
    IDLE_EVENT_POLL_S,
    IDLE_PROGRESS_POLL_S,
    PROGRESS_POLL_S,
    QueuePace,
    QueueVisits,
)
from manager.cli.serving import DashboardServer
from manager.net import free_port
from tests.waits import wait_for

T = TypeVar("T")


@pytest.fixture(scope="module")
def queue() -> Any:
    """A real Gradio queue (each test's own pace sets its poll lengths anew)."""
    with gr.Blocks() as blocks:
        gr.Markdown("idle")
    return blocks._queue


def run_on_a_thread(scenario: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a thread of its own: the session's Playwright browser keeps a running
    loop on the main thread once a browser test ran, and asyncio.run refuses to nest."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, scenario).result()


async def until(condition: object, timeout: float = 30.0) -> bool:
    """Wait on the loop until `condition()` holds (the pace's own timer moves it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_the_queue_polls_slowly_until_a_request_and_again_after_everyone_left(queue: Any
                                                                             ) -> None:
    pace = QueuePace(queue, watch_s=0.2)

    async def scenario() -> None:
        # Nobody yet: Gradio's 1 ms / 10 ms polls became long sleeps.
        assert (queue.sleep_when_free, queue.progress_update_sleep_when_free) == (
            IDLE_EVENT_POLL_S, IDLE_PROGRESS_POLL_S)
        pace.visit()
        assert pace.fast
        assert (queue.sleep_when_free, queue.progress_update_sleep_when_free) == (
            EVENT_POLL_S, PROGRESS_POLL_S)
        # An event still running keeps it fast after the requests stopped.
        queue.active_jobs = [["an event"], None]
        await asyncio.sleep(0.5)  # longer than watch_s: the pace's timer has fired
        assert pace.fast and queue.sleep_when_free == EVENT_POLL_S
        queue.active_jobs = [None, None]
        assert await until(lambda: not pace.fast)
        assert queue.sleep_when_free == IDLE_EVENT_POLL_S

    run_on_a_thread(scenario())


def test_every_request_through_the_middleware_wakes_the_pace(queue: Any) -> None:
    pace = QueuePace(queue, watch_s=60)

    async def app(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> int:
        transport = httpx.ASGITransport(app=QueueVisits(app, pace))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert not pace.fast
            status = (await client.get("/")).status_code
            assert pace.fast and queue.sleep_when_free == EVENT_POLL_S
            return status

    assert run_on_a_thread(scenario()) == 204


def test_a_stop_wakes_the_idle_serving_loop() -> None:
    async def app(scope: dict, receive: object, send: object) -> None:
        raise RuntimeError("no request is made")

    server = DashboardServer(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                            log_level="warning", lifespan="off"))
    server.wake_s = 3600.0  # only the stop itself can end the wait within the join below
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started or not thread.is_alive(), 30, "uvicorn to start")
    server.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls
    thread.join(60)
    assert not thread.is_alive()
