"""`POST /v1/responses/input_tokens` on every provider, end to end: the official SDK (strict) →
`turnout serve` → the provider simulator's counting endpoint.

A format that counts (formats.yaml `facts: counts_tokens`) gets the create translation sent to
its counting endpoint, and the number is the simulator's: `prompt_chars` of the exact upstream
body. A format without one gets a 400 `unsupported_endpoint` naming the provider, and nothing
goes upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    facts_of,
    gateway_env,
    label_for,
    model_for,
    start_gateway,
    stop_gateway,
)
from tests.simulators import Error, Simulator
from tests.simulators.counting import COUNT_OPERATION
from tests.simulators.turn import prompt_chars

COUNTING = [p for p in PROVIDERS if facts_of(p).counts_tokens]
NOT_COUNTING = [p for p in PROVIDERS if not facts_of(p).counts_tokens]

_TOOL: Any = {
    "type": "function",
    "name": "lookup_weather",
    "description": "Weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def _counted(sim: Simulator, provider: str) -> Any:
    """The one upstream request, which must have gone to the counting endpoint."""
    upstream = sim.requests_for(label_for(provider))
    assert len(upstream) == 1, [(r.path, r.operation) for r in upstream]
    assert upstream[0].operation == COUNT_OPERATION, upstream[0].path
    return upstream[0]


def test_the_formats_facts_split_the_providers() -> None:
    # Both halves are exercised: providers that count, and Chat Completions ones that cannot.
    assert COUNTING and NOT_COUNTING
    assert "anthropic" in COUNTING and "groq" in NOT_COUNTING


@pytest.mark.parametrize("provider", COUNTING)
def test_count_is_the_providers_number_for_the_translated_request(
    provider: str, client: OpenAI, sim: Simulator
) -> None:
    counted = client.responses.input_tokens.count(
        model=model_for(provider),
        instructions="Answer in one short sentence.",
        input="What is the weather in Lisbon today?",
        tools=[_TOOL],
    )
    upstream = _counted(sim, provider)
    sent = orjson.dumps(upstream.json).decode()
    # The create translation: instructions, input and tool all reached the counting endpoint.
    for piece in (
        "Answer in one short sentence.",
        "What is the weather in Lisbon",
        "lookup_weather",
    ):
        assert piece in sent, sent
    assert counted.object == "response.input_tokens"
    assert counted.input_tokens == prompt_chars(upstream.json) > 0


@pytest.mark.parametrize("provider", COUNTING)
def test_a_chained_count_includes_the_history(
    provider: str, client: OpenAI, sim: Simulator
) -> None:
    model = model_for(provider)
    first = client.responses.create(model=model, input="Remember the word marmalade.")
    alone = client.responses.input_tokens.count(model=model, input="Which word was it?")
    sim.reset()
    chained = client.responses.input_tokens.count(
        model=model, input="Which word was it?", previous_response_id=first.id
    )
    upstream = _counted(sim, provider)
    sent = orjson.dumps(upstream.json).decode()
    assert "Remember the word marmalade." in sent and first.output_text in sent
    assert chained.input_tokens == prompt_chars(upstream.json)
    assert chained.input_tokens > alone.input_tokens


@pytest.mark.parametrize("provider", COUNTING)
def test_the_raw_reply_matches_openais_schema(
    provider: str, gateway: Gateway, sim: Simulator
) -> None:
    reply = httpx.post(
        f"{gateway.url}/v1/responses/input_tokens",
        json={"model": model_for(provider), "input": "Count me."},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    oas.validate_token_count(reply.json())
    assert reply.json()["input_tokens"] == prompt_chars(_counted(sim, provider).json)


@pytest.mark.parametrize("provider", NOT_COUNTING)
def test_a_provider_without_a_counting_endpoint_is_a_400_naming_it(
    provider: str, client: OpenAI, sim: Simulator
) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.responses.input_tokens.count(model=model_for(provider), input="Count me.")
    body = caught.value.response.json()
    oas.validate_error_body(body)
    error = body["error"]
    assert error["code"] == "unsupported_endpoint"
    assert error["param"] == "model"
    assert f"'{model_for(provider).split('/', 1)[0]}'" in error["message"]
    assert sim.requests_for(label_for(provider)) == []  # never a guessed number


def test_an_alias_counts_on_its_deployment(client: OpenAI, sim: Simulator) -> None:
    counted = client.responses.input_tokens.count(model="claude", input="Count me.")
    upstream = _counted(sim, "anthropic")
    assert upstream.json["model"] == "claude-sonnet-4-5"
    assert counted.input_tokens == prompt_chars(upstream.json)


def test_the_route_is_not_taken_for_a_response_id(client: OpenAI, gateway: Gateway) -> None:
    # GET /v1/responses/input_tokens is no count, and no response with that id either.
    reply = httpx.get(f"{gateway.url}/v1/responses/input_tokens", timeout=10)
    assert reply.status_code in (404, 405)
    assert "error" in reply.json()


def test_a_missing_previous_response_is_a_404(client: OpenAI) -> None:
    reply = client.responses.input_tokens.with_raw_response
    with pytest.raises(Exception) as caught:
        reply.count(
            model=model_for("anthropic"), input="Hi", previous_response_id="resp_does_not_exist"
        )
    response = getattr(caught.value, "response", None)
    assert response is not None and response.status_code == 404
    assert response.json()["error"]["code"] == "previous_response_not_found"


def test_a_client_mistake_is_a_400_naming_the_field(client: OpenAI) -> None:
    with pytest.raises(BadRequestError) as caught:
        client.responses.input_tokens.count(
            model=model_for("anthropic"), input="Hi", extra_body={"max_output_tokens": "many"}
        )
    assert caught.value.response.json()["error"]["param"] == "max_output_tokens"


# -- aliases: the first pick, then the alias's other deployments and its fallbacks ------------

_ALIASES = f"""\
store: memory://
models:
  mixed:
    deployments:
      - {{model: {model_for("groq")}}}
      - {{model: {model_for("anthropic")}, weight: 0}}  # a standby: the groq one is picked
  flaky:
    deployments:
      - {{model: {model_for("anthropic")}}}
    fallbacks: [backup]
  backup:
    deployments:
      - {{model: {model_for("gemini")}}}
