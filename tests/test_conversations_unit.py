"""`server/conversations.py` on its own: ids, validation, the append rule of a turn, store
failures, and a store that keeps no conversations. The HTTP side is tests/test_e2e_conversations.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.oas import validate_conversation, validate_conversation_item_list
from turnout.engine.canonical import conversation_of
from turnout.engine.errors import RequestError
from turnout.engine.ids import DeterministicIdFactory
from turnout.server.conversations import MAX_ITEMS, Conversations
from turnout.server.request_context import Caller
from turnout.server.run import Run
from turnout.server.store_health import StoreHealth, StoreUnavailable
from turnout.server.stores import MemoryStore, ResponseStore, SpendQuery, SpendReport
from turnout.server.stores.base import AccountingRow, StoredResponse

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def service(store: ResponseStore | None = None) -> Conversations:
    return Conversations(
        store or MemoryStore(),
        StoreHealth(),
        DeterministicIdFactory(),
        clock=lambda: 1_700_000_000.5,
    )


def turn(conversation: str | None, status: str, output: list[dict[str, Any]]) -> Run:
    """What append_turn reads of a Run: the conversation, the input items, the response."""
    return cast(
        Run,
        SimpleNamespace(
            conversation=conversation,
            canon=SimpleNamespace(
                input_items=[
                    {
                        "type": "message",
                        "id": "msg_in",
                        "role": "user",
                        "status": "completed",
                        "content": [{"type": "input_text", "text": "hi"}],
                    },
                ]
            ),
            builder=SimpleNamespace(response={"id": "resp_1", "status": status, "output": output}),
        ),
    )


OUT = {
    "type": "message", "id": "msg_out", "role": "assistant", "status": "completed",
    "content": [{"type": "output_text", "text": "hello", "annotations": [], "logprobs": []}],
}  # fmt: skip


async def test_create_mints_ids_and_carries_the_caller() -> None:
    conv = service()
    made = await conv.create(
        {
            "metadata": {"a": "b"},
            "items": [
                {"role": "user", "content": "hi"},
                {"type": "message", "role": "assistant", "content": "hello"},
                {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
            ],
        },
        Caller(key_id="key_abc"),
    )
    validate_conversation(made)
    assert made == {
        "id": "conv_0001", "object": "conversation", "created_at": 1_700_000_000,
        "metadata": {"a": "b"},
    }  # fmt: skip
    store = cast(MemoryStore, conv.store)
    stored = await store.get_conversation("conv_0001")
    assert stored is not None and stored.api_key_id == "key_abc"
    items = await store.conversation_items("conv_0001") or []
    assert [i["id"][:3] for i in items] == ["msg", "msg", "fc_"]
    # An assistant text the client sent is a full output_text, as a ConversationItem needs.
    assert items[1]["content"][0] == {
        "type": "output_text", "text": "hello", "annotations": [], "logprobs": [],
    }  # fmt: skip
    page = await conv.add_items("conv_0001", {"items": [{"role": "user", "content": "more"}]})
    validate_conversation_item_list(page)
    assert page["first_id"] == page["last_id"] == page["data"][0]["id"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"items": "hi"}, "items", "invalid_value"),
        ({"items": [{"role": "user", "content": "x"}] * (MAX_ITEMS + 1)}, "items",
         "array_above_max_length"),
        ({"items": [{"role": "user", "content": [{"type": "bogus"}]}]},
         "items[0].content[0].type", None),
        ({"metadata": {"k": 1}}, "metadata", None),
        ({"metadata": {"k": "v"}, "extra": 1}, "extra", "unknown_parameter"),
        ([], None, "invalid_type"),
    ],
)  # fmt: skip
async def test_create_refuses_bad_bodies_naming_the_parameter(
    body: Any, param: str | None, code: str | None
) -> None:
    with pytest.raises(RequestError) as info:
        await service().create(body)
    assert info.value.status == 400 and info.value.param == param
    if code is not None:
        assert info.value.code == code
    assert "'input" not in info.value.message


async def test_unknown_ids_are_404() -> None:
    conv = service()
    made = await conv.create(None)
    for call in (
        conv.retrieve("conv_x"),
        conv.update("conv_x", {"metadata": {}}),
        conv.delete("conv_x"),
        conv.add_items("conv_x", {"items": [{"role": "user", "content": "x"}]}),
        conv.list_items("conv_x", limit=20, order="desc", after=None),
        conv.item("conv_x", "msg_1"),
        conv.delete_item("conv_x", "msg_1"),
        conv.history("conv_x"),
    ):
        with pytest.raises(RequestError) as info:
            await call
        assert (info.value.status, info.value.code) == (404, "conversation_not_found")
    for item_call in (conv.item(made["id"], "msg_1"), conv.delete_item(made["id"], "msg_1")):
        with pytest.raises(RequestError) as missing:
            await item_call
        assert (missing.value.status, missing.value.code) == (404, "item_not_found")
        assert missing.value.param == "item_id"


@pytest.mark.parametrize(
    ("status", "output", "appended"),
    [
        ("completed", [OUT], ["msg_in", "msg_out"]),
        ("incomplete", [OUT], ["msg_in", "msg_out"]),
        ("failed", [OUT], ["msg_in", "msg_out"]),  # failed part-way: what the client was shown
        ("failed", [], []),  # failed before any output: nothing (a retry does not repeat it)
        ("cancelled", [], []),
    ],
)
async def test_what_a_turn_appends(status: str, output: list[Any], appended: list[str]) -> None:
    conv = service()
    made = await conv.create({})
    await conv.append_turn(turn(made["id"], status, output))
    assert [i["id"] for i in await conv.history(made["id"])] == appended


async def test_a_turn_of_a_deleted_conversation_or_none_appends_nothing() -> None:
    conv = service()
    made = await conv.create({})
    await conv.delete(made["id"])
    await conv.append_turn(turn(made["id"], "completed", [OUT]))  # logged, not raised
    await conv.append_turn(turn(None, "completed", [OUT]))
    with pytest.raises(RequestError):
        await conv.history(made["id"])


class FailingStore(MemoryStore):
    async def append_items(self, conversation_id: str, items: list[dict[str, Any]]) -> bool:
        raise OSError("disk full")


async def test_a_failed_append_is_store_unavailable_and_marks_the_store_failing() -> None:
    conv = service(FailingStore())
    made = await conv.create({})
    with pytest.raises(StoreUnavailable):
        await conv.append_turn(turn(made["id"], "completed", [OUT]))
    assert conv.health.failure is not None and "disk full" in conv.health.failure


class ResponsesOnly(ResponseStore):
    """A complete ResponseStore that keeps no conversations."""

    async def open(self) -> None: ...
    async def aclose(self) -> None: ...
    async def put(self, record: StoredResponse) -> None: ...
    async def get(self, response_id: str) -> StoredResponse | None: ...
    async def delete(self, response_id: str) -> bool:
        return False

    async def unfinished(self) -> list[str]:
        return []

    async def accounting(self, query: SpendQuery) -> Iterable[AccountingRow]:
        return []

    async def spend(self, query: SpendQuery) -> SpendReport:
        raise NotImplementedError


async def test_a_store_without_conversations_is_a_clear_400() -> None:
    with pytest.raises(RequestError) as info:
        await service(ResponsesOnly()).create({})
    assert (info.value.status, info.value.code) == (400, "conversations_unavailable")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, None),
        ({"conversation": "conv_1"}, "conv_1"),
        ({"conversation": {"id": "conv_1"}}, "conv_1"),
    ],
)
def test_conversation_of(body: dict[str, Any], expected: str | None) -> None:
    assert conversation_of(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"conversation": 1},
        {"conversation": ""},
        {"conversation": {"name": "x"}},
        {"conversation": "conv_1", "previous_response_id": "resp_1"},
    ],
)
def test_conversation_of_refuses(body: dict[str, Any]) -> None:
    with pytest.raises(RequestError) as info:
        conversation_of(body)
    assert info.value.status == 400 and info.value.param == "conversation"
