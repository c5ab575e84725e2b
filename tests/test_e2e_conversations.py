"""The Conversations API end to end: official SDK (strict) → `turnout serve` → simulators.

Every reply is validated against OpenAI's conversations spec (tests/oas.py); turns with
`conversation=` run on every provider route, streamed, in the background and across providers.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests import oas
from tests.conftest import PROVIDERS, Gateway, label_for, model_for
from tests.simulators import Error, Simulator, ToolCalls

TERMINAL = ("completed", "failed", "incomplete", "cancelled")


def user_message(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


def all_items(gateway: Gateway, conversation_id: str) -> list[dict[str, Any]]:
    """Every item, oldest first, as raw JSON validated against the spec."""
    reply = httpx.get(
        f"{gateway.url}/v1/conversations/{conversation_id}/items",
        params={"order": "asc", "limit": 100},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    if body["data"]:
        oas.validate_conversation_item_list(body)
    for item in body["data"]:
        oas.validate_conversation_item(item)
    assert body["has_more"] is False
    return list(body["data"])


def texts(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, text) of each message item."""
    out = []
    for item in items:
        assert item["type"] == "message", item
        out.append((item["role"], "".join(part.get("text", "") for part in item["content"])))
    return out


def sent(sim: Simulator) -> str:
    return orjson.dumps(sim.last.json).decode()


