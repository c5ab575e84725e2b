"""One contract suite for every ResponseStore backend (litestar.stores style).

Each test in the first part runs once per *registered* backend (``STORE_BACKENDS``: a backend
that registers its scheme is covered without touching this file) through the parametrized
``store``/``backend`` fixtures, on the store its ``scratch_url`` names. Then the registry, the
lifecycle and the abstract interface; the SQLite-only part covers what only a file can show
(reopen, crash, schema, pragmas).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnout.server.stores import (
    STORE_BACKENDS,
    ChainCycleError,
    ConversationStore,
    MemoryStore,
    MissingChainLinkError,
    PostgresStore,
    ResponseStore,
    SpendQuery,
    SpendReport,
    SQLiteStore,
    StoredConversation,
    StoredResponse,
    StoreUrl,
    UnknownCursorError,
    create_store,
    known_schemes,
    open_store,
    parse_store_url,
    register_store,
)
from turnout.server.stores.base import (
    AccountingRow,
    RecentFilter,
    SpendPoint,
    aggregate_series,
    aggregate_spend,
    select_recent,
)
from turnout.server.stores.columns import COLUMN_NAMES
from turnout.server.stores.sqlite import SCHEMA_VERSION, _recent_sql

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Each backend once, under its first scheme (an alias would run the same class again).
BACKENDS = sorted({cls.scheme for cls in STORE_BACKENDS.values()})


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a new, empty store of one registered backend. A backend that cannot give one
    fails here: every registered backend runs the whole contract (a database server it needs is
    started by .ci/run, never silently left out). What it made outside ``tmp_path`` (a schema
    on a database server) is dropped afterwards, whether the test passed or not."""
    cls = STORE_BACKENDS[request.param]
    url = cls.scratch_url(str(tmp_path))
    assert url is not None, f"{request.param}:// store: no scratch store; start its server"
    try:
        yield url
    finally:
        await cls.drop_scratch(url)


@pytest.fixture
async def store(backend: str) -> AsyncIterator[ResponseStore]:
    s = await open_store(backend)
    try:
        yield s
    finally:
        await s.aclose()


def record(rid: str, prev: str | None = None, **changes: Any) -> StoredResponse:
    base = StoredResponse(
        id=rid,
        created_at=1_765_552_659,
        model="claude-sonnet-4",
        provider="anthropic",
        status="completed",
        response={
            "id": rid,
            "object": "response",
            "status": "completed",
            "output": [{"type": "message", "id": f"msg_{rid}", "content": []}],
            "usage": None,
            "temperature": 1.0,
        },
        input_items=[{"id": f"{rid}_in0", "type": "message", "role": "user", "content": "hi"}],
        events=[{"type": "response.created", "sequence_number": 0}],
        request={"model": "claude-sonnet-4", "input": "hi", "stream": True},
        previous_response_id=prev,
        deployment="anthropic-eu",
        attempts=[{"provider": "anthropic", "status": 200, "ms": 812}],
        cost=0.00123,
    )
    return dataclasses.replace(base, **changes)


