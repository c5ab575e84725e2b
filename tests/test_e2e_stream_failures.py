"""Failures after the upstream answered 2xx, end to end (issue 12): the `response.failed`
message names the provider first and says what happened, in the provider's own words where
its wire format carries an in-band error, and never blames a connection that worked."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import PROVIDERS, SLOW_TIMEOUT_PROVIDER, Gateway, dialect, label_for, model_for
from tests.formats import WIRES
from tests.simulators import MidStreamError, Replay, Simulator

WORDS = "the sampler fell over at token 7"
CUT = "the upstream stream ended before the response was complete"


def _drops(provider: str) -> bool:
    """The simulator's MidStreamError just drops the connection (no in-band error): Gemini has
    none, a wire format says so by having no `failure` frame (tests/simulators/replies.py)."""
    fmt = dialect(provider)
    wire = WIRES.get(fmt)
    return wire.failure is None if wire is not None else fmt == "gemini"


def _failed(gateway: Gateway, model: str) -> dict[str, Any]:
    with httpx.stream(
        "POST", f"{gateway.url}/v1/responses",
        json={"model": model, "input": "hi", "stream": True}, timeout=30,
    ) as reply:  # fmt: skip
        assert reply.status_code == 200
        lines = list(reply.iter_lines())
    events = [orjson.loads(x[6:]) for x in lines if x.startswith("data: ") and x != "data: [DONE]"]
    assert events[-1]["type"] == "response.failed", events[-1]
    error = events[-1]["response"]["error"]
    stored = httpx.get(f"{gateway.url}/v1/responses/{events[-1]['response']['id']}").json()
    assert stored["error"] == error
    return dict(error)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_mid_stream_failure_says_what_the_provider_said(
    gateway: Gateway, sim: Simulator, provider: str
) -> None:
    # Enough text that the failure comes before the provider's last frame (5-character deltas).
    text = "partial answer, then nothing more"
    sim.script(label_for(provider), MidStreamError(after_chunks=3, message=WORDS, text=text))
    model = model_for(provider)
    pid = model.split("/", 1)[0]
    message = _failed(gateway, model)["message"]
    assert message.startswith(f"{pid}: "), message
    assert "[None]" not in message and "Could not reach" not in message, message
    if _drops(provider):
        assert re.fullmatch(rf"{pid}: {CUT} \(connection closed after [1-9]\d* events?\)", message)
    else:
        assert WORDS in message and CUT not in message, message


def test_a_stream_that_stalls_says_how_long_it_waited(gateway: Gateway, sim: Simulator) -> None:
    # The first chunk arrives, then nothing for longer than the provider's timeout_s (1 s).
    fixture = "openai_chat/text_stream_after_tool_result"
    sim.script(SLOW_TIMEOUT_PROVIDER, Replay(fixture, chunk_size=800, delay=3.0))
    message = _failed(gateway, f"{SLOW_TIMEOUT_PROVIDER}/m")["message"]
    assert message == (
        f"{SLOW_TIMEOUT_PROVIDER}: the upstream stopped sending for 1 s before the response was "
        "complete (after 2 events)"
    )


@pytest.mark.parametrize("provider", ["gemini", "anthropic", "openai_chat"])
def test_a_json_reply_cut_short_is_not_called_unreachable(
    gateway: Gateway, sim: Simulator, provider: str
) -> None:
    sim.script(label_for(provider), MidStreamError(after_chunks=1))
    reply = httpx.post(
        f"{gateway.url}/v1/responses", json={"model": model_for(provider), "input": "hi"}
    )
    assert reply.status_code == 502, reply.text
    error = reply.json()["error"]
    assert error["code"] == "upstream_incomplete"
    assert error["message"].startswith(
        f"{provider}: the upstream reply ended before the response was complete (connection "
        "closed after "
    ), error["message"]
