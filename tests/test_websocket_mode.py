"""The WebSocket session logic (server/websocket_mode.py) and the socket's memory
(server/socket_memory.py), with a scripted gateway and plain ASGI callables: no sockets.

The e2e suite (tests/test_e2e_websocket.py) drives the same code through `turnout serve`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import anyio
import orjson
import pytest

from tests.oas import validate_websocket_error
from turnout.engine.errors import RequestError, UpstreamError
from turnout.server.replies import DONE, JsonReply, StreamReply, encode_sse
from turnout.server.request_context import ANONYMOUS, Caller
from turnout.server.run import Run
from turnout.server.socket_memory import MAX_KEPT, SocketMemory
from turnout.server.store_health import StoreUnavailable
from turnout.server.stores import MemoryStore, StoredResponse
from turnout.server.websocket_mode import Session, error_message, parse

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- parse and error messages -------------------------------------------------------------------


def _refused(data: str | bytes) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(data)
    return caught.value


def test_a_create_message_becomes_a_streamed_create_body() -> None:
    body = parse(b'{"type": "response.create", "model": "m", "input": "hi", "store": false}')
    assert body == {"model": "m", "input": "hi", "store": False, "stream": True}


def test_stream_true_is_let_through() -> None:
    # OpenAI's Agents SDK (OpenAIResponsesWSModel) sends it in every message; the socket
    # streams anyway (tests/test_e2e_agents_sdk.py runs that transport).
    body = parse(b'{"type": "response.create", "model": "m", "input": "hi", "stream": true}')
    assert body == {"model": "m", "input": "hi", "stream": True}


@pytest.mark.parametrize(
    ("data", "code", "param"),
    [
        ("not json", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        ('"response.create"', "invalid_json", None),
        ('{"model": "m"}', "unknown_message_type", "type"),
        ('{"type": "response.cancel"}', "unknown_message_type", "type"),
        ('{"type": "response.create", "stream": false}', "unsupported_parameter", "stream"),
        ('{"type": "response.create", "stream": "true"}', "unsupported_parameter", "stream"),
        ('{"type": "response.create", "stream_options": {}}', "unsupported_parameter", None),
        ('{"type": "response.create", "background": true}', "unsupported_parameter", None),
        (
            '{"type": "response.create", "input": ' + "[" * 1100 + "]" * 1100 + "}",
            "nesting_too_deep",
            None,
        ),
    ],
)
def test_bad_messages_are_400s(data: str, code: str, param: str | None) -> None:
    exc = _refused(data)
    assert exc.status == 400 and exc.code == code
    if param is not None:
        assert exc.param == param


def test_error_messages_follow_the_websocket_error_event() -> None:
    request = error_message(RequestError(404, "gone", param="previous_response_id", code="nf"))
    assert request == {
        "type": "error",
        "status": 404,
        "error": {
            "message": "gone",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "nf",
        },
    }
    upstream = error_message(UpstreamError(429, "slow down", code="rate_limit_exceeded"))
    assert upstream["status"] == 429 and upstream["error"]["code"] == "rate_limit_exceeded"
    store = error_message(StoreUnavailable())
    assert store["status"] == 503 and store["error"]["code"] == "store_unavailable"
    crash = error_message(ValueError("secret detail"))
    assert crash["status"] == 500 and "secret" not in crash["error"]["message"]
    # No code of its own: the type stands in (the spec requires a string code).
    bare = error_message(RequestError(400, "bad", code=None))
    assert bare["error"]["code"] == "invalid_request_error"
    for message in (request, upstream, store, crash, bare):
        validate_websocket_error(message)


# -- the session --------------------------------------------------------------------------------


def event(n: int, kind: str = "response.output_text.delta") -> dict[str, Any]:
    return {"type": kind, "sequence_number": n}


class Script:
    """A gateway whose `create` streams scripted SSE chunks, or raises."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], Caller, SocketMemory | None]] = []
        self.raises: Exception | None = None
        self.gate: anyio.Event | None = None  # the stream waits here after its first chunk
        self.tail: anyio.Event | None = None  # ... and here after its terminal event
        self.gates: list[anyio.Event | None] = []  # per call, before `gate`
        self.closed = 0

    async def create(
        self, body: Any, caller: Caller = ANONYMOUS, *, memory: SocketMemory | None = None
    ) -> JsonReply | StreamReply:
        self.calls.append((body, caller, memory))
        if self.raises is not None:
            raise self.raises
        gate = self.gates.pop(0) if self.gates else self.gate
        return StreamReply(self._chunks(gate), {})

    async def _chunks(self, gate: anyio.Event | None) -> AsyncGenerator[bytes, None]:
        try:
            first = encode_sse(event(0, "response.created")) + encode_sse(event(1))
            yield first[:20]  # an event cut across chunks
            yield first[20:]
            if gate is not None:
                await gate.wait()
            yield encode_sse(event(2, "response.completed")) + DONE
            if self.tail is not None:
                await self.tail.wait()
        finally:
            self.closed += 1