"""


@pytest.fixture(scope="module")
def alias_gateway(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    folder: Path = tmp_path_factory.mktemp("count_aliases")
    config = folder / "turnout.yaml"
    config.write_text(_ALIASES, encoding="utf-8")
    gw = start_gateway(config, gateway_env(provider_sim_session), folder / "gateway.log")
    yield gw
    stop_gateway(gw)


def test_an_alias_skips_a_deployment_that_cannot_count(
    alias_gateway: Gateway, sim: Simulator
) -> None:
    with alias_gateway.client() as client:
        for _ in range(2):  # the router picks the Chat deployment first, every time
            counted = client.responses.input_tokens.count(model="mixed", input="Count me.")
            upstream = _counted(sim, "anthropic")
            assert counted.input_tokens == prompt_chars(upstream.json)
            assert sim.requests_for(label_for("groq")) == []
            sim.reset()


def test_an_alias_falls_back_when_its_provider_fails(
    alias_gateway: Gateway, sim: Simulator
) -> None:
    sim.script(label_for("anthropic"), Error(529))
    with alias_gateway.client() as client:
        counted = client.responses.input_tokens.count(model="flaky", input="Count me.")
    tried = sim.requests_for(label_for("anthropic"))
    assert [r.operation for r in tried] == [COUNT_OPERATION]  # tried once, answered 529
    upstream = _counted(sim, "gemini")
    assert counted.input_tokens == prompt_chars(upstream.json)


def test_a_client_error_from_the_provider_is_answered_at_once(
    alias_gateway: Gateway, sim: Simulator
) -> None:
    sim.script(label_for("anthropic"), Error(400))
    with alias_gateway.client() as client, pytest.raises(BadRequestError) as caught:
        client.responses.input_tokens.count(model="flaky", input="Count me.")
    oas.validate_error_body(caught.value.response.json())
    assert caught.value.response.json()["error"]["message"].startswith("anthropic: ")
    assert sim.requests_for(label_for("gemini")) == []
