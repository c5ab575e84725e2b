"""WebSocket mode on `GET /v1/responses`, end to end (issue 13, item 4).

A real `turnout serve` in front of the provider simulators, driven by the `websockets` sync
client: every server message is validated against the specs (the events against OpenAI's
ResponseStreamEvent branches, the errors against Open Responses' WebSocketErrorEvent) and every
client message against WebSocketResponseCreateEvent.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests import oas
from tests.conftest import (
    PROVIDERS,
    Gateway,
    gateway_env,
    label_for,
    model_for,
    start_gateway,
    stop_gateway,
)
from tests.simulators import Error, Replay, Simulator

TERMINAL = {"response.completed", "response.failed", "response.incomplete"}
# A recorded Chat stream (3.2 KB) replayed in pieces with a pause between them: a turn that is
# still running for a few seconds after its first events.
SLOW_FIXTURE = "openai_chat/tool_call_stream_include_usage"
SLOW_PROVIDER = "groq"  # speaks Chat Completions


def slow_stream(seconds: float = 4.0, pieces: int = 40) -> Replay:
    return Replay(SLOW_FIXTURE, chunk_size=(3222 + pieces - 1) // pieces, delay=seconds / pieces)


def ws_url(gateway: Gateway) -> str:
    return gateway.url.replace("http://", "ws://") + "/v1/responses"


@pytest.fixture
def ws(gateway: Gateway) -> Iterator[ClientConnection]:
    with connect(ws_url(gateway), open_timeout=10, close_timeout=2) as socket:
        yield socket


def create(socket: ClientConnection, **body: Any) -> None:
    message = {"type": "response.create", **body}
    oas.validate_websocket_create(message)
    socket.send(orjson.dumps(message).decode())


def receive(socket: ClientConnection, timeout: float = 30) -> dict[str, Any]:
    data = socket.recv(timeout=timeout)
    assert isinstance(data, str), "every server message is a text message"
    message: dict[str, Any] = orjson.loads(data)
    if message.get("type") == "error":
        oas.validate_websocket_error(message)
    else:
        oas.validate_event(message)
    return message


def turn(socket: ClientConnection) -> list[dict[str, Any]]:
    """The events of one turn, up to its terminal event, sequence numbers from 0."""
    events: list[dict[str, Any]] = []
    while True:
        event = receive(socket)
        assert event["type"] != "error", event
        events.append(event)
        if event["type"] in TERMINAL:
            break
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    return events


def error(socket: ClientConnection) -> dict[str, Any]:
    message = receive(socket)
    assert message["type"] == "error", message
    return message


def sse_types(gateway: Gateway, body: dict[str, Any]) -> list[str]:
    """The event types of the same request as a streamed POST."""
    types: list[str] = []
    with httpx.stream(
        "POST", f"{gateway.url}/v1/responses", json={**body, "stream": True}, timeout=30
    ) as reply:
        assert reply.status_code == 200, reply.read()
        for line in reply.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                types.append(orjson.loads(line[6:])["type"])
    return types


def upstream_text(sim: Simulator, provider: str) -> str:
    return orjson.dumps(sim.requests_for(label_for(provider))[-1].json).decode()


# -- one turn, every provider -------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_one_turn_on_every_provider_matches_the_sse_stream(
    provider: str, gateway: Gateway, ws: ClientConnection, sim: Simulator
) -> None:
    body = {"model": model_for(provider), "input": "Say hi to Ada", "instructions": "Be brief."}
    create(ws, **body)
    events = turn(ws)
    final = events[-1]
    assert final["type"] == "response.completed", final
    oas.validate_open_responses(final["response"])
    assert "Say hi to Ada" in final["response"]["output"][-1]["content"][0]["text"]
    # Stored like a POST's response, with the same events.
    rid = final["response"]["id"]
    stored = httpx.get(f"{gateway.url}/v1/responses/{rid}", timeout=10).json()
    assert stored["status"] == "completed" and stored["output"] == final["response"]["output"]
    assert [e["type"] for e in events] == sse_types(gateway, body)


def test_plain_get_without_an_upgrade_keeps_its_answer(gateway: Gateway) -> None:
    reply = httpx.get(f"{gateway.url}/v1/responses", timeout=10)
    assert reply.status_code == 405
    oas.validate_error_body(reply.json())


# -- chaining -----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["anthropic", "groq"])
def test_two_turns_chain_with_previous_response_id(
    provider: str, ws: ClientConnection, sim: Simulator
) -> None:
    create(ws, model=model_for(provider), input="My name is Ada.")
    first = turn(ws)
    rid = first[-1]["response"]["id"]
    create(ws, model=model_for(provider), input="What is my name?", previous_response_id=rid)
    second = turn(ws)
    assert second[-1]["type"] == "response.completed"
    assert second[-1]["response"]["previous_response_id"] == rid
    sent = upstream_text(sim, provider)
    assert "My name is Ada." in sent and "What is my name?" in sent


def test_store_false_chains_on_its_socket_only(
    gateway: Gateway, ws: ClientConnection, sim: Simulator
) -> None:
    model = model_for("anthropic")
    create(ws, model=model, input="Remember the word tulip.", store=False)
    rid = turn(ws)[-1]["response"]["id"]
    assert httpx.get(f"{gateway.url}/v1/responses/{rid}", timeout=10).status_code == 404
    create(ws, model=model, input="Which word?", store=False, previous_response_id=rid)
    second = turn(ws)[-1]
    assert second["type"] == "response.completed"
    assert "Remember the word tulip." in upstream_text(sim, "anthropic")
    # A stored turn on top of the unstored ones chains them too, on the same socket.
    create(ws, model=model, input="And again?", previous_response_id=second["response"]["id"])
    assert turn(ws)[-1]["type"] == "response.completed"
    sent = upstream_text(sim, "anthropic")
    assert "Remember the word tulip." in sent and "Which word?" in sent
    # Another socket (or HTTP) never sees them.
    with connect(ws_url(gateway), open_timeout=10) as other:
        create(other, model=model, input="Which word?", previous_response_id=rid)
        failure = error(other)
        assert failure["status"] == 404
        assert failure["error"]["code"] == "previous_response_not_found"
        assert failure["error"]["param"] == "previous_response_id"


# -- errors -------------------------------------------------------------------------------------


def test_errors_leave_the_socket_usable(ws: ClientConnection, sim: Simulator) -> None:
    ws.send("this is not JSON")
    assert error(ws)["error"]["code"] == "invalid_json"
    ws.send(orjson.dumps({"type": "response.cancel"}).decode())
    unknown = error(ws)
    assert unknown["status"] == 400 and unknown["error"]["code"] == "unknown_message_type"
    ws.send(orjson.dumps({"model": model_for("groq"), "input": "hi"}).decode())
    assert error(ws)["error"]["code"] == "unknown_message_type"
    ws.send(orjson.dumps({"type": "response.create", "model": "x", "stream": False}).decode())
    streamed = error(ws)
    assert streamed["status"] == 400 and streamed["error"]["param"] == "stream"
    create(ws, model="nowhere/none", input="hi")
    assert error(ws)["error"]["code"] == "model_not_found"
    # Not a valid create body (the spec's own schema refuses it too): the gateway's 400.
    bad = {"type": "response.create", "model": model_for("groq"), "input": [{"role": "user"}]}
    ws.send(orjson.dumps(bad).decode())
    invalid = error(ws)
    assert invalid["status"] == 400 and invalid["error"]["type"] == "invalid_request_error"
    sim.script(label_for("groq"), Error(503))
    create(ws, model=model_for("groq"), input="hi")
    upstream = error(ws)
    assert upstream["status"] == 503 and upstream["error"]["type"] == "server_error"
    create(ws, model=model_for("groq"), input="Still here?")
    assert turn(ws)[-1]["type"] == "response.completed"


def test_a_second_create_while_a_turn_runs_is_refused(ws: ClientConnection, sim: Simulator) -> None:
    sim.script(label_for(SLOW_PROVIDER), slow_stream(seconds=2.0))
    create(ws, model=model_for(SLOW_PROVIDER), input="slow")
    first = receive(ws)
    assert first["type"] == "response.created" and first["sequence_number"] == 0
    create(ws, model=model_for(SLOW_PROVIDER), input="too soon")
    events = [first]
    refused = None
    while True:
        message = receive(ws)
        if message["type"] == "error":
            refused = message
            continue
        events.append(message)
        if message["type"] in TERMINAL:
            break
    assert refused is not None
    assert refused["status"] == 409 and refused["error"]["code"] == "turn_in_progress"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    # Free again once the terminal event is out.
    create(ws, model=model_for(SLOW_PROVIDER), input="now")
    assert turn(ws)[-1]["type"] == "response.completed"


# -- a client that leaves, auth: gateways of their own -----------------------------------------


MASTER_KEY = "tm-master-key-websocket"
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture(scope="module")
def narrow(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One upstream connection, a short wait for it, and a master key."""
    folder = tmp_path_factory.mktemp("ws_narrow")
    config = folder / "turnout.yaml"
    config.write_text(
        f"store: sqlite:///{folder / 'turnout.db'}\n"
        "auth: {master_key: '${TURNOUT_MASTER_KEY}'}\n"
        "limits: {upstream_connections: 1, upstream_wait_s: 0.5}\n",
        encoding="utf-8",
    )
    env = gateway_env(provider_sim_session)
    env["TURNOUT_MASTER_KEY"] = MASTER_KEY
    gw = start_gateway(config, env, Path(folder / "gateway.log"))
    yield gw
    stop_gateway(gw)