class Pipe:
    """The client's side: what it sends (`put`), what it received (`sent`)."""

    def __init__(self) -> None:
        self.to_server, self.inbox = anyio.create_memory_object_stream[dict[str, Any]](16)
        self.sent: list[dict[str, Any]] = []
        self.arrived = anyio.Event()
        self.fail_sends = False

    async def send(self, message: dict[str, Any]) -> None:
        if self.fail_sends:
            raise OSError("client gone")
        assert message["type"] == "websocket.send"
        self.sent.append(orjson.loads(message["text"]))
        self.arrived.set()

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.receive()

    async def put(self, text: str) -> None:
        await self.to_server.send({"type": "websocket.receive", "text": text})

    async def leave(self) -> None:
        await self.to_server.send({"type": "websocket.disconnect", "code": 1000})

    async def wait_for(self, check: Callable[[list[dict[str, Any]]], bool]) -> None:
        with anyio.fail_after(5):
            while not check(self.sent):
                self.arrived = anyio.Event()
                await self.arrived.wait()


CREATE = orjson.dumps({"type": "response.create", "model": "fake/x", "input": "hi"}).decode()


async def caller_x() -> Caller:
    return Caller(key_id="key_x")


def session(script: Script, pipe: Pipe) -> Session:
    return Session(script, pipe.send, caller_x)


async def run_with(script: Script, pipe: Pipe, client: Callable[[], Awaitable[None]]) -> Session:
    s = session(script, pipe)
    with pipe.to_server, pipe.inbox, anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(s.run, pipe.receive)
            await client()
    return s


def types(sent: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in sent]


async def test_each_event_is_one_message_and_done_is_not_sent() -> None:
    script, pipe = Script(), Pipe()

    async def client() -> None:
        await pipe.put(CREATE)
        await pipe.wait_for(lambda sent: len(sent) == 3)
        await pipe.put(CREATE)  # the next turn on the same socket
        await pipe.wait_for(lambda sent: len(sent) == 6)
        await pipe.leave()

    s = await run_with(script, pipe, client)
    kinds = ["response.created", "response.output_text.delta", "response.completed"]
    assert types(pipe.sent) == kinds * 2
    assert [m["sequence_number"] for m in pipe.sent] == [0, 1, 2] * 2
    (first, caller, memory), (_, _, again) = script.calls
    assert first == {"model": "fake/x", "input": "hi", "stream": True}
    assert caller.key_id == "key_x"
    assert memory is s.memory and again is s.memory  # one memory per socket
    assert script.closed == 2


async def test_errors_are_messages_and_the_socket_goes_on() -> None:
    script, pipe = Script(), Pipe()

    async def client() -> None:
        await pipe.put("{nope")
        script.raises = UpstreamError(503, "fake: down", code="upstream_error", provider="fake")
        await pipe.put(CREATE)
        await pipe.wait_for(lambda sent: len(sent) == 2)
        script.raises = None
        await pipe.put(CREATE)
        await pipe.wait_for(lambda sent: len(sent) == 5)
        await pipe.leave()

    await run_with(script, pipe, client)
    assert pipe.sent[0]["error"]["code"] == "invalid_json"
    assert pipe.sent[1]["status"] == 503 and pipe.sent[1]["error"]["message"] == "fake: down"
    assert types(pipe.sent)[2:] == [
        "response.created",
        "response.output_text.delta",
        "response.completed",
    ]


async def test_a_create_while_a_turn_runs_is_refused_and_the_turn_goes_on() -> None:
    script, pipe = Script(), Pipe()
    script.gate = anyio.Event()
    gate = script.gate

    async def client() -> None:
        await pipe.put(CREATE)
        await pipe.wait_for(lambda sent: len(sent) == 2)
        await pipe.put(CREATE)
        await pipe.wait_for(lambda sent: len(sent) == 3)
        gate.set()
        await pipe.wait_for(lambda sent: len(sent) == 4)
        await pipe.leave()

    await run_with(script, pipe, client)
    assert types(pipe.sent) == [
        "response.created",
        "response.output_text.delta",
        "error",
        "response.completed",
    ]
    assert pipe.sent[2]["status"] == 409 and pipe.sent[2]["error"]["code"] == "turn_in_progress"
    assert len(script.calls) == 1


