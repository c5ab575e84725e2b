"""Background responses end to end (anchor-failures 14): `background: true` on any provider
answers "queued" at once, is polled to its end with GET, streams and resumes with
`starting_after`, can be cancelled, and is priced like any other response.

Official SDK (strict) → `turnout serve` → provider simulators; raw bodies and events are
validated against OpenAI's schema.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import BadRequestError, OpenAI

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
from tests.simulators import Error, Hang, Simulator, Slow

TERMINAL = {"completed", "failed", "incomplete", "cancelled"}


def poll(client: OpenAI, response_id: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        raw = client.responses.with_raw_response.retrieve(response_id)
        oas.validate_response(raw.http_response.json())
        response = raw.parse()
        if response.status in TERMINAL or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


def sse(reply: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for line in reply.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            event = orjson.loads(line[6:])
            oas.validate_event(event)
            events.append(event)
    return events


@pytest.mark.parametrize("provider", PROVIDERS)
def test_background_is_queued_then_polled_to_completion_and_priced(
    provider: str, client: OpenAI, sim: Simulator
) -> None:
    raw = client.responses.with_raw_response.create(
        model=model_for(provider), input="Say hi to Ada", background=True
    )
    body = raw.http_response.json()
    oas.validate_response(body)
    assert body["status"] in ("queued", "in_progress") and body["background"] is True
    assert body["output"] == [] and body["usage"] is None

    done = poll(client, body["id"])
    assert done.status == "completed", done.error
    assert done.output_text == "Say hi to Ada"
    assert done.background is True and done.id == body["id"]
    assert sim.last.provider == label_for(provider)
    usage = done.usage.model_dump() if done.usage else {}
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    items = client.responses.input_items.list(done.id)
    assert [i.type for i in items.data] == ["message"]


def test_background_stream_has_the_queued_opening_and_resumes_from_any_point(
    client: OpenAI, gateway: Gateway
) -> None:
    body = {"model": "anthropic/claude-sonnet-4-5", "input": "Stream in the background"}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/responses",
        json={**body, "stream": True, "background": True}, timeout=30,
    ) as reply:  # fmt: skip
        assert reply.status_code == 200
        events = sse(reply)
    types = [e["type"] for e in events]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert events[0]["response"]["status"] == "queued"
    assert types[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    rid = events[0]["response"]["id"]

    # The SDK's resume helper retrieves with stream=true from #0 and filters locally.
    with client.responses.stream(response_id=rid, starting_after=3) as resumed:
        final = resumed.get_final_response()
    assert final.output_text == "Stream in the background" and final.status == "completed"

    tail = httpx.get(f"{gateway.url}/v1/responses/{rid}?stream=true&starting_after=3")
    assert [e["sequence_number"] for e in sse(tail)] == list(range(4, len(events)))

    # Priced like any response: the cost is in the stored body and in the terminal event.
    stored = httpx.get(f"{gateway.url}/v1/responses/{rid}").json()
    assert stored["usage"]["cost"] > 0
    assert stored == events[-1]["response"]


def test_a_client_that_leaves_a_background_stream_does_not_stop_the_work(
    client: OpenAI, gateway: Gateway, sim: Simulator
) -> None:
    sim.script("gemini", Slow(0.6))
    body = {"model": "gemini/gemini-2.5-flash", "input": "keep going", "stream": True}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/responses", json={**body, "background": True}, timeout=30
    ) as reply:
        lines = reply.iter_lines()
        assert next(lines) == "event: response.created"
        created = orjson.loads(next(lines)[6:])  # then the client hangs up
    rid = created["response"]["id"]
    # Another connection follows the live response: it ends with every event, from #0.
    with client.responses.stream(response_id=rid) as resumed:
        final = resumed.get_final_response()
    assert final.status == "completed" and final.output_text == "keep going"
    replay = sse(httpx.get(f"{gateway.url}/v1/responses/{rid}?stream=true"))
    assert replay[0]["type"] == "response.created" and replay[-1]["type"] == "response.completed"


def test_cancel_stops_a_running_background_response(
    client: OpenAI, gateway: Gateway, sim: Simulator
) -> None:
    sim.script("anthropic", Slow(5))
    queued = client.responses.create(
        model="anthropic/claude-sonnet-4-5", input="never mind", background=True
    )
    started = time.monotonic()
    raw = client.responses.with_raw_response.cancel(queued.id)
    oas.validate_response(raw.http_response.json())
    cancelled = raw.parse()
    assert time.monotonic() - started < 3  # not waiting for the slow upstream
    assert cancelled.status == "cancelled" and cancelled.id == queued.id
    assert client.responses.retrieve(queued.id).status == "cancelled"
    # Cancel is idempotent, and a finished background response is returned as it is.
    assert client.responses.cancel(queued.id).status == "cancelled"


def test_upstream_failure_fails_the_background_response_with_its_code(
    client: OpenAI, sim: Simulator
) -> None:
    sim.script("anthropic", Error(429))
    queued = client.responses.create(
        model="anthropic/claude-sonnet-4-5", input="hi", background=True
    )
    failed = poll(client, queued.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "rate_limit_exceeded"


def test_background_needs_store_and_an_unfinished_response_cannot_be_continued(
    client: OpenAI, sim: Simulator
) -> None:
    with pytest.raises(BadRequestError) as refused:
        client.responses.create(
            model="anthropic/claude-sonnet-4-5", input="hi", background=True, store=False
        )
    oas.validate_error_body(refused.value.response.json())
    assert refused.value.body["param"] == "background"  # type: ignore[index]

    sim.script("anthropic", Slow(1.5))
    queued = client.responses.create(
        model="anthropic/claude-sonnet-4-5", input="first", background=True
    )
    with pytest.raises(BadRequestError) as early:
        client.responses.create(
            model="anthropic/claude-sonnet-4-5", input="second", previous_response_id=queued.id
        )
    assert early.value.body["code"] == "previous_response_not_finished"  # type: ignore[index]
    assert poll(client, queued.id).status == "completed"
    follow_up = client.responses.create(
        model="anthropic/claude-sonnet-4-5", input="second", previous_response_id=queued.id
    )
    assert follow_up.status == "completed"


def test_stopping_the_gateway_fails_running_background_responses_within_the_timeout(
    provider_sim_session: Simulator, sim: Simulator, tmp_path: Path
) -> None:
    """SIGTERM with a follower attached to a background response whose upstream never answers:
    the response is failed at once (the follower gets response.failed and [DONE], shutdown does
    not wait out the grace period) and the next process on the same store serves that record."""
    config = tmp_path / "turnout.yaml"
    config.write_text(
        f"store: sqlite:///{tmp_path / 'store.db'}\nserver: {{shutdown_timeout_s: 20}}\n",
        encoding="utf-8",
    )
    env = gateway_env(provider_sim_session)
    gw = start_gateway(config, env, tmp_path / "gateway.log")
    try:
        sim.script("anthropic", Hang())
        body = {"model": "anthropic/claude-sonnet-4-5", "input": "hi", "background": True}
        rid = httpx.post(f"{gw.url}/v1/responses", json=body).json()["id"]
        outcome: list[str] = []

        def follow() -> None:
            try:
                text = httpx.get(f"{gw.url}/v1/responses/{rid}?stream=true", timeout=30).text
                outcome.append(text)
            except httpx.HTTPError:
                outcome.append("cut")

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        time.sleep(0.3)
        started = time.monotonic()
        gw.process.terminate()
        gw.process.wait(timeout=15)
        # Not the 20 s grace: the background response ends first, so its follower's
        # connection closes at once, with the failure and [DONE].
        assert time.monotonic() - started < 8
        follower.join(timeout=5)
        (text,) = outcome
        assert "event: response.failed" in text and text.endswith("data: [DONE]\n\n")
    finally:
        stop_gateway(gw)
    again = start_gateway(config, env, tmp_path / "gateway2.log")
    try:
        stored = again.client().responses.retrieve(rid)
        assert stored.status == "failed" and stored.error is not None
    finally:
        stop_gateway(again)
