"""Request features through every mapping, end to end: usage arithmetic, structured output,
images, stop reasons, tool_choice. Each checks both what the provider received and what the
client got back."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import openai
import orjson
import pytest
from openai import OpenAI

from tests import oas
from tests.conftest import PROVIDERS, Gateway, facts_of, label_for, model_for
from tests.simulators import MaxTokens, Simulator, Thinking
from tests.simulators.turn import compute_usage
from tests.test_e2e_providers import TOOL_PROVIDERS

PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmM"
    "IQAAAABJRU5ErkJggg=="
)


def usage_tuple(usage: Any) -> tuple[int, int, int, int, int]:
    return (
        usage.input_tokens,
        usage.input_tokens_details.cached_tokens,
        usage.input_tokens_details.cache_write_tokens,
        usage.output_tokens,
        usage.output_tokens_details.reasoning_tokens,
    )


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("streamed", [False, True])
def test_usage_is_normalised_like_openai_counts_it(
    provider: str, streamed: bool, client: OpenAI, sim: Simulator
) -> None:
    """Cached and reasoning tokens add up the same for every provider, streamed or not."""
    thought, text = "I should greet.", "Hello there"
    sim.script(label_for(provider), Thinking(thought=thought, signature="sig", text=text))
    args: dict[str, Any] = {"model": model_for(provider), "input": "Greet me, please."}
    fmt = facts_of(provider)
    if fmt.asks_for_reasoning:
        args["reasoning"] = {"effort": "low", "summary": "auto"}
    if streamed:
        with client.responses.stream(**args) as stream:
            response = stream.get_final_response()
    else:
        response = client.responses.create(**args)
    assert response.output_text == text
    u = compute_usage(sim.last.json, text, [], thought)
    # Anthropic and Bedrock do not report reasoning tokens apart; only they report cache writes.
    reasoning = u.reasoning if fmt.reports_reasoning_tokens else 0
    cache_write = u.cache_write if fmt.reports_cache_writes else 0
    assert response.usage is not None
    assert usage_tuple(response.usage) == (
        u.input_total, u.cached, cache_write, u.output_total, reasoning,
    )  # fmt: skip
    assert response.usage.total_tokens == u.input_total + u.output_total
    kinds = [item.type for item in response.output]
    if provider != "perplexity":
        assert kinds == ["reasoning", "message"]


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_structured_output_reaches_every_provider(
    provider: str, client: OpenAI, sim: Simulator
) -> None:
    """Anchor 8: text.format json_schema is honoured natively, never dropped."""
    answer = '{"city": "Paris", "population": 2102650}'
    response = client.responses.create(
        model=model_for(provider),
        input=answer,  # the simulator echoes it back: a schema-valid reply
        text={"format": {"type": "json_schema", "name": "city", "schema": SCHEMA, "strict": True}},
    )
    assert facts_of(provider).schema_sent(sim.last.json) == SCHEMA
    jsonschema.validate(orjson.loads(response.output_text), SCHEMA)
    assert response.text.format.type == "json_schema"  # echoed back


def test_json_object_is_a_400_where_the_provider_has_no_such_mode(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(
            model="anthropic/claude-sonnet-4-5",
            input="hi",
            text={"format": {"type": "json_object"}},
        )
    assert err.value.body["param"] == "text.format"  # type: ignore[index]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_image_input_as_data_url(provider: str, client: OpenAI, sim: Simulator) -> None:
    client.responses.create(
        model=model_for(provider),
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in the picture?"},
                    {
                        "type": "input_image",
                        "image_url": f"data:image/png;base64,{PNG}",
                        "detail": "auto",
                    },
                ],
            }
        ],
    )
    fmt = facts_of(provider)
    assert fmt.image_sent(sim.last.json) == fmt.image_expected("data_url", png=PNG)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_image_input_by_url(provider: str, client: OpenAI, sim: Simulator) -> None:
    url = "https://example.com/cat.png"
    content: Any = [
        {"type": "input_text", "text": "Describe."},
        {"type": "input_image", "image_url": url, "detail": "low"},
    ]
    fmt = facts_of(provider)
    expected = fmt.image_expected("url", url=url)
    if expected is None:  # inline bytes only (Gemini, Bedrock)
        with pytest.raises(openai.BadRequestError) as err:
            client.responses.create(
                model=model_for(provider), input=[{"role": "user", "content": content}]
            )
        assert err.value.body["param"] == "input"  # type: ignore[index]
        return
    client.responses.create(model=model_for(provider), input=[{"role": "user", "content": content}])
    assert fmt.image_sent(sim.last.json) == expected


@pytest.mark.parametrize("provider", PROVIDERS)
def test_max_tokens_stop_is_incomplete(provider: str, gateway: Gateway, sim: Simulator) -> None:
    sim.script(label_for(provider), MaxTokens("cut off"))
    reply = httpx.post(
        f"{gateway.url}/v1/responses",
        json={"model": model_for(provider), "input": "Write a novel.", "max_output_tokens": 16},
        timeout=30,
    )
    body = reply.json()
    oas.validate_response(body)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["max_output_tokens"] == 16


@pytest.mark.parametrize("provider", TOOL_PROVIDERS)
@pytest.mark.parametrize("choice", ["required", "function"])
def test_tool_choice_is_translated(
    provider: str, choice: str, client: OpenAI, sim: Simulator
) -> None:
    tools: Any = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    value: Any = "required" if choice == "required" else {"type": "function", "name": "f"}
    response = client.responses.create(
        model=model_for(provider), input="hi", tools=tools, tool_choice=value
    )
    fmt = facts_of(provider)
    assert fmt.tool_choice_sent(sim.last.json) == fmt.tool_choice_expected(choice)
    assert response.tool_choice == (value if choice == "required" else response.tool_choice)
    assert response.tools[0].name == "f"  # type: ignore[union-attr]


def test_replay_from_a_sequence_number_and_include_forms(client: OpenAI, gateway: Gateway) -> None:
    with client.responses.stream(model="groq/m", input="count") as stream:
        final = stream.get_final_response()
    url = f"{gateway.url}/v1/responses/{final.id}"
    whole = httpx.get(url, params={"stream": "true"}).text
    tail = httpx.get(url, params={"stream": "true", "starting_after": "2"}).text
    numbers = [orjson.loads(x[6:])["sequence_number"] for x in tail.splitlines()
               if x.startswith("data: {")]  # fmt: skip
    assert numbers[0] == 3
    assert len(numbers) == len([x for x in whole.splitlines() if x.startswith("data: {")]) - 3
    for query in ("include[]=reasoning.encrypted_content", "include=reasoning.encrypted_content"):
        assert httpx.get(f"{url}?{query}").json()["id"] == final.id
