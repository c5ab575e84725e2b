"""Every mapping, end to end: official SDK (strict) → `turnout serve` → provider simulator.

One suite parametrized over the providers: create, stream, retrieve, input_items, delete, a
multi-turn chain and a function-call round trip, each response and raw event validated against
OpenAI's published schema.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import NotFoundError, OpenAI

from tests import oas
from tests.conftest import PROVIDERS, Gateway, dialect, facts_of, label_for, model_for
from tests.simulators import Echo, Simulator, Thinking, ToolCalls


def raw_stream(gateway: Gateway, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST with stream: true and return every event, each validated against the schema."""
    events: list[dict[str, Any]] = []
    with httpx.stream(
        "POST", f"{gateway.url}/v1/responses", json={**body, "stream": True}, timeout=30
    ) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = orjson.loads(line[6:])
                oas.validate_event(event)
                events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def plain(response: Any) -> Any:
    """A Response as data, without the SDK's client-side `parsed*` conveniences."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if not k.startswith("parsed")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(response.model_dump())


def string_values(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in string_values(v)]
    if isinstance(node, list):
        return [s for v in node for s in string_values(v)]
    return []


def user_texts(provider_request: dict[str, Any]) -> str:
    """All text the upstream received, flattened, whatever the dialect."""
    return orjson.dumps(provider_request).decode()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_create_retrieve_items_delete(
    provider: str, client: OpenAI, gateway: Gateway, sim: Simulator
) -> None:
    raw = client.responses.with_raw_response.create(
        model=model_for(provider), input="Say hi to Ada", instructions="Be brief."
    )
    body = raw.http_response.json()
    oas.validate_response(body)
    oas.validate_open_responses(body)
    response = raw.parse()
    assert response.status == "completed"
    assert response.output_text == "Say hi to Ada"
    assert response.model == model_for(provider)
    assert sim.last.provider == label_for(provider)
    assert response.instructions == "Be brief."
    assert isinstance(body["created_at"], int)
    assert "Be brief." in user_texts(sim.last.json)

    again = client.responses.retrieve(response.id)
    assert again.model_dump() == response.model_dump()

    raw_items = client.responses.input_items.with_raw_response.list(response.id)
    oas.validate_item_list(raw_items.http_response.json())
    items = raw_items.parse()
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "Say hi to Ada"  # type: ignore[union-attr]

    deleted = httpx.delete(f"{gateway.url}/v1/responses/{response.id}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": response.id, "object": "response", "deleted": True}
    with pytest.raises(NotFoundError) as missing:
        client.responses.retrieve(response.id)
    oas.validate_error_body(missing.value.response.json())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_equals_non_stream(
    provider: str, client: OpenAI, gateway: Gateway, sim: Simulator
) -> None:
    text = 'Stream me: "quotes", {{ braces }}, emoji 🦜 and 42'
    with client.responses.stream(model=model_for(provider), input=text) as stream:
        streamed_events = [event.type for event in stream]
        streamed = stream.get_final_response()
    assert streamed_events[0] == "response.created"
    assert streamed.output_text == text
    stored = client.responses.retrieve(streamed.id)
    assert plain(stored) == plain(streamed)

    direct = client.responses.create(model=model_for(provider), input=text)

    def comparable(resp: Any) -> Any:
        data = plain(resp)
        for key in ("id", "created_at", "completed_at"):
            data.pop(key)
        for item in data["output"]:
            item.pop("id", None)
        return data

    assert comparable(direct) == comparable(streamed)

    events = raw_stream(gateway, {"model": model_for(provider), "input": text})
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    ids = {e["response"]["id"] for e in events if "response" in e}
    assert len(ids) == 1  # anchor 2: one id from created to completed
    replay = httpx.get(f"{gateway.url}/v1/responses/{ids.pop()}", params={"stream": "true"})
    replayed = [
        orjson.loads(line[6:])
        for line in replay.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    assert replayed == events


@pytest.mark.parametrize("provider", PROVIDERS)
def test_multi_turn_chain(provider: str, client: OpenAI, sim: Simulator) -> None:
    first = client.responses.create(model=model_for(provider), input="My name is Ada.")
    # Anchor 1: the follow-up goes out at once, no waiting for a background writer.
    second = client.responses.create(
        model=model_for(provider), input="What is my name?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    assert second.output_text == "What is my name?"
    sent = user_texts(sim.last.json)
    assert "My name is Ada." in sent  # turn 1's input went upstream
    assert sent.count("My name is Ada.") == 2  # ... and the echoed assistant reply too
    items = client.responses.input_items.list(second.id, order="asc")
    assert [i.content[0].text for i in items.data] == ["What is my name?"]  # type: ignore[union-attr]


# Perplexity's API has no function tools: its 400 is tested on its own below.
TOOL_PROVIDERS = [p for p in PROVIDERS if p != "perplexity"]


@pytest.mark.parametrize("provider", TOOL_PROVIDERS)
def test_function_call_round_trip(provider: str, client: OpenAI, sim: Simulator) -> None:
    tools: Any = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    sim.script(
        label_for(provider),
        ToolCalls([("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Oslo"})]),
    )
    with client.responses.stream(
        model=model_for(provider), input="Weather in Paris and Oslo?", tools=tools
    ) as stream:
        first = stream.get_final_response()
    calls = [item for item in first.output if item.type == "function_call"]
    assert [orjson.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert all(item.type != "message" for item in first.output)  # anchor 4: no empty message
    assert len({c.call_id for c in calls}) == 2

    outputs: Any = [
        {"type": "function_call_output", "call_id": c.call_id, "output": f"sunny in {i}"}
        for i, c in enumerate(calls)
    ]
    final = client.responses.create(
        model=model_for(provider), input=outputs, tools=tools, previous_response_id=first.id
    )
    assert final.status == "completed"
    native = user_texts(sim.last.json)
    for c in calls:
        assert c.call_id in native or not facts_of(provider).call_ids_sent  # Gemini: by name
    assert "sunny in 0" in native
    assert "sunny in 1" in native


def test_perplexity_rejects_tools_by_name(client: OpenAI) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as err:
        client.responses.create(
            model="perplexity/sonar",
            input="hi",
            tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],  # type: ignore[list-item]
        )
    assert err.value.param == "tools"  # type: ignore[attr-defined]


@pytest.mark.parametrize("provider", PROVIDERS)
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=st.text(min_size=1, max_size=200).filter(lambda s: s.strip() != ""))
def test_any_text_round_trips_byte_exact(
    provider: str, client: OpenAI, provider_sim_session: Simulator, text: str
) -> None:
    provider_sim_session.reset()
    provider_sim_session.script(label_for(provider), Echo())
    response = client.responses.create(model=model_for(provider), input=text)
    assert response.output_text == text
    # The text reached the provider as one exact JSON string, not re-parsed or re-escaped.
    assert text in string_values(provider_sim_session.last.json)


def test_cross_provider_chain_anthropic_then_gemini(client: OpenAI, sim: Simulator) -> None:
    sim.script(
        "anthropic", Thinking(thought="Let me think.", signature="sig-anthropic", text="Hi Ada")
    )
    first = client.responses.create(
        model="anthropic/claude-sonnet-4-5", input="I am Ada.", reasoning={"effort": "low"}
    )
    assert [i.type for i in first.output] == ["reasoning", "message"]
    second = client.responses.create(
        model="gemini/gemini-2.5-flash", input="Who am I?", previous_response_id=first.id
    )
    assert second.status == "completed"
    sent = sim.last.json
    assert sim.last.provider == "gemini"
    # The visible history went over; Anthropic's signature did not (Gemini cannot read it).
    assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
    assert "sig-anthropic" not in user_texts(sent)


def test_reasoning_signature_round_trips_on_anthropic(client: OpenAI, sim: Simulator) -> None:
    sim.script("anthropic", Thinking(thought="Step one.", signature="sig-123", text="Done"))
    with client.responses.stream(
        model="anthropic/claude-sonnet-4-5", input="Think.", reasoning={"effort": "low"}
    ) as stream:
        first = stream.get_final_response()
    reasoning = first.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.encrypted_content
    client.responses.create(
        model="anthropic/claude-sonnet-4-5",
        input="Go on.",
        reasoning={"effort": "low"},
        previous_response_id=first.id,
    )
    assistant = sim.last.json["messages"][1]
    assert assistant["role"] == "assistant"
    assert assistant["content"][0] == {
        "type": "thinking",
        "thinking": "Step one.",
        "signature": "sig-123",
    }


def test_gemini_thought_signature_round_trips(client: OpenAI, sim: Simulator) -> None:
    tools: Any = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    sim.script("gemini", ToolCalls([("lookup", {})], signature="gemini-sig"))
    first = client.responses.create(model="gemini/gemini-3-pro", input="Look up.", tools=tools)
    call = next(i for i in first.output if i.type == "function_call")
    client.responses.create(
        model="gemini/gemini-3-pro",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "ok"}],
        tools=tools,
        previous_response_id=first.id,
    )
    model_turn = sim.last.json["contents"][1]
    assert model_turn["parts"][0]["thoughtSignature"] == "gemini-sig"


def test_replayed_history_with_previous_response_id_is_not_duplicated(
    client: OpenAI, sim: Simulator
) -> None:
    """Anchor 9: the client resends the function_call it got and also chains the response."""
    tools: Any = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    sim.script("anthropic", ToolCalls([("f", {"x": 1})]))
    first = client.responses.create(model="anthropic/claude-sonnet-4-5", input="Go", tools=tools)
    call = next(i for i in first.output if i.type == "function_call")
    client.responses.create(
        model="anthropic/claude-sonnet-4-5",
        tools=tools,
        previous_response_id=first.id,
        input=[
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": "f",
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "1"},
        ],
    )
    blocks = [b for m in sim.last.json["messages"] for b in m["content"] if isinstance(b, dict)]
    tool_uses = [b["id"] for b in blocks if b["type"] == "tool_use"]
    assert tool_uses == [call.call_id]


# Providers whose reasoning carries opaque state the next turn must send back verbatim.
SIGNED_REASONING = ["anthropic", "vertex_ai_claude", "bedrock", "openai", "azure"]


@pytest.mark.parametrize("provider", SIGNED_REASONING)
def test_reasoning_state_round_trips(provider: str, client: OpenAI, sim: Simulator) -> None:
    """Anchor 7: reasoning items and their signatures survive to the next turn, per provider."""
    sim.script(label_for(provider), Thinking(thought="Step one.", signature="sig-xyz", text="Ok"))
    first = client.responses.create(
        model=model_for(provider), input="Think.", reasoning={"effort": "low"}
    )
    assert [item.type for item in first.output] == ["reasoning", "message"]
    assert first.output[0].encrypted_content  # type: ignore[union-attr]
    client.responses.create(
        model=model_for(provider),
        input="Go on.",
        reasoning={"effort": "low"},
        previous_response_id=first.id,
    )
    sent = string_values(sim.last.json)
    assert "sig-xyz" in sent  # the signature went back as the provider minted it
    assert "Step one." in sent or dialect(provider) == "responses"  # and the thinking text


@pytest.mark.parametrize("provider", ["gemini", "vertex_ai"])
def test_gemini_family_call_signatures_round_trip(
    provider: str, client: OpenAI, sim: Simulator
) -> None:
    tools: Any = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    sim.script(label_for(provider), ToolCalls([("lookup", {})], signature="sig-call"))
    first = client.responses.create(model=model_for(provider), input="Look up.", tools=tools)
    call = next(i for i in first.output if i.type == "function_call")
    client.responses.create(
        model=model_for(provider),
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "ok"}],
        tools=tools,
        previous_response_id=first.id,
    )
    model_turn = sim.last.json["contents"][1]
    assert model_turn["parts"][0]["thoughtSignature"] == "sig-call"


# --- history fidelity: what the client sent reaches the upstream, in a shape it accepts ---------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_history_opening_with_the_assistant_is_accepted(
    provider: str, client: OpenAI, sim: Simulator
) -> None:
    # Bedrock, Anthropic and Gemini (a call turn) refuse a conversation opening with the
    # assistant; their simulators do too, so every route must send one they take.
    history: Any = [
        {"role": "assistant", "content": "Earlier I said hi."},
        {"role": "user", "content": "And now?"},
    ]
    first = client.responses.create(model=model_for(provider), input=history)
    assert first.status == "completed"
    assert first.output_text == "And now?"
    facts = facts_of(provider)
    assert "Earlier I said hi." in user_texts(facts.assistant_turns(sim.last.json))
    # The same history stored, then continued: its first stored turn is the assistant's.
    second = client.responses.create(
        model=model_for(provider), input="Go on.", previous_response_id=first.id
    )
    assert second.status == "completed"
    assert "Earlier I said hi." in user_texts(facts.assistant_turns(sim.last.json))


PARTS = ("Remember the saved number.", "The number is four.")
SAID = ("Noted.", "It is four.")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_text_parts_of_one_message_keep_their_words_apart(
    provider: str, client: OpenAI, sim: Simulator
) -> None:
    user = [{"type": "input_text", "text": t} for t in PARTS]
    said = [{"type": "output_text", "text": t, "annotations": []} for t in SAID]
    history: Any = [
        {"role": "user", "content": user},
        {"type": "message", "id": "msg_said", "status": "completed", "role": "assistant",
         "content": said},
        {"role": "user", "content": user},
    ]  # fmt: skip
    response = client.responses.create(model=model_for(provider), input=history)
    assert response.status == "completed"
    sent = user_texts(sim.last.json)
    for text in (*PARTS, *SAID):
        assert text in sent
    assert "number.The number" not in sent  # two parts of a user message, never glued
    assert "Noted.It is" not in sent  # nor of an assistant message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_consecutive_assistant_messages_keep_their_phases(
    provider: str, client: OpenAI, sim: Simulator
) -> None:
    def said(text: str, phase: str) -> dict[str, Any]:
        return {
            "type": "message", "id": f"msg_{phase}", "status": "completed", "role": "assistant",
            "phase": phase, "content": [{"type": "output_text", "text": text, "annotations": []}],
        }  # fmt: skip

    history: Any = [
        {"role": "user", "content": "What is two plus two?"},
        said("Let me add them.", "commentary"),
        said("Four.", "final_answer"),
        {"role": "user", "content": "Thanks."},
    ]
    response = client.responses.create(model=model_for(provider), input=history)
    assert response.status == "completed"
    facts = facts_of(provider)
    turns = facts.assistant_turns(sim.last.json)
    sent = user_texts(turns)
    assert "Let me add them." in sent and "Four." in sent and "them.Four." not in sent
    phases = facts.phases(sim.last.json)
    if phases is not None:  # a format with phases: each message is an item of its own
        assert phases == ["commentary", "final_answer"]
        assert [user_texts(t).count("Four.") for t in turns] == [0, 1]
