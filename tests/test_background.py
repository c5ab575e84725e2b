"""Background responses in-process (server/background.py, Gateway._run_background): followers
see every event in order, cancel and shutdown each end the work with a stored final record, and
the builder's queued opening keeps the event grammar valid."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.oas import validate_event, validate_response
from tests.test_server_unit import Env, FakeRegistry, sse_events
from turnout.engine.builder import ResponseBuilder
from turnout.server.background import LiveResponse
from turnout.server.gateway import Gateway, JsonReply, StreamReply
from turnout.server.stores import StoredResponse
from turnout.server.upstream import Upstream

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


def alias_env(**env: str) -> Env:
    from tests.test_server_unit import KEY
    from turnout.server.config import Deployment, ModelAlias, Settings

    e = Env()
    e.settings = Settings(
        store="memory://",
        env=env,
        models={
            "primary": ModelAlias([Deployment(model="fake/a")], fallbacks=["backup"]),
            "backup": ModelAlias(
                [Deployment(model="fake/b", api_key=KEY), Deployment(model="fake/c", api_key=KEY)]
            ),
        },
    )
    return e


async def finished(gw: Gateway, response_id: str) -> StoredResponse:
    for _ in range(400):
        if gw.background.get(response_id) is None:
            break
        await asyncio.sleep(0.005)
    record = await gw.store.get(response_id)
    assert record is not None
    return record


async def test_an_alias_fails_over_in_the_background_as_in_the_foreground() -> None:
    """The first deployment has no key: the create call must not answer 401 for it when the
    fallback would answer (the router picks when the work starts)."""
    env = alias_env()
    gw = env.gateway()
    reply = await gw.create({"model": "primary", "input": "hi", "background": True})
    assert isinstance(reply, JsonReply) and reply.response["status"] == "queued"
    assert reply.headers == {}  # no deployment tried yet: no header naming a guess
    record = await finished(gw, reply.response["id"])
    assert record.status == "completed"
    assert [a["status"] for a in record.attempts] == [401, 200]
    assert record.deployment in ("fake/b", "fake/c")


async def test_a_background_response_that_no_deployment_answers_keeps_its_trail() -> None:
    env = alias_env()
    env.upstream.status = 500
    gw = env.gateway()
    reply = await gw.create({"model": "backup", "input": "hi", "background": True})
    assert isinstance(reply, JsonReply)
    record = await finished(gw, reply.response["id"])
    assert record.status == "failed"
    assert len(record.attempts) >= 2 and {a["status"] for a in record.attempts} == {500}


async def test_a_cancel_before_the_work_took_its_first_step_still_records_it() -> None:
    env = Env()
    gw, _ = stalled_gateway(env)
    reply = await gw.create({"model": "fake/x", "input": "hi", "background": True})
    assert isinstance(reply, JsonReply)
    ended = await gw.background.cancel(reply.response["id"])  # no await in between
    assert ended is not None and ended.response["status"] == "cancelled"
    stored = await env.store.get(reply.response["id"])
    assert stored is not None and stored.status == "cancelled"


async def test_a_store_that_fails_the_final_write_leaves_the_live_state_answering() -> None:
    env = Env()
    gw = env.gateway()
    reply = await gw.create({"model": "fake/x", "input": "hi", "background": True})
    assert isinstance(reply, JsonReply)
    rid = reply.response["id"]

    async def broken_put(record: StoredResponse) -> None:
        raise OSError("disk full")

    async def broken_replace(record: StoredResponse, **_: object) -> bool:
        raise OSError("disk full")

    env.store.put = broken_put  # type: ignore[method-assign]
    env.store.replace_unfinished = broken_replace  # type: ignore[method-assign]  # the final write
    for _ in range(400):
        live = gw.background.get(rid)
        if live is None or live.done:
            break
        await asyncio.sleep(0.005)
    live = gw.background.get(rid)
    assert live is not None and live.done  # kept: the store would still say "queued"
    # It says what happened (issue 12): not stored, so not "completed".
    assert live.response["status"] == "failed"
    assert live.response["error"]["message"].startswith("[store_unavailable] ")
    assert live.events[-1]["type"] == "response.failed"


async def test_background_responses_at_work_are_capped_with_a_429() -> None:
    from dataclasses import replace

    from turnout.engine.errors import RequestError

    env = Env()
    env.settings = replace(env.settings, limits=replace(env.settings.limits, max_background=1))
    gw, _ = stalled_gateway(env)
    first = await gw.create({"model": "fake/x", "input": "hi", "background": True})
    assert isinstance(first, JsonReply)
    with pytest.raises(RequestError) as refused:
        await gw.create({"model": "fake/x", "input": "again", "background": True})
    assert refused.value.status == 429 and refused.value.param == "background"
    await gw.background.cancel(first.response["id"])
    second = await gw.create({"model": "fake/x", "input": "again", "background": True})
    assert isinstance(second, JsonReply)
    await gw.aclose()


async def test_concurrent_creates_cannot_overrun_the_cap() -> None:
    """The slot is taken before the first await (the queued record's write), so creates that
    arrive together cannot all pass the check."""
    from dataclasses import replace

    from turnout.engine.errors import RequestError

    env = Env()
    env.settings = replace(env.settings, limits=replace(env.settings.limits, max_background=3))
    gw, _ = stalled_gateway(env)
    put = env.store.put

    async def slow_put(record: StoredResponse) -> None:
        await asyncio.sleep(0.01)  # a real store's write awaits (SQLite's worker thread)
        await put(record)

    env.store.put = slow_put  # type: ignore[method-assign]
    results = await asyncio.gather(
        *(gw.create({"model": "fake/x", "input": f"n{i}", "background": True}) for i in range(8)),
        return_exceptions=True,
    )
    accepted = [r for r in results if isinstance(r, JsonReply)]
    refused = [r for r in results if isinstance(r, RequestError)]
    assert len(accepted) == 3 and len(refused) == 5
    assert gw.background.running() == 3
    await gw.aclose()
