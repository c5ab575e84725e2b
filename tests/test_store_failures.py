"""When the store breaks, the gateway says so (issue 12, item 5).

A full disk is real here: SQLite's `max_page_count` is lowered to the file's current size on the
store's own connection, so the next write that needs a page fails with SQLITE_FULL ("database or
disk is full"), exactly as on a full disk. Before: streams were cut mid-body with no
`response.failed` and no `[DONE]`, JSON requests got a bare 500 after the upstream was paid, and
`/health` said `"store": "ok"`.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests import oas
from tests.simulators import Simulator, Slow
from turnout.server.app import create_app
from turnout.server.config import Settings
from turnout.server.stores.sqlite import SQLiteStore

KEY = "gsk-test-0123456789abcdef"
BIG = "x" * 300_000  # a record that needs new pages


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Full:
    """The gateway in process over a SQLite file whose disk can be filled and freed."""

    def __init__(self, client: AsyncTestClient[Litestar], store: SQLiteStore, path: Path) -> None:
        self.client = client
        self.store = store
        self.path = path

    async def _pragma(self, sql: str) -> Any:
        def run() -> Any:
            return self.store._db().execute(sql).fetchone()

        return await self.store._run(run)

    async def fill_disk(self) -> None:
        (pages,) = await self._pragma("PRAGMA page_count")
        await self._pragma(f"PRAGMA max_page_count = {pages}")

    async def free_disk(self) -> None:
        await self._pragma("PRAGMA max_page_count = 1073741823")

    async def create(self, text: str, **extra: Any) -> Any:
        body = {"model": "groq/llama-3.3-70b", "input": text, **extra}
        return await self.client.post("/v1/responses", json=body)


@pytest.fixture
async def full(tmp_path: Path, provider_sim: Simulator) -> AsyncIterator[Full]:
    path = tmp_path / "turnout.db"
    store = SQLiteStore(path)
    await store.open()
    env = {"GROQ_API_KEY": KEY, "GROQ_API_BASE": provider_sim.base("groq")}
    app = create_app(Settings(store=f"sqlite:///{path}", env=env), store=store)
    try:
        async with AsyncTestClient(app=app, timeout=30) as client:
            yield Full(client, store, path)
    finally:
        await store.aclose()


def sse_events(text: str) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


@pytest.mark.anyio
async def test_a_stream_whose_record_cannot_be_written_ends_in_response_failed_and_done(
    full: Full,
) -> None:
    await full.fill_disk()
    reply = await full.create(BIG, stream=True)
    assert reply.status_code == 200
    events = sse_events(reply.text)
    for event in events:
        oas.validate_event(event)
        oas.validate_event_sdk(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    last = events[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"]["message"].startswith("[store_unavailable] ")
    assert reply.text.rstrip().endswith("data: [DONE]")
    # Nothing was stored, and it says so instead of pretending.
    missing = await full.client.get(f"/v1/responses/{last['response']['id']}")
    assert missing.status_code == 404


@pytest.mark.anyio
async def test_a_json_request_whose_record_cannot_be_written_is_a_503(full: Full) -> None:
    await full.fill_disk()
    reply = await full.create(BIG)
    assert reply.status_code == 503, reply.text
    body = reply.json()
    oas.validate_error_body(body)
    assert body["error"]["code"] == "store_unavailable"
    assert body["error"]["type"] == "server_error"
    assert "Traceback" not in reply.text and KEY not in reply.text


@pytest.mark.anyio
async def test_health_fails_until_a_write_succeeds_and_nothing_stored_is_damaged(
    full: Full,
) -> None:
    kept = await full.create("stored before the disk filled up")
    assert kept.status_code == 200
    assert (await full.client.get("/health")).json() == {"status": "ok", "store": "ok"}

    await full.fill_disk()
    assert (await full.create(BIG)).status_code == 503
    for _ in range(2):  # each check tries a probe write, which fails while the disk is full
        health = await full.client.get("/health")
        assert health.status_code == 503
        assert health.json() == {"status": "degraded", "store": "failing"}

    await full.free_disk()
    health = await full.client.get("/health")
    assert health.status_code == 200 and health.json()["store"] == "ok"
    again = await full.create(BIG)
    assert again.status_code == 200, again.text
    old = await full.client.get(f"/v1/responses/{kept.json()['id']}")
    assert old.status_code == 200 and old.json() == kept.json()
    with sqlite3.connect(full.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (probe_rows,) = conn.execute("SELECT count(*) FROM turnout_probe").fetchone()
    assert probe_rows == 0


@pytest.mark.anyio
async def test_a_background_response_whose_final_write_fails_tells_its_followers(
    full: Full, provider_sim: Simulator
) -> None:
    provider_sim.script("groq", Slow(0.5))  # the queued record lands; the final one will not fit
    started = await full.create(BIG, background=True)
    assert started.status_code == 200
    await full.fill_disk()
    rid = started.json()["id"]
    stream = await full.client.get(f"/v1/responses/{rid}", params={"stream": "true"})
    events = sse_events(stream.text)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["message"].startswith("[store_unavailable] ")
    assert stream.text.rstrip().endswith("data: [DONE]")


@pytest.mark.anyio
async def test_a_background_response_that_cannot_be_queued_is_a_503(full: Full) -> None:
    await full.fill_disk()
    reply = await full.create(BIG, background=True)
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"]["code"] == "store_unavailable"


def test_an_unwritable_store_path_stops_start_up_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    config = tmp_path / "turnout.yaml"
    config.write_text(f"store: sqlite:///{blocker}/turnout.db\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "turnout.server.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{config}:1:1: store: cannot open the store sqlite:///")
    assert str(blocker) in lines[0] and "Traceback" not in done.stderr
