"""The router end to end: a real `turnout serve` in front of fault-injecting simulators.

Each deployment gets its own `api_base` (`{sim}/<label>`), so each has its own reply queue and
request log in the simulator. Every test uses its own aliases and labels: the router's state
(cooldowns, rate windows) lives as long as the gateway process, which the module shares.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from openai import OpenAI

from tests import oas
from tests.conftest import Gateway, gateway_env, start_gateway, stop_gateway
from tests.simulators import Error, Hang, MidStreamError, Simulator, Thinking

ANTHROPIC = "anthropic/claude-sonnet-4-5"
GEMINI = "gemini/gemini-2.5-flash"


def _deps(*items: str) -> str:
    return "\n".join(f"      - {{{item}}}" for item in items)


def _closed_port() -> str:
    """A loopback URL where nothing listens: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


DEAD = _closed_port()


def _config(sim: str, db: Path) -> str:
    def alias(name: str, deps: list[str], extra: str = "") -> str:
        return f"  {name}:\n    deployments:\n{_deps(*deps)}\n{extra}"

    return (
        f"store: sqlite:///{db}\n"
        f"logging:\n  - {{type: jsonl, path: '{db.parent / 'requests.jsonl'}'}}\n"
        "router: {strategy: weighted, retries: 1, timeout_s: 30, cooldown_s: 1, "
        "allowed_fails: 3, backoff_s: 0.01}\n"
        "models:\n"
        + alias("chain-a", [f"model: {ANTHROPIC}, api_base: '{sim}/ca'"],
                "    fallbacks: [chain-b]\n")
        + alias("chain-b", [f"model: openai/gpt-4.1, api_base: '{sim}/cb/v1'"],
                "    fallbacks: [chain-c]\n")
        + alias("chain-c", [f"model: groq/llama-3.3-70b, api_base: '{sim}/cc'"])
        + alias("retry", [f"model: {ANTHROPIC}, api_base: '{sim}/rt'"])
        + alias("cool", [f"model: groq/llama, api_base: '{sim}/co'",
                         f"model: groq/llama, api_base: '{sim}/co2', weight: 0"])
        + alias("solo", [f"model: groq/llama, api_base: '{sim}/so'"])
        + alias("drops", [f"model: groq/llama, api_base: '{sim}/dp'"],
                "    unsupported_tools: drop\n")
        + alias("refuses", [f"model: groq/llama, api_base: '{sim}/rf'"])
        + alias("gdrops", [f"model: {GEMINI}, api_base: '{sim}/gd'"],
                "    unsupported_tools: drop\n")
        + alias("ra", [f"model: groq/llama, api_base: '{sim}/r1'",
                       f"model: groq/llama, api_base: '{DEAD}', weight: 0"])
        + alias("ctx", [f"model: {ANTHROPIC}, api_base: '{sim}/w1'"],
                "    fallbacks: [chain-c]\n    context_window_fallbacks: [long]\n")
        + alias("long", [f"model: {GEMINI}, api_base: '{sim}/w2'"])
        + alias("anth", [f"model: {ANTHROPIC}, api_base: '{sim}/x1'"], "    fallbacks: [chat]\n")
        + alias("chat", [f"model: openai_chat/gpt-4o-mini, api_base: '{sim}/x2/v1'"])
        + alias("sf", [f"model: {ANTHROPIC}, api_base: '{sim}/s1'"], "    fallbacks: [sf2]\n")
        + alias("sf2", [f"model: groq/llama, api_base: '{sim}/s2'"])
        + alias("slow", [f"model: groq/llama, api_base: '{sim}/h1', timeout_s: 0.5",
                         f"model: groq/llama, api_base: '{sim}/h2', weight: 0"])
        + alias("aff", [f"model: {ANTHROPIC}, api_base: '{sim}/t1'",
                        f"model: {ANTHROPIC}, api_base: '{sim}/t2'",
                        f"model: {GEMINI}, api_base: '{sim}/t3', weight: 0"])
        + alias("lim", [f"model: groq/llama, api_base: '{sim}/l1', rpm: 1"])
        + alias("many", [f"model: groq/llama, api_base: '{sim}/m1'",
                         f"model: mistral/small, api_base: '{sim}/m2'",
                         f"model: {ANTHROPIC}, api_base: '{sim}/m3'"])
    )  # fmt: skip


@pytest.fixture(scope="module")
def router_gw(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Path]]:
    folder = tmp_path_factory.mktemp("router")
    db = folder / "turnout.db"
    config = folder / "turnout.yaml"
    config.write_text(_config(provider_sim_session.url, db), encoding="utf-8")
    gw = start_gateway(config, gateway_env(provider_sim_session), folder / "gateway.log")
    yield gw, db
    stop_gateway(gw)