def test_the_master_key_is_required_before_the_upgrade(narrow: Gateway, sim: Simulator) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(narrow), additional_headers=headers, open_timeout=10)
        assert refused.value.response.status_code == 401
        body = orjson.loads(refused.value.response.body or b"")
        oas.validate_error_body(body)
        assert body["error"]["code"] == "invalid_api_key"
    with connect(ws_url(narrow), additional_headers=AUTH, open_timeout=10) as socket:
        create(socket, model=model_for("groq"), input="Let me in")
        assert turn(socket)[-1]["type"] == "response.completed"


def test_a_client_that_leaves_mid_turn_releases_the_upstream(
    narrow: Gateway, sim: Simulator
) -> None:
    sim.script(label_for(SLOW_PROVIDER), slow_stream(seconds=10.0))
    with connect(ws_url(narrow), additional_headers=AUTH, open_timeout=10) as socket:
        create(socket, model=model_for(SLOW_PROVIDER), input="slow")
        started = [receive(socket) for _ in range(3)]
        assert started[0]["type"] == "response.created"
        rid = started[0]["response"]["id"]
    # The only upstream connection is free again at once (the stream had 8 s to go), and the
    # abandoned response is not stored, as with an SSE client that leaves.
    deadline = time.monotonic() + 3.0
    while True:
        reply = httpx.post(
            f"{narrow.url}/v1/responses",
            json={"model": model_for(SLOW_PROVIDER), "input": "next"},
            headers=AUTH,
            timeout=10,
        )
        if reply.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reply.status_code == 200, reply.text
    assert httpx.get(f"{narrow.url}/v1/responses/{rid}", headers=AUTH).status_code == 404


