"""Background responses in-process (server/background.py, Gateway._run_background): followers
see every event in order, cancel and shutdown each end the work with a stored final record, and
the builder's queued opening keeps the event grammar valid."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from engine.builder import ResponseBuilder
from server.background import LiveResponse
from server.gateway import Gateway, JsonReply, StreamReply
from server.upstream import Upstream
from tests.oas import validate_event, validate_response
from tests.test_server_unit import Env, FakeRegistry, sse_events

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Stalled(httpx.AsyncByteStream):
    """An upstream that says one thing and then nothing, until it is closed."""

    def __init__(self) -> None:
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"t": "Hel"}\n'
        await asyncio.sleep(3600)

    async def aclose(self) -> None:
        self.closed = True


def stalled_gateway(env: Env) -> tuple[Gateway, list[Stalled]]:
    streams: list[Stalled] = []

    def answer(request: httpx.Request) -> httpx.Response:
        streams.append(Stalled())
        return httpx.Response(200, stream=streams[-1])

    up = Upstream(transport=httpx.MockTransport(answer))
    return Gateway(env.settings, FakeRegistry(env.mapping), env.store, up), streams


async def settle(gw: Gateway, response_id: str) -> None:
    live = gw.background.get(response_id)
    for _ in range(200):
        if live is None or live.events[-1]["type"] == "response.output_text.delta":
            return
        await asyncio.sleep(0.005)


async def test_builder_queue_opens_with_queued_then_in_progress() -> None:
    b = ResponseBuilder("resp_1", 1, {"background": True}, {}, "m")
    events = b.queue()
    assert [e["type"] for e in events] == ["response.created", "response.queued"]
    assert {e["response"]["status"] for e in events} == {"queued"}
    assert b.response["status"] == "queued"
    events += b.start() + b.feed([{"op": "text_delta", "text": "hi"}]) + b.finish()
    for event in events:
        validate_event(event)
    types = [e["type"] for e in events]
    assert types[2] == "response.in_progress" and types.count("response.in_progress") == 1
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert b.response["status"] == "completed"


async def test_followers_get_every_event_once_in_order_from_any_point() -> None:
    live = LiveResponse(ResponseBuilder("resp_1", 1, {}, {}, "m"))
    seen: list[list[int]] = [[], []]

    async def follow(slot: int, after: int | None) -> None:
        async for batch in live.follow(after):
            seen[slot].extend(e["sequence_number"] for e in batch)

    live.publish([{"sequence_number": 0}, {"sequence_number": 1}])
    tasks = [asyncio.create_task(follow(0, None)), asyncio.create_task(follow(1, 2))]
    for n in range(2, 8):
        await asyncio.sleep(0)
        live.publish([{"sequence_number": n}])
    live.close()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert seen == [list(range(8)), list(range(3, 8))]


async def test_cancel_stores_cancelled_closes_the_upstream_and_ends_followers() -> None:
    env = Env()
    gw, streams = stalled_gateway(env)
    reply = await gw.create({"model": "fake/x", "input": "hi", "background": True})
    assert isinstance(reply, JsonReply) and reply.detached
    validate_response(reply.response)
    assert reply.response["status"] == "queued"
    rid = reply.response["id"]
    await settle(gw, rid)
    live = gw.background.get(rid)
    assert live is not None and live.response["status"] == "in_progress"
    follower = asyncio.create_task(_collect(gw.follow_sse(live)))

    ended = await gw.background.cancel(rid)
    assert ended is not None and ended.response["status"] == "cancelled"
    assert streams[0].closed and gw.background.get(rid) is None
    stored = await env.store.get(rid)
    assert stored is not None and stored.status == "cancelled"
    assert stored.response == ended.response
    text = (await asyncio.wait_for(follower, 5)).decode()
    assert text.endswith("data: [DONE]\n\n")
    assert [e["type"] for e in sse_events(text)][:3] == [
        "response.created", "response.queued", "response.in_progress",
    ]  # fmt: skip


async def test_shutdown_fails_running_responses_so_pollers_do_not_wait_forever() -> None:
    env = Env()
    gw, streams = stalled_gateway(env)
    reply = await gw.create({"model": "fake/x", "input": "hi", "background": True, "stream": True})
    assert isinstance(reply, StreamReply) and reply.detached
    first = await anext(reply.chunks)
    rid = sse_events(first.decode())[0]["response"]["id"]
    await settle(gw, rid)
    await gw.aclose()
    stored = await env.store.get(rid)
    assert stored is not None and stored.status == "failed"
    assert stored.response["error"]["code"] == "server_error"
    assert "shut down" in stored.response["error"]["message"]
    assert stored.events is not None and stored.events[-1]["type"] == "response.failed"
    rest = b"".join([chunk async for chunk in reply.chunks]).decode()
    assert sse_events(rest)[-1]["type"] == "response.failed"
    assert streams[0].closed


async def test_the_queued_record_is_there_before_create_returns() -> None:
    env = Env()
    gw, _ = stalled_gateway(env)
    reply = await gw.create({"model": "fake/x", "input": "hi", "background": True})
    assert isinstance(reply, JsonReply)
    stored = await env.store.get(reply.response["id"])
    assert stored is not None and stored.status == "queued"
    assert [e["type"] for e in stored.events or []] == ["response.created", "response.queued"]
    await gw.aclose()


async def _collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])