@pytest.fixture
def gw(router_gw: tuple[Gateway, Path]) -> Gateway:
    return router_gw[0]


@pytest.fixture
def client(gw: Gateway) -> Iterator[OpenAI]:
    with gw.client() as c:
        yield c


def post(gw: Gateway, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gw.url}/v1/responses", json=body, timeout=30)


def stored(db: Path, response_id: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The record's deployment and attempt trail, read from the gateway's SQLite file."""
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT deployment, attempts FROM responses WHERE id = ?", (response_id,)
        ).fetchone()
    assert row is not None, response_id
    return row[0], orjson.loads(row[1])


def labels(sim: Simulator, *names: str) -> dict[str, int]:
    return {name: len(sim.requests_for(name)) for name in names}


def test_fallback_chain_a_b_c_ends_on_c_with_each_deployments_own_mapping(
    router_gw: tuple[Gateway, Path], sim: Simulator
) -> None:
    gw, db = router_gw
    sim.script("ca", Error(500), Error(500))
    retry_now = {"retry-after": "0", "retry-after-ms": "0"}
    sim.script("cb", Error(429, headers=retry_now), Error(429, headers=retry_now))
    reply = post(gw, {"model": "chain-a", "input": "ride it out"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    oas.validate_response(body)
    assert body["output"]
    assert reply.headers["x-turnout-deployment"] == "groq/llama-3.3-70b"
    assert reply.headers["x-turnout-attempts"] == "5"
    assert labels(sim, "ca", "cb", "cc") == {"ca": 2, "cb": 2, "cc": 1}
    # Anchor 11: every attempt used its own deployment's endpoint and dialect.
    assert {r.dialect for r in sim.requests_for("ca")} == {"anthropic"}
    assert all(r.path.endswith("/v1/responses") for r in sim.requests_for("cb"))
    (chat,) = sim.requests_for("cc")
    assert chat.dialect == "chat" and chat.path.endswith("/chat/completions")
    assert chat.json["model"] == "llama-3.3-70b"
    deployment, attempts = stored(db, body["id"])
    assert deployment == "groq/llama-3.3-70b"
    assert [(a["deployment_id"], a["status"], a["ok"]) for a in attempts] == [
        ("chain-a#0", 502, False), ("chain-a#0", 502, False),
        ("chain-b#0", 429, False), ("chain-b#0", 429, False), ("chain-c#0", 200, True),
    ]  # fmt: skip
    assert all(isinstance(a["latency_ms"], float) for a in attempts)
    text = orjson.dumps(attempts).decode()
    assert "secret" not in text and sim.url not in text


def test_retries_then_success(gw: Gateway, sim: Simulator, client: OpenAI) -> None:
    sim.script("rt", Error(529))
    raw = client.responses.with_raw_response.create(model="retry", input="again")
    assert raw.headers["x-turnout-attempts"] == "2"
    assert raw.headers["x-turnout-deployment"] == ANTHROPIC
    assert raw.parse().output_text == "again"
    assert len(sim.requests_for("rt")) == 2


def test_non_retryable_errors_are_not_retried(gw: Gateway, sim: Simulator) -> None:
    sim.script("rt", Error(401))
    reply = post(gw, {"model": "retry", "input": "hi"})
    assert reply.status_code == 401
    oas.validate_error_body(reply.json())
    assert len(sim.requests_for("rt")) == 1


def test_a_cooled_down_deployment_recovers(gw: Gateway, sim: Simulator) -> None:
    sim.script("co", *[Error(500)] * 3)
    for _ in range(3):  # co fails once per request; the standby co2 answers each time
        reply = post(gw, {"model": "cool", "input": "hi"})
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-turnout-attempts"] == "2"
    health = httpx.get(f"{gw.url}/health/deployments").json()
    (state,) = [d for d in health["deployments"] if d["id"] == "cool#0"]
    assert state["state"] == "cooling_down" and 0 < state["cooldown_remaining_s"] <= 1
    assert state["model"] == "groq/llama" and "api_base" not in state
    fast = post(gw, {"model": "cool", "input": "hi"})
    assert fast.status_code == 200 and fast.headers["x-turnout-attempts"] == "1"
    assert labels(sim, "co", "co2") == {"co": 3, "co2": 4}  # the cooling one was left alone
    time.sleep(1.1)
    back = post(gw, {"model": "cool", "input": "back again"})
    assert back.status_code == 200, back.text
    assert labels(sim, "co", "co2") == {"co": 4, "co2": 4}
    health = httpx.get(f"{gw.url}/health/deployments").json()
    (state,) = [d for d in health["deployments"] if d["id"] == "cool#0"]
    assert state["state"] == "healthy" and state["failures_total"] == 3
    assert state["latency_ema_ms"] is not None and state["in_flight"] == 0


def test_upstream_500s_never_take_the_only_deployment_of_an_alias_out(
    router_gw: tuple[Gateway, Path], sim: Simulator
) -> None:
    """Issue 12: before, the third failure put `solo` into cooldown and the next request from
    any client was a 503 no_healthy_deployment that never reached the upstream."""
    gw, db = router_gw
    sim.script("so", *[Error(500)] * 4)
    for _ in range(2):
        failed = post(gw, {"model": "solo", "input": "hi"})
        assert failed.status_code == 502, failed.text
        # The error reply names what was tried; the telemetry record keeps the trail.
        assert failed.headers["x-turnout-attempts"] == "2"
        assert failed.headers["x-turnout-deployment"] == "groq/llama"
    served = post(gw, {"model": "solo", "input": "still here"})
    assert served.status_code == 200, served.text
    assert len(sim.requests_for("so")) == 5
    record = _last_log_record(db.parent / "requests.jsonl", status="error", model="solo")
    assert record["provider"] == "groq" and record["attempt_count"] == 2
    assert [(a["deployment_id"], a["status"]) for a in record["attempts"]] == [
        ("solo#0", 502),
        ("solo#0", 502),
    ]


def _last_log_record(path: Path, **fields: Any) -> dict[str, Any]:
    for _ in range(200):
        if path.exists():
            for line in reversed(path.read_text().splitlines()):
                record = orjson.loads(line)
                if all(record.get(k) == v for k, v in fields.items()):
                    return dict(record)
        time.sleep(0.01)
    raise AssertionError(f"no log record with {fields}")


def test_a_429_is_not_hidden_by_a_dead_deployment_and_its_retry_after_is_honoured(
    gw: Gateway, sim: Simulator
) -> None:
    """Issue 12: [r1 answers 429 Retry-After 1, the other refuses connections]. Before, the
    request ended in 0.1 s with 502 'Could not reach the upstream provider', hiding r1's 429."""
    sim.script("r1", Error(429, headers={"retry-after": "1", "retry-after-ms": "1000"}))
    first = post(gw, {"model": "ra", "input": "hi"})
    assert first.status_code == 429, first.text  # r1's own answer, with its Retry-After
    assert first.headers["retry-after"] == "1"
    oas.validate_error_body(first.json())
    assert first.headers["x-turnout-attempts"] == "2"
    # The dead deployment was ejected at once: the next request waits out r1's Retry-After
    # (within the deadline) and gets r1's answer; it never calls the dead one again.
    started = time.monotonic()
    second = post(gw, {"model": "ra", "input": "after the wait"})
    assert second.status_code == 200, second.text
    assert second.json()["output"][0]["content"][0]["text"] == "after the wait"
    assert second.headers["x-turnout-attempts"] == "1"
    assert 0.5 <= time.monotonic() - started < 5
    health = httpx.get(f"{gw.url}/health/deployments").json()
    (dead,) = [d for d in health["deployments"] if d["id"] == "ra#1"]
    assert dead["failures_total"] == 1 and dead["requests_total"] == 1  # never called again


def test_context_window_fallback(router_gw: tuple[Gateway, Path], sim: Simulator) -> None:
    gw, db = router_gw
    too_long = {
        "type": "error",
        "error": {"type": "invalid_request_error",
                  "message": "prompt is too long: 215000 tokens > 200000 maximum"},
    }  # fmt: skip
    sim.script("w1", Error(400, native_body=too_long))
    reply = post(gw, {"model": "ctx", "input": "a very long prompt"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-turnout-deployment"] == GEMINI
    assert labels(sim, "w1", "w2", "cc") == {"w1": 1, "w2": 1, "cc": 0}
    _, attempts = stored(db, reply.json()["id"])
    assert [a["deployment_id"] for a in attempts] == ["ctx#0", "long#0"]


def test_anthropic_fallback_to_a_chat_completions_deployment_uses_the_chat_mapping(
    gw: Gateway, sim: Simulator, client: OpenAI
) -> None:
    sim.script("x1", Error(500), Error(500))
    response = client.responses.create(
        model="anth", input="hello", instructions="Be brief.", max_output_tokens=64
    )
    assert response.output_text == "hello"
    (call,) = sim.requests_for("x2")
    assert call.dialect == "chat" and call.path == "/x2/v1/chat/completions"
    assert call.json["model"] == "gpt-4o-mini"
    assert call.json["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "max_tokens" not in call.json or "max_completion_tokens" in call.json


def _sse(reply: httpx.Response) -> list[dict[str, Any]]:
    lines = [x for x in reply.iter_lines() if x.startswith("data: ") and x != "data: [DONE]"]
    return [orjson.loads(x[6:]) for x in lines]


def test_streaming_fails_over_before_the_first_byte(gw: Gateway, sim: Simulator) -> None:
    sim.script("s1", Error(503), Error(503))
    body = {"model": "sf", "input": "stream me", "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/responses", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["x-turnout-deployment"] == "groq/llama"
        assert reply.headers["x-turnout-attempts"] == "3"
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = _sse(reply)
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert labels(sim, "s1", "s2") == {"s1": 2, "s2": 1}


def test_a_failure_after_the_first_byte_is_response_failed_not_a_failover(
    gw: Gateway, sim: Simulator
) -> None:
    sim.script("s1", MidStreamError(after_chunks=3, text="half an answer"))
    body = {"model": "sf", "input": "stream me", "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/responses", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["x-turnout-deployment"] == ANTHROPIC
        events = _sse(reply)
    assert events[-1]["type"] == "response.failed"
    assert labels(sim, "s1", "s2") == {"s1": 1, "s2": 0}


def test_a_hanging_deployment_times_out_and_fails_over(gw: Gateway, sim: Simulator) -> None:
    sim.script("h1", Hang())
    started = time.monotonic()
    reply = post(gw, {"model": "slow", "input": "patience"})
    assert reply.status_code == 200, reply.text
    assert time.monotonic() - started < 5
    assert reply.headers["x-turnout-attempts"] == "2"
    assert labels(sim, "h1", "h2") == {"h1": 1, "h2": 1}


def test_rpm_limit_gives_429_with_retry_after(gw: Gateway, sim: Simulator) -> None:
    assert post(gw, {"model": "lim", "input": "one"}).status_code == 200
    reply = post(gw, {"model": "lim", "input": "two"})
    assert reply.status_code == 429
    error = reply.json()["error"]
    oas.validate_error_body(reply.json())
    assert error["code"] == "rate_limit_exceeded"
    assert 50 <= int(reply.headers["retry-after"]) <= 60
    assert len(sim.requests_for("l1")) == 1


def test_conversation_with_thinking_signatures_sticks_to_its_deployment(
    gw: Gateway, sim: Simulator, client: OpenAI
) -> None:
    for label in ("t1", "t2"):
        sim.script(label, Thinking(thought="Let me think.", signature="sig-abc", text="Seven."))
    first = client.responses.create(model="aff", input="How many apples?")
    assert first.output[0].type == "reasoning"
    (home,) = [x for x in ("t1", "t2") if sim.requests_for(x)]
    other = "t2" if home == "t1" else "t1"
    sim.reset()
    previous = first.id
    for turn in range(6):
        reply = client.responses.create(
            model="aff", input=f"And now {turn}?", previous_response_id=previous
        )
        previous = reply.id
    assert labels(sim, home, other, "t3") == {home: 6, other: 0, "t3": 0}
    sent = orjson.dumps(sim.requests_for(home)[-1].json).decode()
    assert "sig-abc" in sent  # the signature went back to the provider that minted it

    # The home deployment fails: the other Anthropic deployment reads the same signatures.
    sim.reset()
    sim.script(home, Error(500))
    client.responses.create(model="aff", input="Still there?", previous_response_id=first.id)
    assert labels(sim, home, other, "t3") == {home: 1, other: 1, "t3": 0}
    assert "sig-abc" in orjson.dumps(sim.requests_for(other)[0].json).decode()

    # Both Anthropic deployments fail: Gemini gets the visible history without the signature.
    sim.reset()
    sim.script(home, Error(500))
    sim.script(other, Error(500))
    last = client.responses.create(model="aff", input="Anyone?", previous_response_id=first.id)
    assert last.status == "completed"
    (call,) = sim.requests_for("t3")
    sent = orjson.dumps(call.json).decode()
    assert "sig-abc" not in sent and "How many apples?" in sent and "Seven." in sent


def test_models_list_and_retrieve(
    router_gw: tuple[Gateway, Path], gw: Gateway, client: OpenAI
) -> None:
    config = yaml.safe_load((router_gw[1].parent / "turnout.yaml").read_text(encoding="utf-8"))
    models = client.models.list()
    ids = [m.id for m in models.data]
    # With a config, exactly its aliases (what a model picker can offer), in config order.
    assert ids[:3] == ["chain-a", "chain-b", "chain-c"]
    assert ids == list(config["models"])
    assert not any(i.endswith("/*") for i in ids)
    owners = {m.id: m.owned_by for m in models.data}
    assert owners["chain-b"] == "openai" and owners["long"] == "gemini"
    raw = httpx.get(f"{gw.url}/v1/models").json()
    assert raw["object"] == "list"
    assert all(set(m) == {"id", "object", "created", "owned_by"} for m in raw["data"])
    assert client.models.retrieve("ctx").owned_by == "anthropic"
    assert client.models.retrieve("anthropic/claude-sonnet-4-5").owned_by == "anthropic"
    assert httpx.get(f"{gw.url}/v1/models/nope").status_code == 404


def test_200_concurrent_requests_over_three_deployments_one_failing(
    router_gw: tuple[Gateway, Path], sim: Simulator
) -> None:
    gw, db = router_gw
    sim.script("m2", *[Error(500)] * 400)

    async def one(http: httpx.AsyncClient, i: int) -> tuple[int, dict[str, Any]]:
        body = {"model": "many", "input": f"request number {i}", "stream": i % 2 == 1}
        if i % 2 == 0:
            reply = await http.post("/v1/responses", json=body)
            assert reply.status_code == 200, reply.text
            return i, reply.json()
        async with http.stream("POST", "/v1/responses", json=body) as reply:
            assert reply.status_code == 200
            lines = [line async for line in reply.aiter_lines()]
        events = [orjson.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert events[-1]["type"] == "response.completed"
        return i, events[-1]["response"]

    async def main() -> list[tuple[int, dict[str, Any]]]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=gw.url, timeout=60, limits=limits) as http:
            return await asyncio.gather(*(one(http, i) for i in range(200)))

    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    results = asyncio.run(main())
    ids = [r["id"] for _, r in results]
    assert len(set(ids)) == 200
    for i, response in results:
        assert response["status"] == "completed"
        text = response["output"][-1]["content"][0]["text"]
        assert text == f"request number {i}"  # nobody got someone else's answer
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        for i, response in results:
            got = http.get(f"/v1/responses/{response['id']}")
            assert got.status_code == 200
            assert got.json()["output"] == response["output"], i
    with sqlite3.connect(db) as conn:
        after = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    assert after - before == 200  # each stored exactly once
    served = labels(sim, "m1", "m2", "m3")
    assert served["m1"] + served["m3"] == 200 and served["m2"] > 0
    health = httpx.get(f"{gw.url}/health/deployments").json()["deployments"]
    assert all(d["in_flight"] == 0 for d in health if d["alias"] == "many")


def test_an_alias_that_opts_in_drops_the_hosted_tools_its_provider_lacks(
    gw: Gateway, sim: Simulator
) -> None:
    """Issue 13 item 5: web_search on a Chat Completions provider is a 400 naming tools[1],
    unless the alias says unsupported_tools: drop; then it is left out and the reply says so."""
    tools = [
        {"type": "function", "name": "f", "parameters": {"type": "object"}},
        {"type": "web_search"},
    ]
    refused = post(gw, {"model": "refuses", "input": "hi", "tools": tools})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "tools[1]"
    assert sim.requests_for("rf") == []
    served = post(gw, {"model": "drops", "input": "look it up", "tools": tools})
    assert served.status_code == 200, served.text
    assert served.headers["x-turnout-dropped-tools"] == "web_search"
    (sent,) = sim.requests_for("dp")
    assert [t["function"]["name"] for t in sent.json["tools"]] == ["f"]
    plain = post(gw, {"model": "drops", "input": "no tools"})
    assert plain.status_code == 200 and "x-turnout-dropped-tools" not in plain.headers
    # Gemini searches, but not beside function tools: its refusal names tools[1] too, so the
    # search is left out there and the functions go up.
    gemini = post(gw, {"model": "gdrops", "input": "look it up", "tools": tools})
    assert gemini.status_code == 200, gemini.text
    assert gemini.headers["x-turnout-dropped-tools"] == "web_search"
    (sent,) = sim.requests_for("gd")
    assert [list(t) for t in sent.json["tools"]] == [["functionDeclarations"]]
    searched = post(gw, {"model": "gdrops", "input": "look it up", "tools": tools[1:]})
    assert searched.status_code == 200 and "x-turnout-dropped-tools" not in searched.headers
    assert sim.requests_for("gd")[-1].json["tools"] == [{"googleSearch": {}}]
