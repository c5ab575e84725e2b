"""The SQLite store's chain read (one walk statement, the links it has not decoded yet in one
more) and its cache of decoded links: never stale after a delete, a purge or a rewrite, made by
this process or another."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from turnout.server.stores.base import MissingChainLinkError, StoredResponse
from turnout.server.stores.sqlite import SQLiteStore, _ChainCache

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def record(rid: str, prev: str | None = None, **changes: Any) -> StoredResponse:
    base = StoredResponse(
        id=rid,
        created_at=1_765_552_659,
        model="m",
        provider="openai",
        status="completed",
        response={"id": rid, "status": "completed", "output": [{"id": f"msg_{rid}"}]},
        input_items=[{"id": f"{rid}_in", "type": "message", "role": "user", "content": "hi"}],
        events=[{"type": "response.created", "sequence_number": 0}],
        request={"model": "m", "input": "hi"},
        previous_response_id=prev,
        deployment=None,
        attempts=[{"provider": "openai", "status": 200}],
        cost=None,
        api_key_id="key_a",
        team="t",
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "chain.db")
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


async def _chain_of(store: SQLiteStore, n: int) -> list[str]:
    ids = [f"resp_{i}" for i in range(n)]
    for i, rid in enumerate(ids):
        await store.put(record(rid, ids[i - 1] if i else None))
    return ids


def _selects(store: SQLiteStore, response_id: str) -> tuple[list[StoredResponse], list[str]]:
    """The chain read on this thread (its own reader connection), and the SELECTs it ran."""
    conn = store._rdb()
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        chain = store._chain(response_id)
    finally:
        conn.set_trace_callback(None)
    return chain, [s for s in statements if "SELECT" in s]


async def test_a_warm_chain_is_one_statement(store: SQLiteStore) -> None:
    ids = await _chain_of(store, 30)
    chain, cold = _selects(store, ids[-1])
    assert [r.id for r in chain] == ids
    assert len(cold) == 2  # the walk, then the 30 links at once (not one lookup per link)
    chain, warm = _selects(store, ids[-1])
    assert [r.id for r in chain] == ids and len(warm) == 1
    # The next turn: the walk and the one new link.
    await store.put(record("resp_next", ids[-1]))
    chain, next_turn = _selects(store, "resp_next")
    assert [r.id for r in chain] == [*ids, "resp_next"] and len(next_turn) == 2


async def test_chain_links_leave_out_events_and_request(store: SQLiteStore) -> None:
    ids = await _chain_of(store, 3)
    for link in await store.chain(ids[-1]):
        full = await store.get(link.id)
        assert full is not None and full.events and full.request
        assert link.events is None and link.request == {}
        assert dataclasses.replace(full, events=None, request={}) == link


async def test_a_deleted_link_breaks_a_cached_chain(store: SQLiteStore) -> None:
    ids = await _chain_of(store, 5)
    await store.chain(ids[-1])  # every link cached
    assert await store.delete(ids[2])
    with pytest.raises(MissingChainLinkError) as info:
        await store.chain(ids[-1])
    assert info.value.missing_id == ids[2]
    assert [r.id for r in await store.chain(ids[1])] == ids[:2]


async def test_a_link_deleted_by_another_process_breaks_a_cached_chain(
    store: SQLiteStore,
) -> None:
    ids = await _chain_of(store, 5)
    await store.chain(ids[-1])
    # Another process (a second worker, `turnout` retention) tombstones a link: this store's
    # cache never hears of it.
    other = sqlite3.connect(store.path)
    other.execute("UPDATE responses SET deleted = 1 WHERE id = ?", (ids[1],))
    other.commit()
    other.close()
    with pytest.raises(MissingChainLinkError) as info:
        await store.chain(ids[-1])
    assert info.value.missing_id == ids[1]


async def test_a_purged_link_breaks_a_cached_chain(store: SQLiteStore) -> None:
    ids = await _chain_of(store, 3)
    await store.chain(ids[-1])
    assert await store.purge(1_765_552_660, limit=100) == 3
    with pytest.raises(MissingChainLinkError):
        await store.chain(ids[-1])


async def test_a_rewritten_link_is_read_again(store: SQLiteStore) -> None:
    ids = await _chain_of(store, 3)
    await store.chain(ids[-1])
    changed = [{"id": "x", "type": "message", "role": "user", "content": "changed text"}]
    await store.put(record(ids[1], ids[0], input_items=changed))
    chain = await store.chain(ids[-1])
    assert chain[1].input_items == changed


async def test_branches_from_one_parent(store: SQLiteStore) -> None:
    ids = await _chain_of(store, 3)
    await store.put(record("resp_left", ids[-1]))
    await store.put(record("resp_right", ids[-1]))
    left = await store.chain("resp_left")
    right = await store.chain("resp_right")
    assert [r.id for r in left] == [*ids, "resp_left"]
    assert [r.id for r in right] == [*ids, "resp_right"]
    assert all(a is b for a, b in zip(left[:3], right[:3], strict=True))  # decoded once


async def test_unfinished_links_are_not_cached(store: SQLiteStore) -> None:
    await store.put(record("resp_bg", status="in_progress"))
    assert (await store.chain("resp_bg"))[0].status == "in_progress"
    await store.put(record("resp_bg", status="completed"))
    assert (await store.chain("resp_bg"))[0].status == "completed"
    assert "resp_bg" in store._chain_cache._links


async def test_store_false_link_is_missing(store: SQLiteStore) -> None:
    # A `store: false` response has no row: continuing from it is a missing link, cached or not.
    ids = await _chain_of(store, 2)
    await store.chain(ids[-1])
    with pytest.raises(MissingChainLinkError) as info:
        await store.chain("resp_not_stored")
    assert info.value.missing_id == "resp_not_stored"
    await store.put(record("resp_after", "resp_not_stored"))
    with pytest.raises(MissingChainLinkError) as info:
        await store.chain("resp_after")
    assert info.value.missing_id == "resp_not_stored"


async def test_long_chain_over_several_link_queries(store: SQLiteStore) -> None:
    ids = await _chain_of(store, 1203)  # more links than one IN (...) holds
    chain = await store.chain(ids[-1])
    assert [r.id for r in chain] == ids


def test_cache_stays_within_its_budget() -> None:
    cache = _ChainCache(budget=1000)
    for i in range(50):
        rec = record(f"resp_{i}")
        cache.add((rec.id, None, "completed", 100, 50, 10), rec)
        assert cache.size <= 1000
    assert len(cache._links) == 6  # 160 bytes each
    assert cache.get("resp_49", ("resp_49", None, "completed", 100, 50, 10)) is not None
    assert cache.get("resp_0", ("resp_0", None, "completed", 100, 50, 10)) is None
    # A different stamp (the row changed) is a miss.
    assert cache.get("resp_49", ("resp_49", None, "completed", 101, 50, 10)) is None
    cache.discard("resp_49")
    assert "resp_49" not in cache._links and cache.size == 800
