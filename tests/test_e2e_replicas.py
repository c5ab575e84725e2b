"""Three `turnout serve` replicas A, B and C on different ports, sharing one PostgreSQL schema
(`store:`) and one Redis (`state:`), called with the official SDK (strict): a response created
on A is read, chained and listed on B and C; a background response running on A is cancelled
from B; a key's rpm limit holds across the three; a deployment cooled down on A is skipped by
B; and after `kill -9` of A while it runs a background response, another replica fails it
within the lease and a few seconds, and no completed response is lost.

The kill test stops A for good: it runs last in this module.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI, RateLimitError

from tests import postgres
from tests.conftest import Gateway, gateway_env, start_gateway, stop_gateway
from tests.redis_state import cleanup, require_redis, state_url
from tests.simulators import Error, Simulator, Slow
from turnout.server.stores import PostgresStore

MASTER = "sk-master-e2e-replicas-0123456789"
MODEL = "anthropic/claude-sonnet-4-5"
LEASE_S = 3
TERMINAL = {"completed", "failed", "incomplete", "cancelled"}
AS_MASTER = {"authorization": f"Bearer {MASTER}"}


@dataclass
class Replicas:
    a: Gateway
    b: Gateway
    c: Gateway
    completed: list[str] = field(default_factory=list)  # every response seen completed

    @property
    def all(self) -> tuple[Gateway, Gateway, Gateway]:
        return self.a, self.b, self.c


def _config(sim: str, store: str, state: str) -> str:
    return (
        f"store: '{store}'\n"
        f"state: '{state}'\n"
        f"auth: {{master_key: {MASTER}}}\n"
        f"background: {{lease_s: {LEASE_S}}}\n"
        "router: {cooldown_s: 30, allowed_fails: 1, retries: 1, backoff_s: 0.01}\n"
        "models:\n"
        "  shared:\n"
        "    deployments:\n"
        f"      - {{model: groq/llama, api_base: '{sim}/rr1'}}\n"
        f"      - {{model: groq/llama, api_base: '{sim}/rr2', weight: 0}}\n"
    )


@pytest.fixture(scope="module")
def replicas(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    require_redis()
    prefix = f"turnout-test:rep{uuid.uuid4().hex[:12]}:"
    store = postgres.schema_url(f"r_{uuid.uuid4().hex[:8]}")
    folder = tmp_path_factory.mktemp("replicas")
    env = gateway_env(provider_sim_session)
    gateways: list[Gateway] = []
    try:
        for name in ("a", "b", "c"):
            config = folder / f"{name}.yaml"
            config.write_text(_config(provider_sim_session.url, store, state_url(prefix)))
            gateways.append(start_gateway(config, env, folder / f"{name}.log"))
        yield Replicas(gateways[0], gateways[1], gateways[2])
    finally:
        for gw in gateways:
            if gw.process.poll() is None:
                stop_gateway(gw)
        cleanup(prefix)
        postgres.run_sync(PostgresStore.drop_scratch(store))


@pytest.fixture
def clients(replicas: Replicas) -> Iterator[tuple[OpenAI, OpenAI, OpenAI]]:
    with (
        replicas.a.client(MASTER) as a,
        replicas.b.client(MASTER) as b,
        replicas.c.client(MASTER) as c,
    ):
        yield a, b, c


def _status(gw: Gateway, response_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{gw.url}/v1/responses/{response_id}", headers=AS_MASTER, timeout=10)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _wait(gw: Gateway, response_id: str, timeout: float, until: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = _status(gw, response_id)
        if body["status"] in until or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_create_on_a_retrieve_chain_and_list_on_b_and_c(
    replicas: Replicas, clients: tuple[OpenAI, OpenAI, OpenAI], sim: Simulator
) -> None:
    a, b, c = clients
    first = a.responses.create(model=MODEL, input="My name is Ada.")
    assert first.status == "completed" and first.output_text == "My name is Ada."
    for other in (b, c):
        got = other.responses.retrieve(first.id)
        assert got.id == first.id and got.output_text == first.output_text
        assert got.status == "completed"
    second = b.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id
    )
    assert second.status == "completed"
    assert "My name is Ada." in orjson.dumps(sim.last.json).decode()  # B read A's turn
    third = c.responses.create(model=MODEL, input="Again?", previous_response_id=second.id)
    assert third.status == "completed"
    sent = orjson.dumps(sim.last.json).decode()  # C read the whole chain, A's turn and B's
    assert "My name is Ada." in sent and "What is my name?" in sent
    items = c.responses.input_items.list(third.id, order="asc")
    assert [i.type for i in items.data] == ["message"]
    assert a.responses.retrieve(third.id).previous_response_id == second.id
    replicas.completed += [first.id, second.id, third.id]


def test_a_background_response_on_a_cancelled_from_b_is_cancelled_on_c(
    replicas: Replicas, clients: tuple[OpenAI, OpenAI, OpenAI], sim: Simulator
) -> None:
    a, b, c = clients
    sim.script("anthropic", Slow(60))
    started = a.responses.create(model=MODEL, input="take your time", background=True)
    running = _wait(replicas.b, started.id, 10, {"in_progress", *TERMINAL})
    assert running["status"] == "in_progress", running
    begun = time.monotonic()
    cancelled = b.responses.cancel(started.id)
    assert cancelled.status == "cancelled"
    assert time.monotonic() - begun < LEASE_S + 2
    seen = c.responses.retrieve(started.id)
    assert seen.status == "cancelled" and seen.id == started.id
    assert a.responses.retrieve(started.id).status == "cancelled"  # A stopped it


def test_a_key_rpm_holds_across_three_replicas(
    replicas: Replicas, clients: tuple[OpenAI, OpenAI, OpenAI]
) -> None:
    made = httpx.post(
        f"{replicas.a.url}/admin/keys",
        headers=AS_MASTER,
        json={"name": "replicas-rpm", "rpm": 3},
        timeout=10,
    )
    assert made.status_code == 201, made.text
    secret = made.json()["key"]
    keyed = [gw.client(secret) for gw in replicas.all]
    try:
        for client in keyed:  # one each on A, B, C
            response = client.responses.create(model=MODEL, input="hi")
            assert response.status == "completed"
            replicas.completed.append(response.id)
        for client in keyed:  # the 4th (and later) within the minute, whichever replica
            with pytest.raises(RateLimitError) as refused:
                client.responses.create(model=MODEL, input="hi")
            assert refused.value.status_code == 429
            assert refused.value.code == "rate_limit_exceeded"
    finally:
        for client in keyed:
            client.close()


def test_a_deployment_cooled_down_on_a_is_skipped_by_b(
    replicas: Replicas, clients: tuple[OpenAI, OpenAI, OpenAI], sim: Simulator
) -> None:
    a, b, _c = clients
    sim.script("rr1", Error(500))
    first = a.responses.with_raw_response.create(model="shared", input="hi")
    assert first.headers["x-turnout-attempts"] == "2"  # rr1 failed, rr2 answered
    assert first.parse().status == "completed"
    time.sleep(0.6)  # the cooldown mirror's 250 ms, twice over
    health = httpx.get(f"{replicas.b.url}/health/deployments", headers=AS_MASTER, timeout=10)
    (state,) = [d for d in health.json()["deployments"] if d["id"] == "shared#0"]
    assert state["state"] == "cooling_down", state
    for _ in range(3):
        reply = b.responses.with_raw_response.create(model="shared", input="hi")
        assert reply.headers["x-turnout-attempts"] == "1"
        replicas.completed.append(reply.parse().id)
    assert len(sim.requests_for("rr1")) == 1  # only A's failed attempt ever reached it
    assert len(sim.requests_for("rr2")) == 4
    replicas.completed.append(first.parse().id)


def test_kill_9_of_a_fails_its_background_response_and_loses_no_completed_one(
    replicas: Replicas, clients: tuple[OpenAI, OpenAI, OpenAI], sim: Simulator
) -> None:
    a, b, c = clients
    for text in ("one", "two"):
        done = a.responses.create(model=MODEL, input=f"completed on A: {text}")
        assert done.status == "completed"
        replicas.completed.append(done.id)
    sim.script("anthropic", Slow(60))
    started = a.responses.create(model=MODEL, input="still running", background=True)
    running = _wait(replicas.b, started.id, 10, {"in_progress", *TERMINAL})
    assert running["status"] == "in_progress", running
    replicas.a.process.send_signal(signal.SIGKILL)
    replicas.a.process.wait()
    killed = time.monotonic()
    failed = _wait(replicas.b, started.id, LEASE_S + 10, TERMINAL)
    took = time.monotonic() - killed
    assert failed["status"] == "failed", failed
    assert took <= LEASE_S + 5, took
    assert failed["error"]["code"] == "server_error"
    assert "replica" in failed["error"]["message"] and "stopped" in failed["error"]["message"]
    on_c = c.responses.retrieve(started.id)
    assert on_c.status == "failed" and on_c.error is not None
    assert on_c.error.message == failed["error"]["message"]
    assert len(replicas.completed) >= 12
    for rid in replicas.completed:  # everything completed before the kill is still there
        for client in (b, c):
            kept = client.responses.retrieve(rid)
            assert kept.status == "completed" and kept.output_text, rid