# -- the connection layer (server/connections.py) -----------------------------------------------


@pytest.fixture(scope="module")
def tight(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A short read deadline and room for two connections."""
    folder = tmp_path_factory.mktemp("ws_tight")
    config = folder / "turnout.yaml"
    config.write_text(
        "store: memory://\nserver: {read_timeout_s: 0.5}\nlimits: {max_connections: 2}\n",
        encoding="utf-8",
    )
    gw = start_gateway(config, gateway_env(provider_sim_session), Path(folder / "gateway.log"))
    yield gw
    stop_gateway(gw)


def test_the_read_deadline_does_not_cut_an_idle_socket(tight: Gateway, sim: Simulator) -> None:
    with connect(ws_url(tight), open_timeout=10) as socket:
        time.sleep(1.5)  # three read deadlines
        create(socket, model=model_for("groq"), input="Still open?")
        assert turn(socket)[-1]["type"] == "response.completed"
        time.sleep(1.0)
        create(socket, model=model_for("groq"), input="And now?")
        assert turn(socket)[-1]["type"] == "response.completed"


def test_an_open_socket_counts_against_the_connection_cap(tight: Gateway) -> None:
    def health() -> int:
        return httpx.get(f"{tight.url}/health", timeout=10).status_code

    with connect(ws_url(tight), open_timeout=10):
        assert health() == 200
        with connect(ws_url(tight), open_timeout=10):
            refused = httpx.get(f"{tight.url}/health", timeout=10)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "too_many_connections"
        # The closed socket's place is given back (the server sees the close a moment later).
        deadline = time.monotonic() + 3.0
        while health() != 200:
            assert time.monotonic() < deadline, "a closed socket still counts"
            time.sleep(0.05)