async def test_the_next_turn_may_start_as_soon_as_the_terminal_event_is_out() -> None:
    """The client answers the terminal event at once, while the turn's task is still ending
    (its stream not closed yet): no `turn_in_progress`, and the ending turn does not free the
    socket under the next one."""
    script, pipe = Script(), Pipe()
    script.tail = anyio.Event()
    tail, second = script.tail, anyio.Event()
    script.gates = [None, second]

    async def client() -> None:
        await pipe.put(CREATE)
        await pipe.wait_for(lambda sent: len(sent) == 3)
        await pipe.put(CREATE)
        await pipe.wait_for(lambda sent: len(sent) == 5)  # the second turn is under way
        tail.set()  # the first turn's task ends now; the second waits at its gate
        await anyio.wait_all_tasks_blocked()
        await pipe.put(CREATE)  # refused: the second turn is still running
        await pipe.wait_for(lambda sent: len(sent) == 6)
        second.set()
        await pipe.wait_for(lambda sent: len(sent) == 7)
        await pipe.leave()

    await run_with(script, pipe, client)
    assert types(pipe.sent) == [
        "response.created",
        "response.output_text.delta",
        "response.completed",
        "response.created",
        "response.output_text.delta",
        "error",
        "response.completed",
    ]
    assert pipe.sent[5]["error"]["code"] == "turn_in_progress" and len(script.calls) == 2


async def test_a_client_that_leaves_cancels_the_turn_and_closes_its_stream() -> None:
    script, pipe = Script(), Pipe()
    script.gate = anyio.Event()  # never set: the turn would wait forever

    async def client() -> None:
        await pipe.put(CREATE)
        await pipe.wait_for(lambda sent: len(sent) == 2)
        await pipe.leave()

    s = await run_with(script, pipe, client)
    assert script.closed == 1 and s.gone and not s.busy


async def test_a_send_that_fails_ends_the_session_and_the_turn() -> None:
    script, pipe = Script(), Pipe()
    script.gate = anyio.Event()
    gate = script.gate

    async def client() -> None:
        await pipe.put(CREATE)
        await pipe.wait_for(lambda sent: len(sent) == 2)
        pipe.fail_sends = True
        gate.set()  # the next event's send fails

    s = await run_with(script, pipe, client)
    assert s.gone and script.closed == 1


# -- the socket's memory ------------------------------------------------------------------------


def record(rid: str, prev: str | None, text: str) -> StoredResponse:
    return StoredResponse(
        id=rid,
        created_at=1,
        model="m",
        provider="fake",
        status="completed",
        response={"id": rid, "output": [{"type": "message", "id": f"out_{rid}", "text": text}]},
        input_items=[{"type": "message", "id": f"in_{rid}", "text": text}],
        events=None,
        request={},
        previous_response_id=prev,
        deployment=None,
        attempts=[],
        cost=None,
    )


async def test_the_chain_walks_the_socket_first_then_the_store() -> None:
    store, memory = MemoryStore(), SocketMemory()
    await store.put(record("resp_a", None, "stored"))
    memory.records["resp_b"] = record("resp_b", "resp_a", "unstored")
    memory.records["resp_c"] = record("resp_c", "resp_b", "unstored too")
    chain = await memory.chain(store, "resp_c", ANONYMOUS)
    assert [r.id for r in chain] == ["resp_a", "resp_b", "resp_c"]
    assert await memory.chain(store, None, ANONYMOUS) == []
    assert [r.id for r in await memory.chain(store, "resp_a", ANONYMOUS)] == ["resp_a"]
    with pytest.raises(RequestError) as missing:
        await memory.chain(store, "resp_zzz", ANONYMOUS)
    assert missing.value.status == 404 and missing.value.code == "previous_response_not_found"
    # Another socket's memory does not hold them.
    with pytest.raises(RequestError):
        await SocketMemory().chain(store, "resp_b", ANONYMOUS)


async def test_a_response_is_kept_once_its_finish_succeeded() -> None:
    memory = SocketMemory()
    response = {"id": "resp_k", "created_at": 5, "model": "m", "status": "completed", "output": []}
    run = cast(
        Run,
        SimpleNamespace(
            builder=SimpleNamespace(response=response),
            canon=SimpleNamespace(model="m", input_items=[{"id": "msg_1"}]),
            target=SimpleNamespace(provider="fake", deployment=None),
            request={"store": False},
            previous_response_id="resp_j",
            attempts=[],
            caller=Caller(key_id="key_x"),
        ),
    )
    finished: list[str] = []

    async def finish(r: Run) -> None:
        finished.append("written")

    await memory.keeping(finish)(run)
    kept = memory.records["resp_k"]
    assert finished == ["written"] and kept.previous_response_id == "resp_j"
    assert kept.input_items == [{"id": "msg_1"}] and kept.api_key_id == "key_x"

    # Bounded: past MAX_KEPT the oldest goes.
    for n in range(MAX_KEPT):
        run.builder.response = {**response, "id": f"resp_{n}"}
        memory.remember(run)
    assert len(memory.records) == MAX_KEPT and "resp_k" not in memory.records
    assert f"resp_{MAX_KEPT - 1}" in memory.records

    async def failing(r: Run) -> None:
        raise StoreUnavailable

    other = SocketMemory()
    with pytest.raises(StoreUnavailable):
        await other.keeping(failing)(run)
    assert other.records == {}
