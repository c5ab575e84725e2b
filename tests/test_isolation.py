"""server/access/isolation.py and the read paths that apply it, on their own: a chain
(`history.load_chain`, a socket's memory), conversations and the spend scope. Another key gets
exactly what an unknown id gets. End to end: tests/test_e2e_isolation.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from turnout.engine.errors import RequestError
from turnout.engine.ids import DeterministicIdFactory
from turnout.server.access.isolation import spend_scope, visible
from turnout.server.conversations import Conversations
from turnout.server.history import load_chain
from turnout.server.request_context import ANONYMOUS, Caller
from turnout.server.socket_memory import SocketMemory
from turnout.server.store_health import StoreHealth
from turnout.server.stores import MemoryStore, StoredResponse

pytestmark = pytest.mark.anyio

ALICE = Caller(key_id="key_alice", team="red", role="key")
ALICE_MATE = Caller(key_id="key_mate", team="red", role="key")
BOB = Caller(key_id="key_bob", team="blue", role="key")
SOLO = Caller(key_id="key_solo", role="key")  # no team
MASTER = Caller(key_id="key_master", role="master")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def record(rid: str, prev: str | None, owner: Caller) -> StoredResponse:
    return StoredResponse(
        id=rid, created_at=1, model="m", provider="fake", status="completed",
        response={"id": rid, "output": []}, input_items=[], events=None, request={},
        previous_response_id=prev, deployment=None, attempts=[], cost=None,
        api_key_id=owner.key_id, team=owner.team,
    )  # fmt: skip


async def refusal(call: Callable[[], Awaitable[Any]]) -> RequestError:
    with pytest.raises(RequestError) as info:
        await call()
    return info.value


def test_the_rule_own_team_master_open() -> None:
    thing = record("resp_1", None, ALICE)
    assert visible(ALICE, thing) is thing and visible(ALICE_MATE, thing) is thing
    assert visible(MASTER, thing) is thing and visible(ANONYMOUS, thing) is thing
    assert visible(BOB, thing) is None and visible(SOLO, thing) is None
    # Two team-less keys are not a team.
    assert visible(SOLO, record("resp_2", None, Caller(key_id="key_x", role="key"))) is None


async def test_a_chain_of_another_key_is_a_missing_link() -> None:
    store = MemoryStore()
    await store.put(record("resp_a", None, ALICE))
    await store.put(record("resp_b", "resp_a", ALICE_MATE))
    assert [r.id for r in await load_chain(store, "resp_b", ALICE)] == ["resp_a", "resp_b"]
    assert [r.id for r in await load_chain(store, "resp_b", MASTER)] == ["resp_a", "resp_b"]
    unknown = await refusal(lambda: load_chain(store, "resp_zzz", BOB))
    foreign = await refusal(lambda: load_chain(store, "resp_b", BOB))
    assert (foreign.status, foreign.code, foreign.param) == (unknown.status, unknown.code,
                                                             unknown.param)  # fmt: skip
    assert foreign.message == unknown.message.replace("resp_zzz", "resp_b")
    # A head the caller may see on an ancestor it may not (a team change, the master key
    # chaining from anyone's): the broken link, as for a deleted ancestor.
    await store.put(record("resp_c", "resp_a", BOB))
    ancestor = await refusal(lambda: load_chain(store, "resp_c", BOB))
    assert ancestor.code == "previous_response_not_found" and "'resp_a'" in ancestor.message


async def test_a_sockets_memory_is_checked_like_the_store() -> None:
    store, memory = MemoryStore(), SocketMemory()
    await store.put(record("resp_a", None, ALICE))
    memory.records["resp_b"] = record("resp_b", "resp_a", ALICE)
    assert [r.id for r in await memory.chain(store, "resp_b", ALICE_MATE)] == ["resp_a", "resp_b"]
    refused = await refusal(lambda: memory.chain(store, "resp_b", BOB))
    assert refused.status == 404 and refused.code == "previous_response_not_found"
    assert refused.message == "Previous response with id 'resp_b' not found."


async def test_a_conversation_is_its_keys_and_its_teams() -> None:
    conversations = Conversations(MemoryStore(), StoreHealth(), DeterministicIdFactory())
    created = await conversations.create(
        {"items": [{"type": "message", "role": "user", "content": "hi"}]}, ALICE
    )
    cid = created["id"]
    item_id = (await conversations.list_items(cid, ALICE, limit=5, order="asc", after=None)).data[
        0
    ]["id"]
    item = {"items": [{"type": "message", "role": "user", "content": "more"}]}
    calls: dict[str, Callable[[Caller, str], Awaitable[Any]]] = {
        "retrieve": lambda c, i: conversations.retrieve(i, c),
        "update": lambda c, i: conversations.update(i, {"metadata": {"a": "b"}}, c),
        "add_items": lambda c, i: conversations.add_items(i, item, c),
        "list_items": lambda c, i: conversations.list_items(i, c, limit=5, order="asc", after=None),
        "item": lambda c, i: conversations.item(i, item_id, c),
        "history": lambda c, i: conversations.history(i, c),
        "delete_item": lambda c, i: conversations.delete_item(i, item_id, c),
        "delete": lambda c, i: conversations.delete(i, c),
    }
    for name, call in calls.items():
        unknown = await refusal(lambda call=call: call(BOB, "conv_unknown"))  # type: ignore[misc]
        foreign = await refusal(lambda call=call: call(BOB, cid))  # type: ignore[misc]
        assert (foreign.status, foreign.code, foreign.param) == (404, unknown.code,
                                                                 unknown.param), name  # fmt: skip
        assert foreign.message == unknown.message.replace("conv_unknown", cid), name
    assert (await conversations.history(cid, ALICE))[0]["id"] == item_id  # nothing changed
    for call in calls.values():  # a team-mate may do all of it, the last call deletes
        await call(ALICE_MATE, cid)
    assert (await refusal(lambda: conversations.retrieve(cid, MASTER))).status == 404


def test_spend_scope_a_key_sees_its_own_or_its_teams() -> None:
    assert spend_scope(MASTER, None, None) == (None, None)
    assert spend_scope(MASTER, "key_bob", "red") == ("key_bob", "red")
    assert spend_scope(ANONYMOUS, None, "blue") == (None, "blue")
    assert spend_scope(ALICE, None, None) == ("key_alice", None)
    assert spend_scope(ALICE, "key_alice", None) == ("key_alice", None)
    assert spend_scope(ALICE, None, "red") == (None, "red")
    assert spend_scope(ALICE, "key_mate", "red") == ("key_mate", "red")
    for api_key_id, team in (("key_bob", None), (None, "blue")):
        with pytest.raises(RequestError) as refused:
            spend_scope(ALICE, api_key_id, team)
        assert (refused.value.status, refused.value.code) == (403, "permission_denied")
    with pytest.raises(RequestError):
        spend_scope(SOLO, None, "red")
