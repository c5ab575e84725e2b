"""Replies as plain ASGI callables, for the routes on the request path.

Litestar passes a handler's return value straight to the server when the handler is annotated
`-> ASGIApp`, so these skip its Response -> ASGIResponse conversion (header objects, cookie and
background-task handling none of these routes use). Errors still go through Litestar's
exception handlers (server/errors.py), since they are raised, not returned.

`EventStream` also replaces Litestar's streaming reply, which runs every stream in an anyio task
group of two tasks. Here the chunks are sent from the handler's own task inside a cancel scope,
and one small task waits for `http.disconnect` and cancels that scope: a client that goes away
still stops the upstream read at once (the server's `send` ignores a gone client rather than
raising, so the disconnect must be watched), at the cost of one task instead of a task group.

The gateway answers with `JsonReply` or `StreamReply` (framework-free: the route turns them into
the ASGI replies here), and SSE chunks are encoded here: `encode_sse` one event, `replay_sse` a
stored event list.

Stream terminator: every stream ends with `data: [DONE]`. OpenAI does not send it, but the Open
Responses spec requires it and both official SDKs stop cleanly on it (responses-api §7.1), so it
costs OpenAI clients nothing and makes the stream Open Responses conformant.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from litestar.types import Receive, Scope, Send

__all__ = [
    "DONE",
    "BodyReply",
    "EventStream",
    "JsonReply",
    "StreamReply",
    "encode_sse",
    "json_reply",
    "replay_sse",
]

log = logging.getLogger("turnout.replies")

_SSE = (b"content-type", b"text/event-stream; charset=utf-8")

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class JsonReply:
    response: dict[str, Any]
    # Response headers (x-turnout-deployment, x-turnout-attempts): no keys, no URLs.
    headers: dict[str, str] = field(default_factory=dict)
    # A background response: its work (and its telemetry record) outlives this reply.
    detached: bool = False


@dataclass(frozen=True, slots=True)
class StreamReply:
    chunks: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    detached: bool = False


def encode_sse(event: Mapping[str, Any]) -> bytes:
    """One event, one chunk: `event:` equals the JSON `type` (Open Responses requires it)."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def replay_sse(
    events: Sequence[Mapping[str, Any]], starting_after: int | None, *, done_marker: bool = True
) -> AsyncIterator[bytes]:
    """Stored events as SSE from `#0` (the SDK resume helpers need `response.created`), or only
    those with `sequence_number > starting_after`."""
    for event in events:
        if starting_after is not None and int(event.get("sequence_number", -1)) <= starting_after:
            continue
        yield encode_sse(event)
    if done_marker:
        yield DONE


def _encode(headers: Mapping[str, str] | None) -> list[tuple[bytes, bytes]]:
    if not headers:
        return []
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class BodyReply:
    """A complete body with its status, content type and extra headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        content_type: bytes = b"application/json",
    ):
        self.body = body
        self.status = status
        self.headers = headers
        self.content_type = content_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [
            (b"content-type", self.content_type),
            (b"content-length", str(len(self.body)).encode()),
            *_encode(self.headers),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": raw})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def json_reply(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> BodyReply:
    return BodyReply(orjson.dumps(data), status, headers)


class EventStream:
    """`text/event-stream` from an async iterator of already-encoded chunks, one send each."""

    __slots__ = ("chunks", "headers")

    def __init__(self, chunks: AsyncIterator[bytes], headers: Mapping[str, str] | None = None):
        self.chunks = chunks
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            headers = [_SSE, *_encode(self.headers)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            with anyio.CancelScope() as cancel_scope:
                watcher = asyncio.get_running_loop().create_task(
                    _cancel_on_disconnect(cancel_scope, receive)
                )
                watcher.add_done_callback(_retrieve)
                try:
                    async for chunk in self.chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                finally:
                    watcher.cancel()
        finally:
            # On every way out (the end, a client that left, a send that raised): close the
            # iterator now, so its cleanup (releasing the upstream, closing the request's
            # telemetry) runs at once, not at GC or never. Closing a finished one is a no-op.
            close = getattr(self.chunks, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()


def _retrieve(task: asyncio.Task[None]) -> None:
    # A receive() that raised only means the disconnect is no longer watched: not an error of
    # the reply, but never an "exception was never retrieved" warning either.
    if not task.cancelled() and task.exception() is not None:
        log.debug("disconnect watcher ended: %r", task.exception())


async def _cancel_on_disconnect(cancel_scope: anyio.CancelScope, receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel_scope.cancel()
            return
