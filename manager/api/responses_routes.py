"""The Responses API's part of the gateway: preparing a request (with the stored
response it continues), storing what it answered, and the stored-response routes.

    POST   /v1/responses                      through Gateway.serve (Kind.RESPONSES)
    GET    /v1/responses/{id}                 a stored response
    DELETE /v1/responses/{id}
    GET    /v1/responses/{id}/input_items     its input items, paged (limit, order, after)

A request becomes a chat completions request here (manager/api/responses.py); the
gateway then serves it like any chat request (keys, limits, on-demand start, metering,
profile defaults) and hands the answer back: a whole chat completion to
`Prepared.answer`, a stream to `Prepared.format` (manager/api/responses_stream.py). Stored responses belong to the API
key's account: another account's id is answered 404, as an unknown one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

from anyio import CapacityLimiter, to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from manager.accounts.auth import User
from manager.api.key_auth import api_user, log_refusal, refusal
from manager.api.responses import (
    Item,
    from_chat_response,
    new_id,
    to_chat_request,
)
from manager.api.responses_stream import ResponsesFormat, ResponsesStream
from manager.api.wire import Failure, GatewayError, dumps, openai_error
from manager.chat.stored_responses import ResponseStore
from manager.errors import NotFound, ValidationError

log = logging.getLogger(__name__)

RESPONSES_PATH = "/v1/responses"


@dataclass(frozen=True)
class Prepared:
    """A Responses request made ready: the chat request to send and what the answer
    needs (its id, the settings it echoes, where to store it)."""

    user: User
    chat: dict[str, Any]
    echo: dict[str, Any]
    history: list[Item]
    input_items: list[Item]
    #: Where the answer is stored; None with `store: false`.
    store: ResponseStore | None
    #: Bytes of the stored conversation it continues (it joins the request body).
    history_size: int = 0
    created_at: float = field(default_factory=time.time)

    @cached_property
    def response_id(self) -> str:
        """Made when first asked: by a stream's format once the request went out to the
        model server (an id takes a random read), or by the whole answer."""
        return new_id("resp")

    def answer(self, model: str, raw: Mapping[str, Any]) -> bytes:
        """A whole chat completion as the Response (stored when asked)."""
        response = from_chat_response(raw, self.response_id, model, self.echo,
                                      self.created_at)
        self.save(response)
        return dumps(response)

    def format(self, model: str) -> ResponsesFormat:
        """The relay's stream format; the response is stored when it completes."""
        return ResponsesFormat(ResponsesStream(self.response_id, model, self.echo,
                                               created_at=self.created_at),
                               partial(self.save, soon=True))

    def save(self, response: Mapping[str, Any], *, soon: bool = False) -> None:
        """Stores a finished response (`soon`: from the event loop, written by a worker)."""
        if self.store is None or response.get("status") not in ("completed", "incomplete"):
            return
        save = self.store.save_soon if soon else self.store.save
        save(self.user, response, history=self.history, input_items=self.input_items)


def _not_found(exc: NotFound, param: str | None = None) -> GatewayError:
    return GatewayError(404, exc.message, "response_not_found", param=param)


class ResponsesApi:
    """One per gateway."""

    def __init__(self, store: ResponseStore) -> None:
        self._store = store

    # -- POST /v1/responses (called by the gateway) -----------------------------------------

    def prepare(self, user: User, body: Mapping[str, Any]) -> Prepared:
        """The chat request for a checked body; reads the response it continues (a
        worker thread, or the event loop for a body without previous_response_id)."""
        history: list[Item] = []
        size = 0
        previous = body.get("previous_response_id")
        if previous:
            try:
                stored = self._store.get(user, previous)
            except NotFound as exc:
                raise _not_found(exc, "previous_response_id") from exc
            history, size = stored.context(), stored.size
        translated = to_chat_request(body, str(body.get("model") or ""), history)
        store = self._store if body.get("store", True) is not False else None
        return Prepared(user, translated.chat, translated.echo, history,
                        translated.input_items, store, size)

    async def prepare_async(self, user: User, body: Mapping[str, Any],
                            limiter: CapacityLimiter) -> Prepared:
        """`prepare`, reading the response it continues in a worker thread."""
        if body.get("previous_response_id"):
            return await to_thread.run_sync(self.prepare, user, body, limiter=limiter)
        return self.prepare(user, body)

    # -- the stored-response routes (event loop) ---------------------------------------------

    async def retrieve(self, request: Request) -> Response:
        user = api_user(request)
        if user is None:
            return failed(request, refusal(request))
        if request.query_params.get("stream") in ("true", "1"):
            return failed(request, Failure(
                400, "This gateway does not stream stored responses; leave out stream.",
                "invalid_request", param="stream"))
        response_id = request.path_params["response_id"]
        try:
            stored = await to_thread.run_sync(self._store.get, user, response_id)
        except NotFound as exc:
            return failed(request, _not_found(exc).failure)
        return Response(dumps(stored.response), media_type="application/json")

    async def delete(self, request: Request) -> Response:
        user = api_user(request)
        if user is None:
            return failed(request, refusal(request))
        response_id = request.path_params["response_id"]
        try:
            await to_thread.run_sync(self._store.delete, user, response_id)
        except NotFound as exc:
            return failed(request, _not_found(exc).failure)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def input_items(self, request: Request) -> Response:
        user = api_user(request)
        if user is None:
            return failed(request, refusal(request))
        query = request.query_params
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            return failed(request, Failure(
                400, "limit: must be a whole number between 1 and 100", "invalid_request",
                param="limit"))
        try:
            page = await to_thread.run_sync(lambda: self._store.input_items(
                user, request.path_params["response_id"], limit=limit,
                order=query.get("order", "desc"), after=query.get("after")))
        except NotFound as exc:
            return failed(request, _not_found(exc).failure)
        except ValidationError as exc:
            return failed(request, Failure(400, exc.message, "invalid_request",
                                           param=exc.field))
        items = page.items
        return Response(dumps({
            "object": "list", "data": items, "has_more": page.has_more,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None}), media_type="application/json")


def failed(request: Request, failure: Failure) -> JSONResponse:
    """The refusal in OpenAI's shape, logged once with the key's name."""
    log_refusal(request, failure)
    return JSONResponse(openai_error(failure), status_code=failure.status,
                        headers=failure.headers())
