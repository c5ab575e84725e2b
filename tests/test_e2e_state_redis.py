"""Two `turnout serve` replicas sharing one SQLite store file and one Redis (`state:`), called
over HTTP: a key's rpm limit holds across both, a deployment cooled down on A is skipped by B,
a budget spent on A refuses on B; and a replica whose Redis goes away answers keys with limits
with a 503 `state_unavailable` (and /health says so) while the rest keeps working."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Gateway, gateway_env, start_gateway, stop_gateway
from tests.keys import make_key
from tests.redis_state import RedisProxy, cleanup, redis_prefix, require_redis, state_url
from tests.simulators import Error, Simulator

__all__ = ["redis_prefix"]

MASTER = "sk-master-e2e-state-0123456789"
MODEL = "openai/test-model"


def _config(sim: str, db: Path, state: str) -> str:
    return (
        f"store: sqlite:///{db}\n"
        f"state: '{state}'\n"
        f"auth: {{master_key: {MASTER}}}\n"
        "router: {cooldown_s: 30, allowed_fails: 1, retries: 1, backoff_s: 0.01}\n"
        "pricing:\n"
        f"  {MODEL}: {{input_per_mtok: 1000000, output_per_mtok: 1000000}}\n"
        "models:\n"
        "  shared:\n"
        "    deployments:\n"
        f"      - {{model: groq/llama, api_base: '{sim}/rs1'}}\n"
        f"      - {{model: groq/llama, api_base: '{sim}/rs2', weight: 0}}\n"
    )


@pytest.fixture(scope="module")
def replicas(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway, Path]]:
    require_redis()
    prefix = f"turnout-test:e2e{time.monotonic_ns()}:"
    folder = tmp_path_factory.mktemp("replicas")
    db = folder / "turnout.db"
    env = gateway_env(provider_sim_session)
    gateways: list[Gateway] = []
    try:
        for name in ("a", "b"):
            config = folder / f"{name}.yaml"
            config.write_text(_config(provider_sim_session.url, db, state_url(prefix)))
            gateways.append(start_gateway(config, env, folder / f"{name}.log"))
        yield gateways[0], gateways[1], db
    finally:
        for gw in gateways:
            stop_gateway(gw)
        cleanup(prefix)


def post(gw: Gateway, body: dict[str, Any], secret: str = MASTER) -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}"}
    return httpx.post(f"{gw.url}/v1/responses", json=body, headers=headers, timeout=30)


def test_health_reports_the_state(replicas: tuple[Gateway, Gateway, Path]) -> None:
    a, _b, _db = replicas
    assert httpx.get(f"{a.url}/health").json() == {"status": "ok", "store": "ok", "state": "ok"}
    assert "state redis://127.0.0.1" in a.logs()  # the ready line names it


def test_a_key_rpm_holds_across_replicas(replicas: tuple[Gateway, Gateway, Path]) -> None:
    a, b, db = replicas
    _key, secret = make_key(db, rpm=3)
    body = {"model": MODEL, "input": "hi"}
    codes = [post(gw, body, secret) for gw in (a, b, a, b)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429], codes[-1].text
    assert [r.headers["x-ratelimit-remaining-requests"] for r in codes] == ["2", "1", "0", "0"]
    assert codes[3].json()["error"]["code"] == "rate_limit_exceeded"


def test_a_deployment_cooled_down_on_a_is_skipped_by_b(
    replicas: tuple[Gateway, Gateway, Path], sim: Simulator
) -> None:
    a, b, _db = replicas
    sim.script("rs1", Error(500))
    first = post(a, {"model": "shared", "input": "hi"})
    assert first.status_code == 200 and first.headers["x-turnout-attempts"] == "2", first.text
    time.sleep(0.6)  # the mirror's 250 ms, twice over
    health = httpx.get(f"{b.url}/health/deployments", headers={"authorization": f"Bearer {MASTER}"})
    (state,) = [d for d in health.json()["deployments"] if d["id"] == "shared#0"]
    assert state["state"] == "cooling_down" and state["recent_failures"] == 0
    for _ in range(3):
        reply = post(b, {"model": "shared", "input": "hi"})
        assert reply.status_code == 200 and reply.headers["x-turnout-attempts"] == "1"
    assert len(sim.requests_for("rs1")) == 1  # only A's failed attempt ever reached it
    assert len(sim.requests_for("rs2")) == 4


def test_a_budget_spent_on_a_refuses_on_b(replicas: tuple[Gateway, Gateway, Path]) -> None:
    a, b, db = replicas
    key, secret = make_key(db, max_budget_usd=1.0)
    body = {"model": MODEL, "input": "Say hi"}
    spent = post(a, body, secret)
    assert spent.status_code == 200 and spent.json()["usage"]["cost"] >= 1.0
    time.sleep(0.3)  # the settle is written after the reply
    refused = post(b, body, secret)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota" and f"key '{key.id}'" in error["message"]


def test_redis_going_away_is_a_503_for_keys_with_limits_only(
    provider_sim_session: Simulator, tmp_path: Path, redis_prefix: str
) -> None:
    proxy = RedisProxy()
    db = tmp_path / "turnout.db"
    config = tmp_path / "turnout.yaml"
    config.write_text(_config(provider_sim_session.url, db, proxy.url(redis_prefix)))
    gw = start_gateway(config, gateway_env(provider_sim_session), tmp_path / "gw.log")
    try:
        _key, limited = make_key(db, rpm=100)
        _key, plain = make_key(db)
        body = {"model": MODEL, "input": "hi"}
        assert post(gw, body, limited).status_code == 200
        proxy.stop()
        started = time.monotonic()
        down = post(gw, body, limited)
        assert time.monotonic() - started < 2.0
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "state_unavailable"
        assert down.headers["retry-after"] == "1"
        assert post(gw, body, plain).status_code == 200  # nothing to share: no Redis call
        assert post(gw, body).status_code == 200  # the master key
        health = httpx.get(f"{gw.url}/health")
        assert health.status_code == 503
        assert health.json() == {"status": "degraded", "store": "ok", "state": "unreachable"}
    finally:
        stop_gateway(gw)
        proxy.stop()