def same(a: Any, b: Any) -> bool:
    """Equality that also insists on identical types: 1 == 1.0 and True == 1 would hide drift."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def same_record(a: StoredResponse, b: StoredResponse) -> bool:
    return all(
        same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(StoredResponse)
    )


# -- put / get ----------------------------------------------------------------------------------


async def test_round_trip_preserves_every_field(store: ResponseStore) -> None:
    big = "é✓😀\u2028\x00" + "x" * (1024 * 1024)  # unicode, NUL, line separator, 1 MB
    rec = record(
        "resp_1",
        prev="resp_0",
        model="模型-🚀",
        provider=None,
        deployment=None,
        cost=None,
        status="incomplete",
        response={"id": "resp_1", "text": big, "nested": {"a": [1, 2.5, None, True, "ü"]}},
        input_items=[{"id": "msg_ü", "content": big}],
        events=[{"type": "response.output_text.delta", "delta": big, "sequence_number": 3}],
        request={"input": "日本語", "metadata": {"k": "v"}, "temperature": 0.0},
        attempts=[],
    )
    await store.put(rec)
    got = await store.get("resp_1")
    assert got is not None
    assert same_record(got, rec)
    assert await store.get("resp_unknown") is None


async def test_events_none_and_metadata_variants(store: ResponseStore) -> None:
    rec = record("resp_2", events=None, cost=0.0, created_at=0, attempts=[{"a": None}])
    await store.put(rec)
    got = await store.get("resp_2")
    assert got is not None and same_record(got, rec)


async def test_put_replaces(store: ResponseStore) -> None:
    await store.put(record("resp_r", status="in_progress", events=None))
    await store.put(record("resp_r", status="completed", cost=9.5))
    got = await store.get("resp_r")
    assert got is not None
    assert got.status == "completed" and got.cost == 9.5 and got.events is not None


async def test_records_are_copies(store: ResponseStore) -> None:
    rec = record("resp_c")
    await store.put(rec)
    rec.response["status"] = "mutated after put"
    got = await store.get("resp_c")
    assert got is not None and got.response["status"] == "completed"
    got.input_items.clear()
    again = await store.get("resp_c")
    assert again is not None and len(again.input_items) == 1


# -- delete -------------------------------------------------------------------------------------


async def test_delete(store: ResponseStore) -> None:
    await store.put(record("resp_d"))
    assert await store.delete("resp_d") is True
    assert await store.get("resp_d") is None
    assert await store.delete("resp_d") is False
    assert await store.delete("resp_never") is False
    assert await store.list_input_items("resp_d", limit=20, order="desc", after=None) is None
    # insert-or-replace also brings a deleted id back
    await store.put(record("resp_d", status="failed"))
    got = await store.get("resp_d")
    assert got is not None and got.status == "failed"


async def test_put_of_deleted_record_is_invisible(store: ResponseStore) -> None:
    await store.put(record("resp_t", deleted=True))
    assert await store.get("resp_t") is None
    assert await store.delete("resp_t") is False


# -- input items ----------------------------------------------------------------------------------


def ids(page: Any) -> list[str]:
    return [item["id"] for item in page.data]


async def test_input_items_paging(store: ResponseStore) -> None:
    items = [
        {"id": f"it{i}", "type": "message", "role": "user", "content": str(i)} for i in range(5)
    ]
    await store.put(record("resp_p", input_items=items))

    page = await store.list_input_items("resp_p")  # defaults: limit 20, desc
    assert page is not None
    assert ids(page) == ["it4", "it3", "it2", "it1", "it0"]
    assert (page.first_id, page.last_id, page.has_more) == ("it4", "it0", False)

    page = await store.list_input_items("resp_p", limit=2, order="desc", after=None)
    assert page is not None and ids(page) == ["it4", "it3"] and page.has_more
    page = await store.list_input_items("resp_p", limit=2, order="desc", after="it3")
    assert page is not None and ids(page) == ["it2", "it1"] and page.has_more
    # exactly the remaining items: has_more must be False (the classic off-by-one)
    page = await store.list_input_items("resp_p", limit=1, order="desc", after="it1")
    assert page is not None and ids(page) == ["it0"] and not page.has_more
    page = await store.list_input_items("resp_p", limit=5, order="asc", after=None)
    assert page is not None and ids(page) == [f"it{i}" for i in range(5)]
    assert not page.has_more
    page = await store.list_input_items("resp_p", limit=4, order="asc", after=None)
    assert page is not None and page.has_more and page.last_id == "it3"
    page = await store.list_input_items("resp_p", limit=3, order="asc", after="it1")
    assert page is not None and ids(page) == ["it2", "it3", "it4"] and not page.has_more
    # after the last item: an empty page
    page = await store.list_input_items("resp_p", limit=3, order="asc", after="it4")
    assert page is not None
    assert (page.data, page.first_id, page.last_id, page.has_more) == ([], None, None, False)

    with pytest.raises(UnknownCursorError):
        await store.list_input_items("resp_p", limit=3, order="asc", after="nope")
    with pytest.raises(ValueError):
        await store.list_input_items("resp_p", limit=0, order="asc", after=None)
    assert await store.list_input_items("resp_none", limit=3, order="asc", after=None) is None


async def test_input_items_empty(store: ResponseStore) -> None:
    await store.put(record("resp_e", input_items=[]))
    page = await store.list_input_items("resp_e", limit=20, order="desc", after=None)
    assert page is not None
    assert (page.data, page.first_id, page.last_id, page.has_more) == ([], None, None, False)


# -- chain ----------------------------------------------------------------------------------------


async def test_chain_oldest_first(store: ResponseStore) -> None:
    await store.put(record("resp_c", prev="resp_b"))
    await store.put(record("resp_a"))
    await store.put(record("resp_b", prev="resp_a"))
    chain = await store.chain("resp_c")
    assert [r.id for r in chain] == ["resp_a", "resp_b", "resp_c"]
    assert [r.id for r in await store.chain("resp_a")] == ["resp_a"]


async def test_chain_missing_link_raises(store: ResponseStore) -> None:
    await store.put(record("resp_b", prev="resp_gone"))
    await store.put(record("resp_c", prev="resp_b"))
    with pytest.raises(MissingChainLinkError) as info:
        await store.chain("resp_c")
    assert info.value.missing_id == "resp_gone" and info.value.response_id == "resp_c"
    assert "resp_gone" in str(info.value)
    with pytest.raises(MissingChainLinkError) as info:
        await store.chain("resp_unknown")
    assert info.value.missing_id == "resp_unknown"


async def test_chain_deleted_link_is_missing(store: ResponseStore) -> None:
    await store.put(record("resp_a"))
    await store.put(record("resp_b", prev="resp_a"))
    await store.delete("resp_a")
    with pytest.raises(MissingChainLinkError) as info:
        await store.chain("resp_b")
    assert info.value.missing_id == "resp_a"


async def test_chain_cycle_stops(store: ResponseStore) -> None:
    await store.put(record("resp_x", prev="resp_y"))
    await store.put(record("resp_y", prev="resp_x"))
    with pytest.raises(ChainCycleError):
        await store.chain("resp_x")
    await store.put(record("resp_self", prev="resp_self"))
    with pytest.raises(ChainCycleError):
        await store.chain("resp_self")


# -- concurrency, lifecycle -------------------------------------------------------------------


async def test_concurrent_puts(store: ResponseStore) -> None:
    recs = [record(f"resp_{i:02d}", cost=float(i)) for i in range(50)]
    await asyncio.gather(*(store.put(r) for r in recs))
    got = await asyncio.gather(*(store.get(r.id) for r in recs))
    for want, have in zip(recs, got, strict=True):
        assert have is not None and same_record(have, want)


async def test_closed_store_refuses(store: ResponseStore) -> None:
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError):
        await store.get("resp_1")


# -- property: any JSON-able response dict round-trips exactly ------------------------------------

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    # orjson, like the store, handles 64-bit integers only (documented in base.py)
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(response=st.dictionaries(st.text(), json_values, max_size=6))
async def test_any_json_response_round_trips(
    store: ResponseStore, response: dict[str, Any]
) -> None:
    rec = record("resp_prop", response=response, events=[response], request=response)
    await store.put(rec)
    got = await store.get("resp_prop")
    assert got is not None and same_record(got, rec)


# -- open_store -------------------------------------------------------------------------------


async def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    stores: list[ResponseStore] = [
        await open_store("memory://"),
        await open_store("sqlite:///:memory:"),
        await open_store("sqlite:///rel/dir/a.db"),
        await open_store(f"sqlite:///{tmp_path}/abs/b.db"),  # tmp_path starts with "/": 4 slashes
    ]
    try:
        assert isinstance(stores[0], MemoryStore)
        assert all(isinstance(s, SQLiteStore) for s in stores[1:])
        assert (tmp_path / "rel/dir/a.db").is_file()
        assert (tmp_path / "abs/b.db").is_file()
        for s in stores:
            await s.put(record("resp_u"))
            assert await s.get("resp_u") is not None
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user:hunter2@db/x", "redis://localhost", "sqlite://host/x.db", "nourl",
        "postgresql://user:hunter2@/x", "postgres://user:hunter2@db/x?password=hunter2",
        "postgresql://user:hunter2@db:99999/x", "postgresql://user:hunter2@db/x?schema=A-b",
        "postgresql://user:hunter2@db/x?pool_size=0",
    ],
)  # fmt: skip
def test_open_store_rejects(url: str) -> None:
    with pytest.raises(ValueError) as info:
        create_store(url)  # refused before anything is opened
    message = str(info.value)
    assert "memory://" in message and "sqlite:///" in message
    assert "hunter2" not in message  # never echo a URL that may hold a password
    if url.startswith(("mysql", "redis")):
        assert repr(url.split(":")[0]) in message


# -- SQLite only: durability, schema, pragmas ------------------------------------------------


async def test_sqlite_survives_close_and_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    s = await open_store(url)
    rec = record("resp_keep", prev="resp_root")
    await s.put(record("resp_root"))
    await s.put(rec)
    await s.put(record("resp_del"))
    await s.delete("resp_del")
    await s.close()

    s = await open_store(url)
    try:
        got = await s.get("resp_keep")
        assert got is not None and same_record(got, rec)
        assert [r.id for r in await s.chain("resp_keep")] == ["resp_root", "resp_keep"]
        assert await s.get("resp_del") is None and await s.delete("resp_del") is False
    finally:
        await s.close()


async def test_sqlite_put_survives_process_crash(tmp_path: Path) -> None:
    """A put that returned is on disk even if the process dies without close()."""
    db = tmp_path / "crash.db"
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from turnout.server.stores import StoredResponse, open_store

        async def main():
            s = await open_store({f"sqlite:///{db}"!r})
            await s.put(StoredResponse(
                id="resp_crash", created_at=1, model="m", provider=None, status="completed",
                response={{"ok": True}}, input_items=[], events=None, request={{}},
                previous_response_id=None, deployment=None, attempts=[], cost=None))
            os._exit(0)  # no close, no checkpoint, no atexit

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    s = await open_store(f"sqlite:///{db}")
    try:
        got = await s.get("resp_crash")
        assert got is not None and got.response == {"ok": True}
    finally:
        await s.close()


async def test_sqlite_schema_and_pragmas(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    s = SQLiteStore(db)
    await s.open()
    try:
        # synchronous is per connection: ask the store's own connection, on its own thread.
        sync_level = await s._run(lambda: s._db().execute("PRAGMA synchronous").fetchone()[0])
        assert sync_level == 2  # FULL
    finally:
        await s.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert (db.stat().st_mode & 0o777) == 0o600


async def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    s = SQLiteStore(db)
    with pytest.raises(RuntimeError, match="schema version"):
        await s.open()
    await s.aclose()


def test_stores_are_constructible_without_a_loop(tmp_path: Path) -> None:
    # create_store is called from sync start-up code; it must not need a running loop (and
    # does no I/O: the SQLite file appears at open()).
    factories: list[Callable[[], ResponseStore]] = [
        MemoryStore,
        lambda: SQLiteStore(tmp_path / "noloop.db"),
        lambda: create_store(f"sqlite:///{tmp_path}/noloop2.db"),
        lambda: create_store("postgresql://nobody:pw@192.0.2.1:1/none"),  # never connects
    ]
    for make in factories:
        s = make()
        asyncio.run(s.close())
    assert list(tmp_path.iterdir()) == []


# -- spend (issue 5) ----------------------------------------------------------------------------


def priced(rid: str, **changes: Any) -> StoredResponse:
    defaults: dict[str, Any] = {
        "input_tokens": 100, "cached_tokens": 40, "cache_write_tokens": 5, "output_tokens": 20,
        "reasoning_tokens": 8, "api_key_id": "key_a", "tags": {"team": "search"},
    }  # fmt: skip
    defaults.update(changes)
    return record(rid, **defaults)


SPEND_ROWS = [
    priced("s1", created_at=100, cost=1.0),
    priced("s2", created_at=200, cost=2.0, tags={"team": "ads"}, api_key_id="key_b"),
    priced("s3", created_at=300, cost=None, model="gpt-x", provider="openai", deployment=None),
    priced("s4", created_at=400, cost=0.5, model="gpt-x", provider="openai", tags={}),
]


async def test_accounting_fields_round_trip(store: ResponseStore) -> None:
    rec = SPEND_ROWS[1]
    await store.put(rec)
    got = await store.get(rec.id)
    assert got is not None and same_record(got, rec)


async def test_spend_groups_filters_and_counts_tombstones(store: ResponseStore) -> None:
    for rec in SPEND_ROWS:
        await store.put(rec)
    assert await store.delete("s1")  # a deleted response was still paid for
    report = await store.spend(SpendQuery())
    rows = {r.key: r for r in report.data}
    assert rows["claude-sonnet-4"].requests == 2 and rows["claude-sonnet-4"].cost == 3.0
    assert rows["gpt-x"].requests == 2 and rows["gpt-x"].cost == 0.5
    assert rows["gpt-x"].unpriced_requests == 1
    assert [r.key for r in report.data] == ["claude-sonnet-4", "gpt-x"]  # by cost
    total = report.total
    assert (total.requests, total.input_tokens, total.cached_tokens, total.cache_write_tokens,
            total.output_tokens, total.reasoning_tokens) == (4, 400, 160, 20, 80, 32)  # fmt: skip
    assert total.cost == pytest.approx(3.5)

    def keyed(r: Any) -> dict[Any, tuple[int, Any]]:
        return {row.key: (row.requests, row.cost) for row in r.data}

    assert keyed(await store.spend(SpendQuery("provider"))) == {
        "anthropic": (2, 3.0), "openai": (2, 0.5)
    }  # fmt: skip
    assert keyed(await store.spend(SpendQuery("deployment"))) == {
        "anthropic-eu": (3, 3.5), None: (1, None)
    }  # fmt: skip
    assert keyed(await store.spend(SpendQuery("api_key"))) == {
        "key_a": (3, 1.5), "key_b": (1, 2.0)
    }  # fmt: skip
    assert keyed(await store.spend(SpendQuery("metadata:team"))) == {
        "search": (2, 1.0), "ads": (1, 2.0), None: (1, 0.5)
    }  # fmt: skip
    # [start, end) and the model filter.
    assert keyed(await store.spend(SpendQuery("model", start=200, end=400))) == {
        "claude-sonnet-4": (1, 2.0), "gpt-x": (1, None)
    }  # fmt: skip
    only = await store.spend(SpendQuery("provider", model="gpt-x", start=350))
    assert keyed(only) == {"openai": (1, 0.5)}
    empty = await store.spend(SpendQuery(start=10_000))
    assert empty.data == [] and empty.total.requests == 0 and empty.total.cost is None
    body = report.as_json()
    assert body["object"] == "spend" and body["group_by"] == "model"
    assert set(body["data"][0]) == {
        "key", "requests", "input_tokens", "cached_tokens", "cache_write_tokens",
        "output_tokens", "reasoning_tokens", "cost", "unpriced_requests",
    }  # fmt: skip
    assert "key" not in body["total"]


async def test_native_spend_equals_the_reference_aggregation(store: ResponseStore) -> None:
    for rec in SPEND_ROWS:
        await store.put(rec)
    for group_by in ("model", "deployment", "provider", "api_key", "metadata:team"):
        for start, end in ((None, None), (150, 350), (300, None)):
            query = SpendQuery(group_by, start=start, end=end)
            native = await store.spend(query)
            reference = aggregate_spend(query, await store.accounting(query))
            assert native == reference


# -- spend over time and the request list (issue 16: the admin console) -------------------------


async def test_spend_series_buckets_groups_and_filters(store: ResponseStore) -> None:
    for rec in SPEND_ROWS:
        await store.put(rec)
    assert await store.delete("s1")  # counted, as by spend

    def shown(points: list[SpendPoint]) -> list[tuple[int, str | None, int, float | None]]:
        return [(p.bucket, p.row.key, p.row.requests, p.row.cost) for p in points]

    assert shown(await store.spend_series(SpendQuery("model"), 200)) == [
        (0, "claude-sonnet-4", 1, 1.0),
        (200, "claude-sonnet-4", 1, 2.0), (200, "gpt-x", 1, None),  # by cost within a bucket
        (400, "gpt-x", 1, 0.5),
    ]  # fmt: skip
    ranged = await store.spend_series(SpendQuery("api_key", start=150, end=400), 100)
    assert shown(ranged) == [(200, "key_b", 1, 2.0), (300, "key_a", 1, None)]
    assert [p.row.input_tokens for p in ranged] == [100, 100]
    assert ranged[1].row.unpriced_requests == 1
    assert await store.spend_series(SpendQuery(start=10_000), 60) == []
    with pytest.raises(ValueError, match="bucket_seconds"):
        await store.spend_series(SpendQuery(), 0)


async def test_native_spend_series_equals_the_reference(store: ResponseStore) -> None:
    for rec in SPEND_ROWS:
        await store.put(rec)
    for group_by in ("model", "deployment", "provider", "api_key", "team", "metadata:team"):
        for bucket in (1, 100, 86_400):
            for start, end in ((None, None), (150, 350)):
                query = SpendQuery(group_by, start=start, end=end)
                native = await store.spend_series(query, bucket)
                assert native == aggregate_series(query, bucket, await store.accounting(query))
                # The buckets add up to the report.
                report = await store.spend(query)
                assert sum(p.row.requests for p in native) == report.total.requests


def listed(store_rows: list[AccountingRow]) -> list[str]:
    return [r.id for r in store_rows]


async def test_recent_is_newest_first_filtered_and_paged(store: ResponseStore) -> None:
    for i in range(6):
        await store.put(
            priced(
                f"r{i}", created_at=100 + i // 2, status="failed" if i % 3 == 0 else "completed",
                model="m-even" if i % 2 == 0 else "m-odd", api_key_id=f"key_{i % 2}",
                team="blue" if i < 3 else None, duration_ms=10.5 * i,
            )
        )  # fmt: skip
    assert await store.delete("r4")
    newest = await store.recent(3)
    assert listed(newest) == ["r5", "r4", "r3"]  # created_at, then id, both descending
    assert [r.deleted for r in newest] == [False, True, False]  # a tombstone is still listed
    assert newest[0].duration_ms == 52.5 and newest[0].status == "completed"
    assert newest[0].cost == 0.00123 and newest[0].input_tokens == 100
    assert listed(await store.recent(3, RecentFilter(before=(101, "r3")))) == ["r2", "r1", "r0"]
    assert listed(await store.recent(50, RecentFilter(status="failed"))) == ["r3", "r0"]
    assert listed(await store.recent(50, RecentFilter(model="m-odd"))) == ["r5", "r3", "r1"]
    assert listed(await store.recent(50, RecentFilter(api_key_id="key_0"))) == ["r4", "r2", "r0"]
    assert listed(await store.recent(50, RecentFilter(team="blue", model="m-even"))) == [
        "r2", "r0"
    ]  # fmt: skip
    assert await store.recent(50, RecentFilter(status="queued")) == []
    for filters in (RecentFilter(), RecentFilter(model="m-even", before=(102, "r5"))):
        reference = select_recent(await store.accounting(SpendQuery()), 4, filters)
        assert await store.recent(4, filters) == reference
    with pytest.raises(ValueError, match="limit"):
        await store.recent(0)


async def test_duration_round_trips(store: ResponseStore) -> None:
    await store.put(priced("timed", duration_ms=1234.5))
    got = await store.get("timed")
    assert got is not None and got.duration_ms == 1234.5
    await store.put(priced("untimed"))
    got = await store.get("untimed")
    assert got is not None and got.duration_ms is None


async def test_sqlite_migrates_a_version_4_database(tmp_path: Path) -> None:
    db = tmp_path / "v4.db"
    s = SQLiteStore(db)
    await s.open()
    await s.put(priced("kept"))
    await s.aclose()
    conn = sqlite3.connect(db)
    undo_version_5(conn)
    conn.execute("PRAGMA user_version=4")
    conn.commit()
    conn.close()
    store = SQLiteStore(db)
    await store.open()
    try:
        assert await store.get("kept") == priced("kept")  # no duration: NULL
        await store.put(priced("new", duration_ms=5.0))
        assert listed(await store.recent(5)) == ["new", "kept"]
    finally:
        await store.aclose()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        info = [row[1:] for row in check.execute("PRAGMA table_info(responses)")]
    check.close()
    assert info == _V6_TABLE


async def test_sqlite_recent_reads_the_created_at_index(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "plan.db")
    await s.open()
    try:
        sql, params = _recent_sql(50, RecentFilter())
        plan = await s._run(
            lambda: " ".join(r[3] for r in s._db().execute(f"EXPLAIN QUERY PLAN {sql}", params))
        )
    finally:
        await s.aclose()
    assert "responses_created_at" in plan and "SCAN responses" not in plan.replace(
        "SCAN responses USING INDEX", ""
    ), plan


@pytest.mark.parametrize(
    "group_by", ["colour", "metadata:", 'metadata:a"b', "metadata:a\\b", "metadata:" + "k" * 65]
)
def test_spend_query_rejects_bad_group_by(group_by: str) -> None:
    with pytest.raises(ValueError, match="group_by"):
        SpendQuery(group_by)


_V1_TABLE = """
CREATE TABLE responses (
    id TEXT PRIMARY KEY NOT NULL, created_at INTEGER NOT NULL, model TEXT NOT NULL,
    provider TEXT, status TEXT NOT NULL, previous_response_id TEXT, deployment TEXT, cost REAL,
    deleted INTEGER NOT NULL, response BLOB NOT NULL, input_items BLOB NOT NULL, events BLOB,
    request BLOB NOT NULL, attempts BLOB NOT NULL
) STRICT
"""


async def test_sqlite_migrates_a_version_1_database(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    conn = sqlite3.connect(db)
    conn.execute(_V1_TABLE)
    usage = {
        "input_tokens": 50, "input_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 2},
        "output_tokens": 7, "output_tokens_details": {"reasoning_tokens": 3},
    }  # fmt: skip
    insert = "INSERT INTO responses VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    for rid, deleted, response, request in (
        ("old1", 0, {"id": "old1", "usage": usage}, {"metadata": {"team": "x"}}),
        ("old2", 0, {"id": "old2", "usage": None}, {"model": "m"}),
        ("old3", 1, {}, {}),
    ):
        conn.execute(
            insert,
            (rid, 5, "m", "anthropic", "completed", None, None, 0.25, deleted,
             orjson.dumps(response), b"[]", None, orjson.dumps(request), b"[]"),
        )  # fmt: skip
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()

    store = SQLiteStore(db)
    await store.open()
    try:
        old1 = await store.get("old1")
        assert old1 is not None
        assert (old1.input_tokens, old1.cached_tokens, old1.cache_write_tokens,
                old1.output_tokens, old1.reasoning_tokens) == (50, 10, 2, 7, 3)  # fmt: skip
        assert old1.tags == {"team": "x"} and old1.api_key_id is None
        old2 = await store.get("old2")
        assert old2 is not None and old2.input_tokens == 0 and old2.tags == {}
        report = await store.spend(SpendQuery("metadata:team"))
        assert {r.key: r.requests for r in report.data} == {"x": 1, None: 2}
        assert report.total.cost == pytest.approx(0.75) and report.total.input_tokens == 50
        await store.put(priced("new1"))  # and the migrated table takes new rows
        assert (await store.get("new1")) == priced("new1")
    finally:
        await store.close()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        indexes = {row[1] for row in check.execute("PRAGMA index_list(responses)")}
        assert {"responses_created_at", "responses_model_created_at"} <= indexes
    check.close()


# -- unfinished background responses ----------------------------------------------------------


async def test_unfinished_lists_live_queued_and_in_progress_records_only(
    store: ResponseStore,
) -> None:
    await store.put(record("r_done"))
    await store.put(record("r_queued", status="queued"))
    await store.put(record("r_running", status="in_progress"))
    await store.put(record("r_gone", status="queued"))
    await store.delete("r_gone")
    assert sorted(await store.unfinished()) == ["r_queued", "r_running"]
    await store.put(record("r_queued", status="completed"))  # finished meanwhile
    assert await store.unfinished() == ["r_running"]


async def test_a_restarted_gateway_fails_what_the_last_run_left_queued(
    store: ResponseStore,
) -> None:
    from tests.test_server_unit import Env, FakeRegistry
    from turnout.server.gateway import Gateway

    env = Env()
    queued = {"type": "response.created", "sequence_number": 0,
              "response": {"id": "r_q", "status": "queued"}}  # fmt: skip
    await store.put(record("r_q", status="queued", events=[queued]))
    await store.put(record("r_done"))
    gw = Gateway(env.settings, FakeRegistry(env.mapping), store, upstream=None)  # type: ignore[arg-type]
    assert await gw.recover() == 1
    failed = await store.get("r_q")
    assert failed is not None and failed.status == "failed"
    assert failed.response["status"] == "failed" and failed.response["error"]["code"]
    assert failed.events is not None
    assert [e["sequence_number"] for e in failed.events] == [0, 1]
    assert failed.events[-1] == {
        "type": "response.failed", "sequence_number": 1, "response": failed.response,
    }  # fmt: skip
    assert await store.unfinished() == [] and await gw.recover() == 0
    done = await store.get("r_done")
    assert done is not None and done.status == "completed"


# -- leases of background responses ----------------------------------------------------------


def leased(
    rid: str, owner: str = "host:1:a", until: float | None = 1000.0, **changes: Any
) -> StoredResponse:
    changes.setdefault("status", "in_progress")
    return record(rid, owner=owner, lease_until=until, **changes)


async def test_owner_and_lease_round_trip(store: ResponseStore) -> None:
    await store.put(leased("r1", until=1234.5))
    got = await store.get("r1")
    assert got is not None and (got.owner, got.lease_until) == ("host:1:a", 1234.5)


async def test_expired_unfinished_lists_only_records_whose_lease_ran_out(
    store: ResponseStore,
) -> None:
    await store.put(leased("live", until=2000.0))
    await store.put(leased("expired", until=500.0))
    await store.put(leased("no_lease", owner=None, until=None))  # written before leases
    await store.put(record("done", owner="host:1:a", lease_until=10.0))  # terminal: never
    await store.put(leased("gone", until=10.0))
    await store.delete("gone")
    assert sorted(await store.expired_unfinished(1000.0)) == ["expired", "no_lease"]
    assert sorted(await store.expired_unfinished(3000.0)) == ["expired", "live", "no_lease"]


async def test_renewal_extends_only_the_owners_unfinished_records(store: ResponseStore) -> None:
    await store.put(leased("mine", until=500.0))
    await store.put(leased("theirs", owner="other:2:b", until=500.0))
    await store.put(record("finished", owner="host:1:a", lease_until=500.0))
    renewal = await store.renew_leases("host:1:a", ["mine", "theirs", "finished", "unknown"], 900.0)
    assert renewal.held == {"mine"} and renewal.cancel == frozenset()
    assert await store.expired_unfinished(800.0) == ["theirs"]  # mine runs until 900 now
    mine = await store.get("mine")
    assert mine is not None and mine.lease_until == 900.0
    assert (await store.renew_leases("host:1:a", [], 900.0)).held == frozenset()


async def test_replace_unfinished_never_changes_a_terminal_status(store: ResponseStore) -> None:
    await store.put(leased("r1"))
    assert await store.replace_unfinished(leased("r1", output_tokens=5))  # progress
    assert await store.replace_unfinished(leased("r1", status="completed"))  # the final write
    # Another replica that thought the lease had run out: refused, the outcome stands.
    assert not await store.replace_unfinished(leased("r1", status="failed"), expired_before=5e9)
    assert not await store.replace_unfinished(leased("r1", status="in_progress"))
    got = await store.get("r1")
    assert got is not None and (got.status, got.output_tokens) == ("completed", 0)
    assert not await store.replace_unfinished(leased("unknown"))
    assert await store.get("unknown") is None  # never inserted
    await store.put(leased("deleted"))
    await store.delete("deleted")
    assert not await store.replace_unfinished(leased("deleted", status="failed"))


async def test_failing_an_expired_record_loses_to_a_live_owners_renewal(
    store: ResponseStore,
) -> None:
    await store.put(leased("r1", until=100.0))
    failed = leased("r1", status="failed")
    # The owner renewed before the other replica's conditional write: the write is refused.
    assert (await store.renew_leases("host:1:a", ["r1"], 200.0)).held == {"r1"}
    assert not await store.replace_unfinished(failed, expired_before=150.0)
    assert await store.replace_unfinished(failed, expired_before=250.0)  # really expired now
    got = await store.get("r1")
    assert got is not None and got.status == "failed"
    # The owner learns it lost the record at its next renewal.
    assert (await store.renew_leases("host:1:a", ["r1"], 300.0)).held == frozenset()
    await store.put(leased("legacy", owner=None, until=None))  # no lease: expired for anyone
    assert await store.replace_unfinished(leased("legacy", status="failed"), expired_before=1.0)


async def test_a_cancel_mark_reaches_the_owner_at_its_next_renewal(store: ResponseStore) -> None:
    await store.put(leased("r1"))
    await store.put(leased("r2"))
    await store.put(record("done"))
    assert await store.request_cancel("r1")
    assert not await store.request_cancel("done") and not await store.request_cancel("nope")
    # Progress writes by the owner keep the mark.
    assert await store.replace_unfinished(leased("r1", output_tokens=3))
    renewal = await store.renew_leases("host:1:a", ["r1", "r2"], 2000.0)
    assert renewal.held == {"r1", "r2"} and renewal.cancel == {"r1"}


def test_every_registered_backend_keeps_leases() -> None:
    names = ("replace_unfinished", "renew_leases", "request_cancel", "expired_unfinished")
    for scheme, cls in STORE_BACKENDS.items():
        for name in names:
            assert getattr(cls, name) is not getattr(ResponseStore, name), (scheme, name)


# -- retention: purge -------------------------------------------------------------------------


async def test_purge_tombstones_old_finished_records_oldest_first(store: ResponseStore) -> None:
    old = [priced(f"old{i}", created_at=100 + i, cost=1.0) for i in range(5)]
    for rec in (
        *old,
        priced("young", created_at=1000),
        priced("running", created_at=50, status="in_progress"),
        priced("queued", created_at=50, status="queued"),
    ):
        await store.put(rec)
    assert await store.delete("old0")  # already a tombstone: not counted again
    before = await store.spend(SpendQuery())
    assert await store.purge(500, limit=2) == 2
    assert [await store.get(r.id) is None for r in old] == [True, True, True, False, False]
    assert await store.purge(500, limit=2) == 2
    assert await store.purge(500, limit=2) == 0
    assert await store.get("young") is not None  # newer than the cutoff
    assert sorted(await store.unfinished()) == ["queued", "running"]  # never while at work
    after = await store.spend(SpendQuery())  # spend totals survive (summed in another order)
    assert dataclasses.replace(after.total, cost=0) == dataclasses.replace(before.total, cost=0)
    assert after.total.cost == pytest.approx(before.total.cost)
    assert await store.list_input_items("old4") is None
    with pytest.raises(MissingChainLinkError):
        await store.chain("old3")


def test_every_registered_backend_purges() -> None:
    for scheme, cls in STORE_BACKENDS.items():
        assert cls.purge is not ResponseStore.purge, scheme


async def test_sqlite_purge_gives_the_space_back(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "r.db")
    await s.open()
    try:
        big = "x" * (1024 * 1024)
        for i in range(4):
            await s.put(record(f"resp_{i}", created_at=10, input_items=[{"id": "i", "c": big}]))
        db = sqlite3.connect(tmp_path / "r.db")
        try:
            assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            assert await s.purge(20, limit=10) == 4
            assert db.execute("PRAGMA freelist_count").fetchone() == (0,)
            assert db.execute("PRAGMA page_count").fetchone()[0] < pages / 4
        finally:
            db.close()
    finally:
        await s.aclose()


# -- the registry: a backend is chosen by its URL scheme --------------------------------------


def test_the_builtin_backends_are_registered_under_their_schemes(tmp_path: Path) -> None:
    assert {"memory", "sqlite", "postgresql", "postgres"} <= set(STORE_BACKENDS)
    assert STORE_BACKENDS["memory"] is MemoryStore and STORE_BACKENDS["sqlite"] is SQLiteStore
    assert STORE_BACKENDS["postgresql"] is STORE_BACKENDS["postgres"] is PostgresStore
    for scheme, cls in STORE_BACKENDS.items():
        # An alias (postgres://) opens the backend registered under its first scheme.
        assert STORE_BACKENDS[cls.scheme] is cls and cls.url_forms, cls
        url = cls.scratch_url(str(tmp_path))
        assert url is not None, scheme  # every backend validates its own URLs
        assert parse_store_url(url).scheme == cls.scheme
        assert type(create_store(url)) is cls


@pytest.mark.parametrize("url", ["mysql://user:hunter2@db/x", "REDIS://localhost"])
def test_an_unknown_scheme_names_the_known_ones(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_store_url(url)
    message = str(info.value)
    assert f"(known schemes: {', '.join(known_schemes())})" in message
    assert all(scheme in message for scheme in STORE_BACKENDS)
    assert repr(url.split(":")[0].lower()) in message and "hunter2" not in message


class DictStore(MemoryStore):
    """A backend defined outside the package: registered, it is reachable from a URL."""

    url_forms = ("test-dict://",)

    @classmethod
    def parse_url(cls, url: str) -> StoreUrl:
        rest = url.partition("://")[2]
        if rest not in ("", "fast"):
            raise ValueError("test-dict store url takes nothing or 'fast'")
        return StoreUrl("test-dict", rest)

    @classmethod
    def from_url(cls, url: StoreUrl) -> DictStore:
        return cls()

    @classmethod
    def scratch_url(cls, folder: str) -> str:
        return "test-dict://"


@pytest.fixture
def dict_backend() -> Iterable[None]:
    before = dict(STORE_BACKENDS)
    register_store("test-dict", "test-dict2")(DictStore)
    try:
        yield
    finally:
        STORE_BACKENDS.clear()
        STORE_BACKENDS.update(before)


async def test_a_backend_registers_its_scheme_in_one_place(dict_backend: None) -> None:
    assert DictStore.scheme == "test-dict" and STORE_BACKENDS["test-dict2"] is DictStore
    assert parse_store_url("Test-Dict://fast") == StoreUrl("test-dict", "fast")
    s = await open_store("test-dict2://")
    assert type(s) is DictStore
    await s.put(record("resp_1"))
    assert await s.get("resp_1") is not None
    await s.aclose()
    # Its own validation, with every registered backend's forms appended.
    with pytest.raises(ValueError) as info:
        create_store("test-dict://slow")
    assert "takes nothing or 'fast'" in str(info.value)
    assert "test-dict://" in str(info.value) and "sqlite:///" in str(info.value)
    known = "memory, postgres, postgresql, sqlite, test-dict, test-dict2"
    with pytest.raises(ValueError, match=f"known schemes: {known}"):
        parse_store_url("nope://")


def test_register_store_refuses_what_cannot_be_a_backend(dict_backend: None) -> None:
    class Incomplete(DictStore):
        @abstractmethod
        async def unfinished(self) -> list[str]: ...

    with pytest.raises(TypeError, match=r"abstract \(missing: unfinished\)"):
        register_store("incomplete")(Incomplete)

    class NoUrl(ResponseStore):
        """Complete, but takes no URL: fine to pass to create_app, not to register."""

        async def open(self) -> None: ...
        async def aclose(self) -> None: ...
        async def put(self, record: StoredResponse) -> None: ...
        async def get(self, response_id: str) -> StoredResponse | None: ...
        async def delete(self, response_id: str) -> bool: ...
        async def unfinished(self) -> list[str]: ...
        async def accounting(self, query: SpendQuery) -> Iterable[AccountingRow]: ...
        async def spend(self, query: SpendQuery) -> SpendReport: ...

    NoUrl()
    with pytest.raises(TypeError, match="parse_url"):
        register_store("no-url")(NoUrl)
    with pytest.raises(ValueError, match="taken by"):
        register_store("sqlite")(DictStore)
    with pytest.raises(ValueError, match="not a lower-case URL scheme"):
        register_store("Bad_Scheme")(DictStore)
    assert {"incomplete", "no-url", "Bad_Scheme"}.isdisjoint(STORE_BACKENDS)
    assert STORE_BACKENDS["sqlite"] is SQLiteStore


# -- the interface: what a backend must implement ---------------------------------------------


def test_unfinished_accounting_spend_and_the_lifecycle_are_abstract() -> None:
    assert {
        "open", "aclose", "put", "get", "delete", "unfinished", "accounting", "spend",
    } <= ResponseStore.__abstractmethods__  # fmt: skip

    class NoRecovery(ResponseStore):
        """Everything but unfinished(): a default of [] would silently turn off recovery."""

        async def open(self) -> None: ...
        async def aclose(self) -> None: ...
        async def put(self, record: StoredResponse) -> None: ...
        async def get(self, response_id: str) -> StoredResponse | None: ...
        async def delete(self, response_id: str) -> bool: ...
        async def accounting(self, query: SpendQuery) -> Iterable[AccountingRow]: ...
        async def spend(self, query: SpendQuery) -> SpendReport: ...

    with pytest.raises(TypeError, match="unfinished"):
        NoRecovery()  # type: ignore[abstract]

    assert not MemoryStore.__abstractmethods__ and not SQLiteStore.__abstractmethods__


def test_every_record_field_has_exactly_one_column() -> None:
    assert sorted(COLUMN_NAMES) == sorted(f.name for f in dataclasses.fields(StoredResponse))
    assert len(set(COLUMN_NAMES)) == len(COLUMN_NAMES)


# -- lifecycle: open() and aclose() --------------------------------------------------------------


async def test_open_and_aclose_are_idempotent_and_a_closed_store_stays_closed(
    backend: str,
) -> None:
    s = create_store(backend)
    await s.open()
    await s.open()  # a second open is a no-op
    await asyncio.gather(s.open(), s.open())
    await s.put(record("resp_l"))
    assert await s.get("resp_l") is not None
    await s.aclose()
    await s.aclose()  # and so is a second close
    await s.close()  # the older name
    with pytest.raises(RuntimeError, match="closed"):
        await s.get("resp_l")
    with pytest.raises(RuntimeError, match="closed"):
        await s.put(record("resp_m"))
    with pytest.raises(RuntimeError, match="cannot be reopened"):
        await s.open()


async def test_a_store_never_opened_closes_and_stays_closed(backend: str) -> None:
    s = create_store(backend)
    await s.aclose()
    await s.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await s.open()


async def test_aclose_lets_puts_already_accepted_land(backend: str) -> None:
    s = await open_store(backend)
    writes = [asyncio.create_task(s.put(record(f"resp_{i}"))) for i in range(20)]
    await asyncio.sleep(0)  # every put accepted, the first batch on its way
    await s.aclose()
    await asyncio.gather(*writes)  # none failed
    if not backend.startswith("memory"):
        again = await open_store(backend)
        try:
            assert all([await again.get(f"resp_{i}") for i in range(20)])
        finally:
            await again.aclose()


# -- SQLite: opening ----------------------------------------------------------------------------


async def test_sqlite_opens_in_open_on_its_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "late.db"
    s = SQLiteStore(db)
    assert not db.exists()  # the constructor does no I/O
    with pytest.raises(RuntimeError, match=r"not open \(await store.open\(\) first\)"):
        await s.get("resp_1")
    with pytest.raises(RuntimeError, match="not open"):
        await s.put(record("resp_1"))
    threads: list[str] = []
    real_open = SQLiteStore._open

    def spy(self: SQLiteStore) -> None:
        threads.append(threading.current_thread().name)
        real_open(self)

    monkeypatch.setattr(SQLiteStore, "_open", spy)
    await s.open()
    await s.open()
    try:
        assert db.is_file() and len(threads) == 1
        assert threads[0].startswith("turnout-sqlite") and threads[0] != "MainThread"
        await s.put(record("resp_1"))
        assert await s.get("resp_1") is not None
    finally:
        await s.aclose()


async def test_sqlite_a_failed_open_leaves_nothing_behind_and_can_be_retried(
    tmp_path: Path,
) -> None:
    db = tmp_path / "future.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    s = SQLiteStore(db)
    with pytest.raises(RuntimeError, match="schema version"):
        await s.open()
    assert s._executor is None and s._conn is None  # no thread, no connection
    with pytest.raises(RuntimeError, match="not open"):
        await s.get("resp_1")
    db.unlink()  # the operator moves the newer file away
    await s.open()
    try:
        await s.put(record("resp_1"))
        assert await s.get("resp_1") is not None
    finally:
        await s.aclose()


# The version-2 table as it must stay (a change means a new schema version and a migration).
_V2_TABLE = [
    ("id", "TEXT", 1, None, 1),
    ("created_at", "INTEGER", 1, None, 0),
    ("model", "TEXT", 1, None, 0),
    ("provider", "TEXT", 0, None, 0),
    ("status", "TEXT", 1, None, 0),
    ("previous_response_id", "TEXT", 0, None, 0),
    ("deployment", "TEXT", 0, None, 0),
    ("cost", "REAL", 0, None, 0),
    ("deleted", "INTEGER", 1, None, 0),
    ("response", "BLOB", 1, None, 0),
    ("input_items", "BLOB", 1, None, 0),
    ("events", "BLOB", 0, None, 0),
    ("request", "BLOB", 1, None, 0),
    ("attempts", "BLOB", 1, None, 0),
    ("input_tokens", "INTEGER", 1, "0", 0),
    ("cached_tokens", "INTEGER", 1, "0", 0),
    ("cache_write_tokens", "INTEGER", 1, "0", 0),
    ("output_tokens", "INTEGER", 1, "0", 0),
    ("reasoning_tokens", "INTEGER", 1, "0", 0),
    ("api_key_id", "TEXT", 0, None, 0),
    ("tags", "TEXT", 1, "'{}'", 0),
]
_V4_TABLE = [*_V2_TABLE, ("team", "TEXT", 0, None, 0)]
_V5_TABLE = [*_V4_TABLE, ("duration_ms", "REAL", 0, None, 0)]
_V6_TABLE = [
    *_V5_TABLE,
    ("owner", "TEXT", 0, None, 0),
    ("lease_until", "REAL", 0, None, 0),
    ("cancel_requested", "INTEGER", 1, "0", 0),
]


async def test_sqlite_a_new_file_and_a_migrated_one_have_the_same_table(tmp_path: Path) -> None:
    fresh, old = tmp_path / "fresh.db", tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute(_V1_TABLE)
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    for db in (fresh, old):
        s = SQLiteStore(db)
        await s.open()
        await s.aclose()
        with sqlite3.connect(db) as check:
            info = [row[1:] for row in check.execute("PRAGMA table_info(responses)")]
            indexes = {row[1] for row in check.execute("PRAGMA index_list(responses)")}
        check.close()
        assert info == _V6_TABLE, db.name
        assert {"responses_created_at", "responses_model_created_at", "responses_unfinished"} <= (
            indexes
        )


# -- conversations: every registered backend is a ConversationStore too --------------------------


def conversation_store(store: ResponseStore) -> ConversationStore:
    assert isinstance(store, ConversationStore), f"{type(store).__name__} keeps no conversations"
    return store


def item(item_id: str, text: str = "hi") -> dict[str, Any]:
    return {
        "type": "message", "id": item_id, "role": "user", "status": "completed",
        "content": [{"type": "input_text", "text": text}],
    }  # fmt: skip


def test_every_registered_backend_keeps_conversations() -> None:
    for scheme, cls in STORE_BACKENDS.items():
        assert issubclass(cls, ConversationStore), scheme
        assert not cls.__abstractmethods__, scheme


async def test_conversation_round_trip_with_initial_items(store: ResponseStore) -> None:
    s = conversation_store(store)
    conv = StoredConversation("conv_1", 1_765_552_659, {"topic": "x"}, "key_abc")
    await s.create_conversation(conv, [item("msg_1"), item("msg_2", "there")])
    got = await s.get_conversation("conv_1")
    assert got == conv and got is not conv
    assert [i["id"] for i in await s.conversation_items("conv_1") or []] == ["msg_1", "msg_2"]
    assert await s.get_item("conv_1", "msg_2") == item("msg_2", "there")
    assert await s.get_item("conv_1", "msg_9") is None
    assert await s.get_conversation("conv_2") is None
    assert await s.conversation_items("conv_2") is None
    assert await s.get_item("conv_2", "msg_1") is None


async def test_conversation_without_items_and_copies(store: ResponseStore) -> None:
    s = conversation_store(store)
    conv = StoredConversation("conv_e", 5)
    await s.create_conversation(conv, [])
    conv.metadata["later"] = "change"  # never reaches the store
    got = await s.get_conversation("conv_e")
    assert got is not None and got.metadata == {} and got.api_key_id is None
    assert await s.conversation_items("conv_e") == []
    page = await s.list_items("conv_e")
    assert page is not None and page.data == [] and not page.has_more


async def test_update_conversation_metadata(store: ResponseStore) -> None:
    s = conversation_store(store)
    await s.create_conversation(StoredConversation("conv_u", 5, {"a": "1"}), [item("msg_1")])
    updated = await s.update_conversation("conv_u", {"b": "2"})
    assert updated == StoredConversation("conv_u", 5, {"b": "2"})
    assert await s.get_conversation("conv_u") == updated
    assert await s.conversation_items("conv_u") == [item("msg_1")]  # items untouched
    assert await s.update_conversation("conv_nope", {}) is None


async def test_delete_conversation_forgets_it_and_its_items(store: ResponseStore) -> None:
    s = conversation_store(store)
    await s.create_conversation(StoredConversation("conv_d", 5), [item("msg_1")])
    await s.create_conversation(StoredConversation("conv_k", 5), [item("msg_1")])
    assert await s.delete_conversation("conv_d") is True
    assert await s.get_conversation("conv_d") is None
    assert await s.conversation_items("conv_d") is None
    assert await s.append_items("conv_d", [item("msg_2")]) is False
    assert await s.delete_conversation("conv_d") is False
    assert await s.conversation_items("conv_k") == [item("msg_1")]  # the other one stays


async def test_append_items_keeps_order_across_turns(store: ResponseStore) -> None:
    s = conversation_store(store)
    await s.create_conversation(StoredConversation("conv_a", 5), [item("msg_0")])
    assert await s.append_items("conv_a", [item("msg_1"), item("msg_2")]) is True
    assert await s.append_items("conv_a", [item("msg_3")]) is True
    assert await s.append_items("conv_a", []) is True
    ids = [i["id"] for i in await s.conversation_items("conv_a") or []]
    assert ids == ["msg_0", "msg_1", "msg_2", "msg_3"]
    assert await s.append_items("conv_missing", [item("msg_x")]) is False
    assert await s.conversation_items("conv_missing") is None


async def test_concurrent_appends_are_atomic_per_turn(store: ResponseStore) -> None:
    s = conversation_store(store)
    await s.create_conversation(StoredConversation("conv_c", 5), [])
    turns = [[item(f"msg_{t}_{i}") for i in range(5)] for t in range(12)]
    assert all(await asyncio.gather(*(s.append_items("conv_c", turn) for turn in turns)))
    ids = [i["id"] for i in await s.conversation_items("conv_c") or []]
    assert len(ids) == 60
    # Each turn's items are contiguous and in their own order, whatever order the turns landed.
    for start in range(0, 60, 5):
        turn = ids[start : start + 5]
        prefix = turn[0].rsplit("_", 1)[0]
        assert turn == [f"{prefix}_{i}" for i in range(5)]


async def test_conversation_items_paging(store: ResponseStore) -> None:
    s = conversation_store(store)
    await s.create_conversation(
        StoredConversation("conv_p", 5), [item(f"msg_{i}") for i in range(5)]
    )
    page = await s.list_items("conv_p", limit=2)  # default order: desc
    assert page is not None
    assert [i["id"] for i in page.data] == ["msg_4", "msg_3"] and page.has_more
    assert (page.first_id, page.last_id) == ("msg_4", "msg_3")
    page = await s.list_items("conv_p", limit=2, order="asc", after="msg_2")
    assert page is not None and [i["id"] for i in page.data] == ["msg_3", "msg_4"]
    assert not page.has_more
    with pytest.raises(UnknownCursorError):
        await s.list_items("conv_p", after="msg_nope")
    assert await s.list_items("conv_nope") is None


async def test_delete_one_item(store: ResponseStore) -> None:
    s = conversation_store(store)
    await s.create_conversation(
        StoredConversation("conv_i", 5), [item(f"msg_{i}") for i in range(3)]
    )
    assert await s.delete_item("conv_i", "msg_1") is True
    assert await s.delete_item("conv_i", "msg_1") is False
    assert await s.delete_item("conv_nope", "msg_0") is None
    assert [i["id"] for i in await s.conversation_items("conv_i") or []] == ["msg_0", "msg_2"]
    await s.append_items("conv_i", [item("msg_3")])  # appends still go after the last one
    assert [i["id"] for i in await s.conversation_items("conv_i") or []] == [
        "msg_0", "msg_2", "msg_3",
    ]  # fmt: skip


async def test_closed_store_refuses_conversations(backend: str) -> None:
    s = conversation_store(await open_store(backend))
    await s.create_conversation(StoredConversation("conv_z", 5), [])
    assert isinstance(s, ResponseStore)
    await s.aclose()
    with pytest.raises(RuntimeError):
        await s.get_conversation("conv_z")
    with pytest.raises(RuntimeError):
        await s.append_items("conv_z", [item("msg_1")])


async def test_sqlite_conversations_survive_reopen(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    s = SQLiteStore(db)
    await s.open()
    await s.create_conversation(StoredConversation("conv_r", 7, {"k": "v"}), [item("msg_1")])
    await s.append_items("conv_r", [item("msg_2")])
    await s.aclose()
    again = SQLiteStore(db)
    await again.open()
    try:
        assert await again.get_conversation("conv_r") == StoredConversation("conv_r", 7, {"k": "v"})
        assert [i["id"] for i in await again.conversation_items("conv_r") or []] == [
            "msg_1", "msg_2",
        ]  # fmt: skip
    finally:
        await again.aclose()


def undo_version_5(conn: sqlite3.Connection) -> None:
    """A version-6 file made what version 4 was: no lease columns, no duration column."""
    undo_version_6(conn)
    conn.execute("ALTER TABLE responses DROP COLUMN duration_ms")


def undo_version_6(conn: sqlite3.Connection) -> None:
    """A version-6 file made what version 5 was: no lease columns."""
    for column in ("owner", "lease_until", "cancel_requested"):
        conn.execute(f"ALTER TABLE responses DROP COLUMN {column}")


def undo_version_4(conn: sqlite3.Connection) -> None:
    """A version-6 file made what version 3 was: no key tables, no team columns."""
    undo_version_5(conn)
    for table in ("api_keys", "teams", "audit_log"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DROP INDEX responses_key_created_at")
    conn.execute("DROP INDEX responses_team_created_at")
    conn.execute("ALTER TABLE responses DROP COLUMN team")
    conn.execute("ALTER TABLE conversations DROP COLUMN team")


async def test_sqlite_migrates_a_version_4_database_to_leases(tmp_path: Path) -> None:
    db = tmp_path / "v4.db"
    s = SQLiteStore(db)
    await s.open()
    await s.put(priced("kept"))
    await s.put(priced("running", status="in_progress"))
    await s.aclose()
    conn = sqlite3.connect(db)
    undo_version_5(conn)
    conn.execute("PRAGMA user_version=4")
    conn.commit()
    conn.close()
    store = SQLiteStore(db)
    await store.open()
    try:
        assert store.migrations_applied == (5, 6)
        assert await store.get("kept") == priced("kept")
        # A record from before leases has none: any replica may fail it.
        assert await store.expired_unfinished(0.0) == ["running"]
        assert await store.request_cancel("running")
    finally:
        await store.aclose()


async def test_sqlite_migrates_a_version_2_database(tmp_path: Path) -> None:
    db = tmp_path / "v2.db"
    s = SQLiteStore(db)
    await s.open()
    await s.put(priced("kept"))
    await s.aclose()
    # What version 2 was: the responses table and its indexes, no conversation tables.
    conn = sqlite3.connect(db)
    undo_version_4(conn)
    conn.execute("DROP TABLE conversation_items")
    conn.execute("DROP TABLE conversations")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()

    store = SQLiteStore(db)
    await store.open()
    try:
        assert await store.get("kept") == priced("kept")
        await store.create_conversation(StoredConversation("conv_m", 5), [item("msg_1")])
        assert await store.conversation_items("conv_m") == [item("msg_1")]
    finally:
        await store.aclose()
    fresh = SQLiteStore(tmp_path / "fresh.db")
    await fresh.open()
    await fresh.aclose()
    schemas = []
    for path in (db, tmp_path / "fresh.db"):
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
            schemas.append(
                check.execute(
                    "SELECT type, name, sql FROM sqlite_master WHERE name LIKE 'conversation%' "
                    "ORDER BY name"
                ).fetchall()
            )
        check.close()
    # The migrated file has exactly the conversation tables and index a new file has.
    assert schemas[0] == schemas[1] and len(schemas[0]) >= 3


async def test_sqlite_migrates_a_version_5_database(tmp_path: Path) -> None:
    """Version 5 (durations, no leases) -> 6: the lease columns arrive, the rows stay."""
    db = tmp_path / "v5.db"
    s = SQLiteStore(db)
    await s.open()
    await s.put(priced("timed", duration_ms=7.0))
    await s.aclose()
    conn = sqlite3.connect(db)
    undo_version_6(conn)
    conn.execute("PRAGMA user_version=5")
    conn.commit()
    conn.close()
    store = SQLiteStore(db)
    await store.open()
    try:
        assert await store.get("timed") == priced("timed", duration_ms=7.0)
    finally:
        await store.aclose()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        info = [row[1:] for row in check.execute("PRAGMA table_info(responses)")]
    check.close()
    assert info == _V6_TABLE
