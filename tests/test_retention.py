"""Retention (`retention: {days: N}`, server/retention.py): old stored responses are forgotten in
small batches by a background task, spend survives, a failure is logged and retried; on SQLite,
on PostgreSQL with two replicas purging at once, and in a running gateway."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests import postgres
from tests.conftest import gateway_env, start_gateway, stop_gateway
from tests.simulators import Simulator
from tests.test_store_contract import priced
from turnout.engine.errors import ConfigError
from turnout.server.config import load_config
from turnout.server.retention import Retention
from turnout.server.stores import (
    MemoryStore,
    PostgresStore,
    SpendQuery,
    SQLiteStore,
    open_store,
)

pytestmark = pytest.mark.anyio

DAY = 86400
NOW = 1_800_000_000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _fill(store: MemoryStore | SQLiteStore | PostgresStore, old: int, young: int) -> None:
    for i in range(old):
        await store.put(priced(f"old{i}", created_at=NOW - 40 * DAY + i, cost=1.0))
    for i in range(young):
        await store.put(priced(f"young{i}", created_at=NOW - 5 * DAY, cost=1.0))


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def purge(self, before: int, *, limit: int) -> int:
        count = await super().purge(before, limit=limit)
        self.batches.append(count)
        return count


async def test_a_run_purges_what_is_older_than_the_days_in_batches() -> None:
    store = CountingStore()
    await _fill(store, old=7, young=2)
    retention = Retention(store, 30, batch=3, pause_s=0, clock=lambda: NOW)
    assert await retention.run_once() == 7
    assert store.batches == [3, 3, 1]  # stops at the first short batch
    assert all([await store.get(f"old{i}") is None for i in range(7)])
    assert all([await store.get(f"young{i}") is not None for i in range(2)])
    report = await store.spend(SpendQuery())
    assert report.total.requests == 9 and report.total.cost == pytest.approx(9.0)
    assert await retention.run_once() == 0


class BrokenStore(MemoryStore):
    async def purge(self, before: int, *, limit: int) -> int:
        raise OSError("disk I/O error")


async def test_the_task_runs_until_closed_and_a_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = CountingStore()
    await _fill(store, old=2, young=0)
    retention = Retention(store, 30, interval_s=0.01, clock=lambda: NOW)
    retention.start()
    for _ in range(200):
        if len(store.batches) >= 3:
            break
        await asyncio.sleep(0.01)
    await retention.aclose()
    assert store.batches[:3] == [2, 0, 0]  # again every interval
    await retention.aclose()  # idempotent

    broken = Retention(BrokenStore(), 30, interval_s=0.01)
    with caplog.at_level(logging.WARNING, logger="turnout.retention"):
        broken.start()
        await asyncio.sleep(0.05)
        await broken.aclose()  # the failures did not end the task
    assert "retention: purge failed (OSError: disk I/O error)" in caplog.text


async def test_sqlite_retention(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "r.db")
    await store.open()
    try:
        await _fill(store, old=5, young=1)
        assert await Retention(store, 30, batch=2, pause_s=0, clock=lambda: NOW).run_once() == 5
        assert await store.get("young0") is not None and await store.get("old4") is None
        assert (await store.spend(SpendQuery())).total.requests == 6
    finally:
        await store.aclose()


async def test_postgres_replicas_purging_at_once_share_the_work() -> None:
    url = postgres.schema_url(f"ret_{uuid.uuid4().hex[:8]}")
    a, b = await open_store(url), await open_store(url)
    try:
        assert isinstance(a, PostgresStore) and isinstance(b, PostgresStore)
        await _fill(a, old=60, young=3)
        counts = await asyncio.gather(
            *(Retention(s, 30, batch=7, pause_s=0, clock=lambda: NOW).run_once() for s in (a, b))
        )
        assert sum(counts) == 60  # each old record purged once, no error, no waiting
        assert all([await b.get(f"young{i}") is not None for i in range(3)])
        assert (await a.spend(SpendQuery())).total.requests == 63
    finally:
        await a.aclose()
        await b.aclose()
        await PostgresStore.drop_scratch(url)


def test_the_config_key(tmp_path: Path) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text("retention: {days: 30}\n")
    assert load_config(str(config), {}).retention.days == 30
    assert load_config(None, {}).retention.days is None
    for bad in ("retention: {days: 0}\n", "retention: {}\n", "retention: {days: 1.5}\n"):
        config.write_text(bad)
        with pytest.raises(ConfigError) as info:
            load_config(str(config), {})
        assert "retention" in str(info.value.problems[0]), bad


async def test_a_gateway_with_retention_forgets_old_responses(
    tmp_path: Path, provider_sim_session: Simulator
) -> None:
    db = tmp_path / "turnout.db"
    store = SQLiteStore(db)
    await store.open()
    now = int(time.time())
    await store.put(priced("resp_old", created_at=now - 3 * DAY))
    await store.put(priced("resp_new", created_at=now - 3600))
    await store.aclose()
    config = tmp_path / "turnout.yaml"
    config.write_text(f"store: sqlite:///{db}\nretention: {{days: 2}}\n")
    env = gateway_env(provider_sim_session)
    gw = await asyncio.to_thread(start_gateway, config, env, tmp_path / "gateway.log")
    try:
        async with httpx.AsyncClient(base_url=gw.url) as client:
            for _ in range(100):  # the first run starts with the server
                if (await client.get("/v1/responses/resp_old")).status_code == 404:
                    break
                await asyncio.sleep(0.05)
            assert (await client.get("/v1/responses/resp_old")).status_code == 404
            assert (await client.get("/v1/responses/resp_new")).status_code == 200
            spend = (await client.get("/v1/spend")).json()
            assert spend["total"]["requests"] == 2
    finally:
        await asyncio.to_thread(stop_gateway, gw)
    assert "retention: 1 stored responses older than 2 days forgotten" in gw.logs()
