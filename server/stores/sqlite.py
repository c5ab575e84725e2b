"""SQLite response store (``sqlite:///path.db``, ``sqlite:///:memory:``), stdlib ``sqlite3`` only.

Durability: WAL journal with ``synchronous=FULL`` by default. In WAL mode ``NORMAL`` already
survives a *process* crash (a committed transaction is in the WAL file, which the OS keeps),
but the WAL is only fsynced at checkpoints, so a power loss or kernel panic can drop the last
commits. The contract says a response is durable before the reply is sent, and a client that
got a ``resp_...`` id will come back with ``previous_response_id``, so by default we pay for
the fsync. ``sqlite:///path.db?synchronous=normal`` trades power-loss durability for about half
a millisecond per response (process crashes stay safe).

Group commit: puts that arrive while the worker is busy are written together in one
transaction, one fsync for all of them, so throughput under concurrency is not bounded by the
disk's fsync rate. Each ``put`` still returns only once its own row is committed.

Threading: sqlite3 calls block, so they run on one dedicated worker thread that owns the
connection (``ThreadPoolExecutor(max_workers=1)``). That also serialises all access, so
there is no locking of our own and no "database is locked" between our own writers. JSON
columns are encoded with orjson on the caller's thread (a snapshot of the record at ``put``
time) and decoded on the worker (parsing a 1 MB event list should not stall the loop).

One statement per write: ``put`` is a single ``INSERT OR REPLACE`` and ``delete`` a single
``UPDATE``, each its own implicit transaction (the connection is in autocommit mode).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from .base import (
    ChainCycleError,
    ItemPage,
    MissingChainLinkError,
    Order,
    ResponseStore,
    StoredResponse,
    page_items,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")

SCHEMA_VERSION = 1

# STRICT makes SQLite reject e.g. a float created_at instead of silently storing it.
_CREATE = """
CREATE TABLE responses (
    id                   TEXT PRIMARY KEY NOT NULL,
    created_at           INTEGER NOT NULL,
    model                TEXT NOT NULL,
    provider             TEXT,
    status               TEXT NOT NULL,
    previous_response_id TEXT,
    deployment           TEXT,
    cost                 REAL,
    deleted              INTEGER NOT NULL,
    response             BLOB NOT NULL,
    input_items          BLOB NOT NULL,
    events               BLOB,
    request              BLOB NOT NULL,
    attempts             BLOB NOT NULL
) STRICT
"""

_COLUMNS = (
    "id, created_at, model, provider, status, previous_response_id, deployment, cost, "
    "deleted, response, input_items, events, request, attempts"
)
_SELECT_LIVE = f"SELECT {_COLUMNS} FROM responses WHERE id = ? AND deleted = 0"
_SELECT_ITEMS = "SELECT input_items FROM responses WHERE id = ? AND deleted = 0"
_UPSERT = f"INSERT OR REPLACE INTO responses ({_COLUMNS}) VALUES ({', '.join('?' * 14)})"
# Tombstone: keep the metadata for accounting, erase the user's content.
_DELETE = (
    "UPDATE responses SET deleted = 1, response = x'7b7d', input_items = x'5b5d', "
    "events = NULL, request = x'7b7d' WHERE id = ? AND deleted = 0"
)


def _row_params(record: StoredResponse) -> tuple[Any, ...]:
    dumps = orjson.dumps
    return (
        record.id,
        record.created_at,
        record.model,
        record.provider,
        record.status,
        record.previous_response_id,
        record.deployment,
        record.cost,
        int(record.deleted),
        dumps(record.response),
        dumps(record.input_items),
        None if record.events is None else dumps(record.events),
        dumps(record.request),
        dumps(record.attempts),
    )


def _from_row(row: tuple[Any, ...]) -> StoredResponse:
    loads = orjson.loads
    return StoredResponse(
        id=row[0],
        created_at=row[1],
        model=row[2],
        provider=row[3],
        status=row[4],
        previous_response_id=row[5],
        deployment=row[6],
        cost=row[7],
        deleted=bool(row[8]),
        response=loads(row[9]),
        input_items=loads(row[10]),
        events=None if row[11] is None else loads(row[11]),
        request=loads(row[12]),
        attempts=loads(row[13]),
    )


class SQLiteStore(ResponseStore):
    """Opens (and creates or checks the schema of) the database synchronously, at start-up."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "full") -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._writing = False
        self._path = os.fspath(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turnout-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        try:
            # Connect on the worker so the connection is created by, and only ever used from,
            # the thread that owns it (sqlite3's check_same_thread stays on as a guard).
            self._executor.submit(self._open).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    @property
    def path(self) -> str:
        return self._path

    # -- worker-thread side ------------------------------------------------------------------

    def _open(self) -> None:
        if self._path != ":memory:":
            target = Path(self._path)
            target.parent.mkdir(parents=True, exist_ok=True)
            # Stored bodies are user content: create the file owner-only (SQLite gives the
            # -wal/-shm files the same mode as the database).
            os.close(os.open(target, os.O_CREAT | os.O_RDWR, 0o600))
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # ":memory:" answers "memory": fine
            conn.execute(f"PRAGMA synchronous={self._synchronous}")  # see the module docstring
            conn.execute("PRAGMA busy_timeout=5000")  # another process (a CLI) may hold a lock
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # two processes opening a fresh file at once
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0:
                conn.execute(_CREATE)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise RuntimeError(
                    f"response store schema version {version} is not supported "
                    f"(this Turnout reads version {SCHEMA_VERSION})"
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def _put(self, params: tuple[Any, ...]) -> None:
        self._db().execute(_UPSERT, params)

    def _put_many(self, batch: list[tuple[Any, ...]]) -> None:
        conn = self._db()
        if len(batch) == 1:
            conn.execute(_UPSERT, batch[0])
            return
        conn.execute("BEGIN")
        try:
            conn.executemany(_UPSERT, batch)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _get(self, response_id: str) -> StoredResponse | None:
        row = self._db().execute(_SELECT_LIVE, (response_id,)).fetchone()
        return None if row is None else _from_row(row)

    def _delete(self, response_id: str) -> bool:
        return self._db().execute(_DELETE, (response_id,)).rowcount == 1

    def _items(
        self, response_id: str, limit: int, order: Order, after: str | None
    ) -> ItemPage | None:
        # Only the input_items column: the events of a long stream can be megabytes.
        row = self._db().execute(_SELECT_ITEMS, (response_id,)).fetchone()
        if row is None:
            return None
        return page_items(orjson.loads(row[0]), limit=limit, order=order, after=after)

    def _chain(self, response_id: str) -> list[StoredResponse]:
        # Same walk as ResponseStore.chain, done in one hop to the worker instead of one per link.
        newest_first: list[StoredResponse] = []
        seen: set[str] = set()
        current: str | None = response_id
        while current is not None:
            if current in seen:
                raise ChainCycleError(response_id, current)
            seen.add(current)
            record = self._get(current)
            if record is None:
                raise MissingChainLinkError(response_id, current)
            newest_first.append(record)
            current = record.previous_response_id
        newest_first.reverse()
        return newest_first

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- event-loop side ---------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("response store is closed")
        # A cancelled caller does not stop a call the worker already started: a put in
        # flight still completes, it is just not awaited.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def put(self, record: StoredResponse) -> None:
        if self._closed:
            raise RuntimeError("response store is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((_row_params(record), future))
        if not self._writing:
            # One writer task at a time: what queues up while it writes is the next batch.
            self._writing = True
            task = asyncio.get_running_loop().create_task(self._flush())
            self._flushes.add(task)  # a reference, so the task cannot be collected mid-write
            task.add_done_callback(self._flushes.discard)
        await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._run(self._put_many, [params for params, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            # No await between the empty-queue check and this: a put cannot slip in unseen.
            self._writing = False

    async def get(self, response_id: str) -> StoredResponse | None:
        return await self._run(self._get, response_id)

    async def delete(self, response_id: str) -> bool:
        return await self._run(self._delete, response_id)

    async def list_input_items(
        self,
        response_id: str,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
    ) -> ItemPage | None:
        return await self._run(self._items, response_id, limit, order, after)

    async def chain(self, response_id: str) -> list[StoredResponse]:
        return await self._run(self._chain, response_id)

    async def close(self) -> None:
        if self._closed:
            return
        # Queued behind any pending calls, so in-flight writes land before the connection goes.
        await self._run(self._close)
        self._closed = True
        self._executor.shutdown(wait=False)