def poll(client: OpenAI, response_id: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status in TERMINAL or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


def test_conversation_lifecycle_and_items(client: OpenAI, gateway: Gateway) -> None:
    raw = client.conversations.with_raw_response.create(
        items=[user_message("My name is Ada.")], metadata={"topic": "names"}
    )
    oas.validate_conversation(raw.http_response.json())
    conv = raw.parse()
    assert conv.id.startswith("conv_") and conv.object == "conversation"
    assert conv.metadata == {"topic": "names"} and abs(conv.created_at - time.time()) < 60

    got = client.conversations.retrieve(conv.id)
    assert got.id == conv.id and got.created_at == conv.created_at

    raw_update = client.conversations.with_raw_response.update(conv.id, metadata={"topic": "x"})
    oas.validate_conversation(raw_update.http_response.json())
    assert raw_update.parse().metadata == {"topic": "x"}
    assert client.conversations.retrieve(conv.id).metadata == {"topic": "x"}

    raw_added = client.conversations.items.with_raw_response.create(
        conv.id,
        items=[
            user_message("Second."),
            {"type": "message", "role": "assistant", "content": "Noted."},
        ],
    )
    oas.validate_conversation_item_list(raw_added.http_response.json())
    added = raw_added.parse()
    assert [i.id[:4] for i in added.data] == ["msg_", "msg_"]
    assert added.first_id == added.data[0].id and added.last_id == added.data[1].id

    items = all_items(gateway, conv.id)
    assert texts(items) == [
        ("user", "My name is Ada."), ("user", "Second."), ("assistant", "Noted."),
    ]  # fmt: skip
    assert all(i["id"].startswith("msg_") for i in items)

    # The SDK's pages: newest first by default, `after` to go on.
    page = client.conversations.items.list(conv.id, limit=2)
    assert [i.id for i in page.data] == [items[2]["id"], items[1]["id"]]
    assert page.has_more is True
    rest = client.conversations.items.list(conv.id, limit=2, after=items[1]["id"])
    assert [i.id for i in rest.data] == [items[0]["id"]] and rest.has_more is False
    assert [i.id for i in client.conversations.items.list(conv.id)] == [
        i["id"] for i in reversed(items)
    ]

    one = client.conversations.items.retrieve(items[1]["id"], conversation_id=conv.id)
    assert one.id == items[1]["id"] and one.type == "message"
    raw_item = httpx.get(
        f"{gateway.url}/v1/conversations/{conv.id}/items/{items[1]['id']}", timeout=30
    )
    oas.validate_conversation_item(raw_item.json())

    raw_del_item = client.conversations.items.with_raw_response.delete(
        items[1]["id"], conversation_id=conv.id
    )
    oas.validate_conversation(raw_del_item.http_response.json())
    assert raw_del_item.parse().id == conv.id
    assert texts(all_items(gateway, conv.id)) == [
        ("user", "My name is Ada."), ("assistant", "Noted."),
    ]  # fmt: skip
    with pytest.raises(NotFoundError) as gone_item:
        client.conversations.items.retrieve(items[1]["id"], conversation_id=conv.id)
    oas.validate_error_body(gone_item.value.response.json())
    assert gone_item.value.body["code"] == "item_not_found"  # type: ignore[index]

    raw_deleted = client.conversations.with_raw_response.delete(conv.id)
    oas.validate_conversation_deleted(raw_deleted.http_response.json())
    deleted = raw_deleted.parse()
    assert (deleted.id, deleted.object, deleted.deleted) == (
        conv.id, "conversation.deleted", True,
    )  # fmt: skip
    with pytest.raises(NotFoundError):
        client.conversations.retrieve(conv.id)
    with pytest.raises(NotFoundError):
        client.conversations.delete(conv.id)


def test_a_conversation_without_anything_and_its_empty_items(client: OpenAI) -> None:
    conv = client.conversations.create()
    assert conv.metadata == {}
    page = client.conversations.items.list(conv.id)
    assert page.data == [] and page.has_more is False


def test_unknown_conversation_is_404_everywhere(client: OpenAI, sim: Simulator) -> None:
    calls = [
        lambda: client.conversations.retrieve("conv_nope"),
        lambda: client.conversations.update("conv_nope", metadata={}),
        lambda: client.conversations.delete("conv_nope"),
        lambda: client.conversations.items.list("conv_nope"),
        lambda: client.conversations.items.create("conv_nope", items=[user_message("x")]),
        lambda: client.conversations.items.retrieve("msg_1", conversation_id="conv_nope"),
        lambda: client.conversations.items.delete("msg_1", conversation_id="conv_nope"),
    ]
    for call in calls:
        with pytest.raises(NotFoundError) as info:
            call()
        oas.validate_error_body(info.value.response.json())
        assert info.value.body["code"] == "conversation_not_found"  # type: ignore[index]
    before = len(sim.requests)
    with pytest.raises(NotFoundError) as turn:
        client.responses.create(
            model="anthropic/claude-sonnet-4-5", input="hi", conversation="conv_nope"
        )
    body = turn.value.response.json()
    oas.validate_error_body(body)
    assert body["error"]["param"] == "conversation"
    assert body["error"]["code"] == "conversation_not_found"
    assert len(sim.requests) == before  # nothing went upstream


def test_bad_conversation_requests_are_400_naming_the_parameter(
    client: OpenAI, gateway: Gateway
) -> None:
    conv = client.conversations.create()
    with pytest.raises(BadRequestError) as both:
        client.responses.create(
            model="anthropic/claude-sonnet-4-5", input="hi",
            conversation=conv.id, previous_response_id="resp_1",
        )  # fmt: skip
    body = both.value.response.json()
    oas.validate_error_body(body)
    assert body["error"]["param"] == "conversation"
    assert "'previous_response_id'" in body["error"]["message"]
    assert "'conversation'" in body["error"]["message"]

    too_many = [user_message(str(i)) for i in range(21)]
    for url, payload, param in (
        ("/v1/conversations", {"items": too_many}, "items"),
        ("/v1/conversations", {"items": [{"type": "message", "role": "user"}]}, "items[0].content"),
        ("/v1/conversations", {"metadata": {"k": 1}}, "metadata"),
        ("/v1/conversations", {"itemz": []}, "itemz"),
        (f"/v1/conversations/{conv.id}", {}, "metadata"),
        (f"/v1/conversations/{conv.id}/items", {}, "items"),
        (f"/v1/conversations/{conv.id}/items", {"items": []}, "items"),
    ):
        reply = httpx.post(f"{gateway.url}{url}", json=payload, timeout=30)
        assert reply.status_code == 400, (url, payload, reply.text)
        oas.validate_error_body(reply.json())
        assert reply.json()["error"]["param"] == param, reply.text
    reply = httpx.get(
        f"{gateway.url}/v1/conversations/{conv.id}/items", params={"order": "up"}, timeout=30
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "order"
    reply = httpx.get(
        f"{gateway.url}/v1/conversations/{conv.id}/items", params={"after": "msg_x"}, timeout=30
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "after"
    with pytest.raises(BadRequestError):
        client.responses.create(
            model="anthropic/claude-sonnet-4-5", input="hi", conversation={"name": conv.id}
        )  # type: ignore[arg-type]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_two_turns_in_a_conversation(
    provider: str, client: OpenAI, gateway: Gateway, sim: Simulator
) -> None:
    # A user and an assistant message: some dialects merge adjacent user messages into one.
    conv = client.conversations.create(
        items=[
            user_message("My name is Ada."),
            {"type": "message", "role": "assistant", "content": "Hello Ada."},
        ]
    )
    raw = client.responses.with_raw_response.create(
        model=model_for(provider), input="I like tea.", conversation=conv.id
    )
    body = raw.http_response.json()
    oas.validate_response(body)
    first = raw.parse()
    assert first.status == "completed" and first.conversation is not None
    assert first.conversation.id == conv.id and body["conversation"] == {"id": conv.id}
    assert "My name is Ada." in sent(sim)  # the initial item was the history

    second = client.responses.create(
        model=model_for(provider), input="What is my name?", conversation={"id": conv.id}
    )
    assert second.output_text == "What is my name?"
    assert sim.last.provider == label_for(provider)
    upstream = sent(sim)
    assert "My name is Ada." in upstream and "I like tea." in upstream  # the first turn went up
    assert upstream.count("I like tea.") == 2  # ... its input and its (echoed) output

    items = all_items(gateway, conv.id)
    assert texts(items) == [
        ("user", "My name is Ada."), ("assistant", "Hello Ada."),
        ("user", "I like tea."), ("assistant", "I like tea."),
        ("user", "What is my name?"), ("assistant", "What is my name?"),
    ]  # fmt: skip
    assert items[3]["id"] == first.output[0].id and items[5]["id"] == second.output[0].id
    # The response itself is stored as any other (retrieve, input_items).
    assert client.responses.retrieve(second.id).conversation.id == conv.id  # type: ignore[union-attr]
    assert len(client.responses.input_items.list(second.id).data) == 1


def test_a_conversation_across_providers(client: OpenAI, gateway: Gateway, sim: Simulator) -> None:
    conv = client.conversations.create()
    client.responses.create(
        model="anthropic/claude-sonnet-4-5", input="My name is Ada.", conversation=conv.id
    )
    assert sim.last.provider == "anthropic"
    second = client.responses.create(
        model="gemini/gemini-2.5-flash", input="Who am I?", conversation=conv.id
    )
    assert sim.last.provider == "gemini"
    assert sent(sim).count("My name is Ada.") == 2  # anthropic's turn, in gemini's dialect
    assert second.output_text == "Who am I?"
    assert [r for r, _ in texts(all_items(gateway, conv.id))] == [
        "user", "assistant", "user", "assistant",
    ]  # fmt: skip


def test_streamed_and_background_turns_are_appended(
    client: OpenAI, gateway: Gateway, sim: Simulator
) -> None:
    conv = client.conversations.create()
    with client.responses.stream(
        model="anthropic/claude-sonnet-4-5", input="Streamed turn.", conversation=conv.id
    ) as stream:
        streamed = stream.get_final_response()
    assert streamed.conversation is not None and streamed.conversation.id == conv.id
    # Appended before the terminal event left: the next turn sees it at once.
    assert texts(all_items(gateway, conv.id))[-1] == ("assistant", "Streamed turn.")

    queued = client.responses.create(
        model="anthropic/claude-sonnet-4-5", input="Background turn.",
        conversation=conv.id, background=True,
    )  # fmt: skip
    assert queued.conversation is not None and queued.conversation.id == conv.id
    done = poll(client, queued.id)
    assert done.status == "completed"
    assert "Streamed turn." in sent(sim)
    assert texts(all_items(gateway, conv.id)) == [
        ("user", "Streamed turn."), ("assistant", "Streamed turn."),
        ("user", "Background turn."), ("assistant", "Background turn."),
    ]  # fmt: skip


def test_a_failed_turn_appends_nothing_and_store_false_still_appends(
    client: OpenAI, gateway: Gateway, sim: Simulator
) -> None:
    conv = client.conversations.create(items=[user_message("Start.")])
    sim.script("anthropic", Error(400))
    with pytest.raises(BadRequestError):
        client.responses.create(
            model="anthropic/claude-sonnet-4-5", input="Refused.", conversation=conv.id
        )
    sim.script("anthropic", Error(400))
    queued = client.responses.create(
        model="anthropic/claude-sonnet-4-5", input="Refused later.",
        conversation=conv.id, background=True,
    )  # fmt: skip
    assert poll(client, queued.id).status == "failed"
    assert texts(all_items(gateway, conv.id)) == [("user", "Start.")]

    unstored = client.responses.create(
        model="anthropic/claude-sonnet-4-5", input="Off the record.",
        conversation=conv.id, store=False,
    )  # fmt: skip
    with pytest.raises(NotFoundError):
        client.responses.retrieve(unstored.id)
    assert texts(all_items(gateway, conv.id)) == [
        ("user", "Start."), ("user", "Off the record."), ("assistant", "Off the record."),
    ]  # fmt: skip


def test_a_function_call_round_trip_in_a_conversation(
    client: OpenAI, gateway: Gateway, sim: Simulator
) -> None:
    tools: Any = [
        {
            "type": "function", "name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]  # fmt: skip
    conv = client.conversations.create()
    sim.script("anthropic", ToolCalls([("get_weather", {"city": "Paris"})]))
    first = client.responses.create(
        model="anthropic/claude-sonnet-4-5", input="Weather in Paris?", tools=tools,
        conversation=conv.id,
    )  # fmt: skip
    call = next(o for o in first.output if o.type == "function_call")
    second = client.responses.create(
        model="anthropic/claude-sonnet-4-5", tools=tools, conversation=conv.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
    )  # fmt: skip
    assert second.status == "completed"
    upstream = sent(sim)
    assert call.call_id in upstream and "Sunny" in upstream and "Weather in Paris?" in upstream
    items = all_items(gateway, conv.id)
    kinds = [i["type"] for i in items]
    assert kinds[0] == "message" and "function_call" in kinds
    assert kinds.index("function_call") < kinds.index("function_call_output")
    assert items[kinds.index("function_call")]["id"] == call.id and call.id.startswith("fc_")
    assert kinds[-1] == "message" and items[-1]["id"] == second.output[-1].id
