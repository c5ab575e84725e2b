"""The ASGI replies of server/replies.py: what they send, and that a client who leaves mid-stream
stops the stream at once, even while it waits on a silent upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson
import pytest

from turnout.server.replies import EventStream, json_reply

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Wire:
    """ASGI receive/send ends: records what is sent; `leave()` makes receive say disconnect."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def leave(self) -> None:
        self.gone.set()


async def test_json_reply_sends_status_headers_and_body() -> None:
    wire = Wire()
    await json_reply({"a": [1, "é"]}, 201, {"X-Turnout-Attempts": "2"})({}, wire.receive, wire.send)
    start, body = wire.sent
    assert start["status"] == 201
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"x-turnout-attempts"] == b"2"
    assert int(headers[b"content-length"]) == len(body["body"])
    assert orjson.loads(body["body"]) == {"a": [1, "é"]} and body["more_body"] is False


async def test_event_stream_sends_each_chunk_then_ends() -> None:
    async def chunks() -> AsyncGenerator[bytes, None]:
        for i in range(3):
            yield b"data: %d\n\n" % i

    wire = Wire()
    await EventStream(chunks(), {"cache-control": "no-cache"})({}, wire.receive, wire.send)
    start, *bodies = wire.sent
    assert dict(start["headers"])[b"content-type"].startswith(b"text/event-stream")
    assert [m["body"] for m in bodies] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert [m["more_body"] for m in bodies] == [True, True, True, False]


async def test_a_client_that_leaves_stops_a_stalled_stream_and_its_cleanup_runs() -> None:
    cleaned = asyncio.Event()

    async def stalled() -> AsyncGenerator[bytes, None]:
        try:
            yield b"data: first\n\n"
            await asyncio.sleep(3600)  # an upstream that never says another word
            yield b"data: never\n\n"
        finally:
            cleaned.set()

    wire = Wire()
    asyncio.get_running_loop().call_later(0.05, wire.leave)
    started = time.monotonic()
    await asyncio.wait_for(EventStream(stalled())({}, wire.receive, wire.send), timeout=5)
    assert time.monotonic() - started < 2
    assert cleaned.is_set()
    assert [m.get("body") for m in wire.sent[1:]] == [b"data: first\n\n"]  # no end-of-body


async def endless(closed: asyncio.Event) -> AsyncGenerator[bytes, None]:
    try:
        while True:
            yield b"data: x\n\n"
    finally:
        closed.set()


async def test_a_client_that_leaves_between_chunks_gets_the_iterator_closed() -> None:
    """Cancelled while in `send` (the iterator suspended at a yield): it is closed right away."""
    closed = asyncio.Event()
    wire = Wire()

    async def slow_send(message: dict[str, Any]) -> None:
        wire.sent.append(message)
        if len(wire.sent) == 3:
            wire.leave()
            await asyncio.sleep(3600)  # a send blocked on a full socket buffer

    await asyncio.wait_for(EventStream(endless(closed))({}, wire.receive, slow_send), timeout=5)
    assert closed.is_set()


async def test_a_send_that_raises_still_closes_the_iterator() -> None:
    """A reply that fails mid-way (a header the server refuses, a broken socket) must still
    run the iterator's cleanup at once: it releases the upstream and closes the telemetry."""
    closed = asyncio.Event()

    async def broken_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            raise OSError("connection reset")

    wire = Wire()
    with pytest.raises(OSError):
        await EventStream(endless(closed))({}, wire.receive, broken_send)
    assert closed.is_set()

    never_started = asyncio.Event()

    async def unstarted() -> AsyncGenerator[bytes, None]:
        try:
            yield b"data: x\n\n"
        finally:
            never_started.set()

    async def refuses_start(message: dict[str, Any]) -> None:
        raise RuntimeError("Invalid HTTP header value")

    gen = unstarted()
    await anext(gen)  # suspended at its yield: closing it runs its finally
    with pytest.raises(RuntimeError):
        await EventStream(gen)({}, wire.receive, refuses_start)
    assert never_started.is_set()
