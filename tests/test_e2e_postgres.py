"""`turnout serve` on a PostgreSQL store, end to end: official SDK (strict) → two gateway
processes sharing one schema on the test server (tests/postgres.py) → simulators.

Create, retrieve, chain, input items, stream replay, delete, conversations, background and
spend, each answered from PostgreSQL; a response created on one process is read and chained on
the other. The URL carries a password (the test server trusts any): it never shows in the logs,
the ready line or /health.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import NotFoundError, OpenAI

from tests import oas, postgres
from tests.conftest import Gateway, gateway_env, start_gateway, stop_gateway
from tests.simulators import Simulator
from turnout.server.stores import PostgresStore

PASSWORD = "pg-e2e-hunter2-secret"
MODEL = "anthropic/claude-sonnet-4-5"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    url = postgres.schema_url(f"e2e_{uuid.uuid4().hex[:8]}")
    try:
        yield url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
    finally:
        postgres.run_sync(PostgresStore.drop_scratch(url))


def _start(folder: Path, url: str, sim: Simulator) -> Gateway:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "turnout.yaml"
    config.write_text(f"store: {url}\n")
    return start_gateway(config, gateway_env(sim), folder / "gateway.log")


@pytest.fixture(scope="module")
def replicas(
    pg_url: str, provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    folder = tmp_path_factory.mktemp("pg-gateways")
    a = _start(folder / "a", pg_url, provider_sim_session)
    try:
        b = _start(folder / "b", pg_url, provider_sim_session)
    except BaseException:
        stop_gateway(a)
        raise
    yield a, b
    stop_gateway(a)
    stop_gateway(b)
    for gw in (a, b):
        assert PASSWORD not in gw.logs()


@pytest.fixture
def clients(replicas: tuple[Gateway, Gateway]) -> Iterator[tuple[OpenAI, OpenAI]]:
    with replicas[0].client() as a, replicas[1].client() as b:
        yield a, b


def _poll(client: OpenAI, response_id: str) -> Any:
    deadline = time.monotonic() + 20
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress") or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


def test_the_password_shows_nowhere(replicas: tuple[Gateway, Gateway]) -> None:
    for gw in replicas:
        health = httpx.get(f"{gw.url}/health")
        assert health.json() == {"status": "ok", "store": "ok"}
        assert PASSWORD not in health.text
        logs = gw.logs()
        assert "store postgresql://postgres:***@127.0.0.1" in logs  # the ready line
        assert PASSWORD not in logs


def test_create_retrieve_chain_and_items_across_two_processes(
    replicas: tuple[Gateway, Gateway], clients: tuple[OpenAI, OpenAI], sim: Simulator
) -> None:
    a, b = clients
    first = a.responses.create(model=MODEL, input="My name is Ada.")
    assert first.output_text == "My name is Ada."
    got = b.responses.retrieve(first.id)  # written by A, read by B
    assert got.id == first.id and got.output_text == first.output_text
    second = b.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id
    )
    # B sent A's turn as history, read from PostgreSQL.
    assert "My name is Ada." in orjson.dumps(sim.last.json).decode()
    third = a.responses.create(model=MODEL, input="Again?", previous_response_id=second.id)
    raw = httpx.get(f"{replicas[0].url}/v1/responses/{third.id}/input_items?order=asc")
    oas.validate_item_list(raw.json())
    items = a.responses.input_items.list(third.id, order="asc")
    assert [i.type for i in items.data] == ["message"]


def test_stream_replay(replicas: tuple[Gateway, Gateway], clients: tuple[OpenAI, OpenAI]) -> None:
    a, _ = clients
    with a.responses.stream(model=MODEL, input="count to three") as stream:
        final = stream.get_final_response()
    url = f"{replicas[1].url}/v1/responses/{final.id}"
    whole = httpx.get(url, params={"stream": "true"}).text
    numbers = [orjson.loads(x[6:])["sequence_number"] for x in whole.splitlines()
               if x.startswith("data: {")]  # fmt: skip
    assert numbers == list(range(len(numbers))) and len(numbers) > 3
    tail = httpx.get(url, params={"stream": "true", "starting_after": "2"}).text
    assert '"sequence_number":3' in tail.replace(" ", "")


def test_delete_leaves_spend_and_breaks_the_chain(
    replicas: tuple[Gateway, Gateway], clients: tuple[OpenAI, OpenAI]
) -> None:
    a, b = clients
    before = httpx.get(f"{replicas[0].url}/v1/spend").json()["total"]["requests"]
    gone = a.responses.create(model=MODEL, input="forget me", metadata={"team": "e2e"})
    b.responses.delete(gone.id)
    with pytest.raises(NotFoundError):
        a.responses.retrieve(gone.id)
    with pytest.raises(NotFoundError):
        b.responses.create(model=MODEL, input="next", previous_response_id=gone.id)
    spend = httpx.get(f"{replicas[1].url}/v1/spend", params={"group_by": "metadata:team"}).json()
    assert spend["total"]["requests"] == before + 1  # the tombstone still counts
    assert {row["key"]: row["requests"] for row in spend["data"]}["e2e"] == 1


def test_conversation_turns_from_both_processes(
    replicas: tuple[Gateway, Gateway], clients: tuple[OpenAI, OpenAI]
) -> None:
    a, b = clients
    conv = a.conversations.create(
        items=[{"type": "message", "role": "user", "content": "I like tea."}]
    )
    b.responses.create(model=MODEL, input="What do I like?", conversation=conv.id)
    a.responses.create(model=MODEL, input="And again?", conversation=conv.id)
    items = b.conversations.items.list(conv.id, order="asc")
    assert [i.type for i in items.data] == ["message"] * 5
    b.conversations.delete(conv.id)
    with pytest.raises(NotFoundError):
        a.conversations.retrieve(conv.id)


def test_background_response(
    replicas: tuple[Gateway, Gateway], clients: tuple[OpenAI, OpenAI]
) -> None:
    a, b = clients
    started = a.responses.create(model=MODEL, input="in the background", background=True)
    done = _poll(a, started.id)
    assert done.status == "completed" and done.output_text == "in the background"
    # A answers from its live state, which turns terminal just before the record is written:
    # B (reading the store) may see the stored in-progress record for a moment longer.
    stored = _poll(b, started.id)
    assert stored.status == "completed" and stored.output_text == "in the background"
