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
connection (``ThreadPoolExecutor(max_workers=1)``), started by ``open()``: the constructor does
no I/O, and opening (file, pragmas, schema) runs on that worker too. One thread also
serialises all access, so there is no locking of our own and no "database is locked" between
our own writers. JSON columns are encoded with orjson on the caller's thread (a snapshot of the
record at ``put`` time) and decoded on the worker (parsing a 1 MB event list should not stall
the loop). The columns, and the record <-> row functions, come from ``columns.py``.

Reads do not queue behind writes: ``get``, ``list_input_items``, ``chain``, spend and
``unfinished`` run on a second pool of threads with connections of their own (WAL lets readers
run beside the writer, each seeing the last commit), so a lookup (``/health``, a
``previous_response_id`` chain) never waits for another response's 60 MB write and its fsync.
A ``:memory:`` database exists once per connection, so there reads stay on the writer.

The chain of a ``previous_response_id``: one recursive statement walks it (ids, statuses and
document lengths only, nothing decoded), then the links not in the in-process cache of decoded
links (``_ChainCache``) are read in one more, in one read snapshot. The walk runs at every read,
so a link deleted or purged by any process is missing at once; a link whose row changed is read
again. Chain links leave out ``events`` (``None``) and ``request`` (``{}``): a chain is read for
its items, outputs, owners and attempts, and a long stream's events can be megabytes.

One statement per write: ``put`` is a single ``INSERT OR REPLACE`` and ``delete`` a single
``UPDATE``, each its own implicit transaction (the connection is in autocommit mode).

Schema versions (``PRAGMA user_version``): 1 is the original table; 2 adds the accounting
columns (token counts, ``api_key_id``, ``tags`` as JSON text so ``json_extract`` can group on a
metadata key) and the ``created_at`` indexes spend queries range over. A version-1 file is
migrated in place at open, in one transaction, backfilling the counts from the stored Response's
``usage`` and the tags from the request's ``metadata`` (tombstones have neither: zeros).
3 adds the Conversations API's two tables (``conversations``; ``conversation_items``, one row
per item keyed by its conversation and its position): a version-2 file gets them in place at
open (a version-1 file is brought to 2 first, in the same transaction). A turn's items are
appended in one transaction on the writer, so they are contiguous and all-or-nothing.
4 adds the owner's ``team`` to responses and conversations, the key tables (``sqlite_keys.py``:
virtual keys, teams, the audit log) and the per-key / per-team spend indexes; 5 adds
``duration_ms`` (NULL for older rows). Older files are brought to 6 in the same transaction as
the steps before.
6 adds the leases of background responses: ``owner`` and ``lease_until`` (record columns,
``columns.py``) and ``cancel_requested`` (a mark only ``request_cancel`` sets, outside the
record, so the owner's progress writes keep it). Every write of an unfinished record after its
first is one conditional ``UPDATE`` (``replace_unfinished``), so several processes on one file
never change a terminal status (server/leases.py).

Retention (``purge``): one ``UPDATE`` on the writer per batch, over a partial index of the live
rows (made at every open), then ``PRAGMA incremental_vacuum`` hands the freed pages back. New
files are created with ``auto_vacuum=INCREMENTAL`` (it must be set before the first table);
older ones reuse their free pages until a ``VACUUM`` converts them.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from turnout.server.private_files import open_private, tighten

from .base import (
    GROUP_BY_COLUMNS,
    UNFINISHED_STATUSES,
    AccountingRow,
    ChainCycleError,
    ItemPage,
    MissingChainLinkError,
    Order,
    RecentFilter,
    Renewal,
    ResponseStore,
    SpendPoint,
    SpendQuery,
    SpendReport,
    SpendRow,
    StoredResponse,
    StoreUrl,
    check_bucket,
    finish_report,
    finish_series,
    page_items,
)
from .columns import ACCOUNTING_COLUMNS, COLUMNS, Column, RowCodec
from .conversations import ConversationStore, StoredConversation
from .encoding import document, encode_items, encode_lists, is_large
from .registry import register_store
from .sqlite_keys import KEY_TABLES, SQLiteKeys

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")

SCHEMA_VERSION = 6

_TYPES = {
    "text": "TEXT",
    "integer": "INTEGER",
    "real": "REAL",
    "flag": "INTEGER",
    "document": "BLOB",  # orjson bytes
    "json": "TEXT",  # JSON text, for json_extract
}
_dumps = orjson.dumps


# How each kind of column is written and read (see columns.py).
_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "flag": int,
    "document": document,
    "json": lambda value: _dumps(value).decode(),
}
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "flag": bool,
    "document": orjson.loads,
    "json": orjson.loads,
}
_RECORDS = RowCodec(COLUMNS, encoders=_ENCODERS, decoders=_DECODERS, make=StoredResponse)
_ACCOUNTING = RowCodec(
    ACCOUNTING_COLUMNS, encoders=_ENCODERS, decoders=_DECODERS, make=AccountingRow
)


def _declare(col: Column) -> str:
    parts = [col.name, _TYPES[col.kind]]
    if col.name == "id":
        parts.append("PRIMARY KEY")
    if not col.nullable:
        parts.append("NOT NULL")
    if col.default is not None:
        parts.append(f"DEFAULT {col.default}")
    return " ".join(parts)


# STRICT makes SQLite reject e.g. a float created_at instead of silently storing it.
_CREATE = (
    "CREATE TABLE responses (\n    "
    + ",\n    ".join(_declare(col) for col in COLUMNS)
    + "\n) STRICT"
)
# Version 1 -> 2: the accounting columns, exactly as _CREATE declares them.
_ADD_V2 = tuple(
    f"ALTER TABLE responses ADD COLUMN {_declare(col)}" for col in COLUMNS if col.since == 2
)
# Version 3 -> 4: the owner's team on responses and conversations, the key tables
# (sqlite_keys.py), and the indexes a key's or a team's spend in a period is summed over.
_OWNER_INDEXES = (
    "CREATE INDEX IF NOT EXISTS responses_key_created_at ON responses (api_key_id, created_at)",
    "CREATE INDEX IF NOT EXISTS responses_team_created_at ON responses (team, created_at)",
)
_ADD_V4_RESPONSES = tuple(
    f"ALTER TABLE responses ADD COLUMN {_declare(col)}" for col in COLUMNS if col.since == 4
)
# Version 4 -> 5: the run's duration (the console's request list).
_ADD_V5 = tuple(
    f"ALTER TABLE responses ADD COLUMN {_declare(col)}" for col in COLUMNS if col.since == 5
)
# A new file runs these too: its responses table is made whole by _CREATE, the rest is here.
_V4_TABLES = ("ALTER TABLE conversations ADD COLUMN team TEXT", *KEY_TABLES, *_OWNER_INDEXES)
# Version 5 -> 6: the leases of background responses (server/leases.py).
_ADD_V6 = tuple(
    f"ALTER TABLE responses ADD COLUMN {_declare(col)}" for col in COLUMNS if col.since == 6
)
# Not a record column: a put of the record never carries it (request_cancel sets it).
_V6_TABLES = ("ALTER TABLE responses ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",)
# The BLOB columns hold orjson text; CAST so SQLite >= 3.45 does not read them as JSONB.
_BACKFILL_V2 = """
UPDATE responses SET
    input_tokens = coalesce(json_extract(CAST(response AS TEXT), '$.usage.input_tokens'), 0),
    cached_tokens = coalesce(json_extract(CAST(response AS TEXT),
        '$.usage.input_tokens_details.cached_tokens'), 0),
    cache_write_tokens = coalesce(json_extract(CAST(response AS TEXT),
        '$.usage.input_tokens_details.cache_write_tokens'), 0),
    output_tokens = coalesce(json_extract(CAST(response AS TEXT), '$.usage.output_tokens'), 0),
    reasoning_tokens = coalesce(json_extract(CAST(response AS TEXT),
        '$.usage.output_tokens_details.reasoning_tokens'), 0),
    tags = CASE WHEN json_type(CAST(request AS TEXT), '$.metadata') = 'object'
                THEN json_extract(CAST(request AS TEXT), '$.metadata') ELSE '{}' END
WHERE deleted = 0 AND json_valid(CAST(response AS TEXT)) AND json_valid(CAST(request AS TEXT))
"""
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at)",
    "CREATE INDEX IF NOT EXISTS responses_model_created_at ON responses (model, created_at)",
)
_UNFINISHED = f"status IN ({', '.join(repr(s) for s in UNFINISHED_STATUSES)}) AND deleted = 0"
# Partial: holds only the few rows still at work, so it costs nothing on the write path of
# finished responses. Created at every open (a version-2 file may predate it).
_UNFINISHED_INDEX = (
    f"CREATE INDEX IF NOT EXISTS responses_unfinished ON responses (status) WHERE {_UNFINISHED}"
)
_SELECT_UNFINISHED = f"SELECT id FROM responses WHERE {_UNFINISHED}"
_SELECT_EXPIRED = f"{_SELECT_UNFINISHED} AND (lease_until IS NULL OR lease_until < ?)"
# Retention walks the live records oldest first: a partial index, so the tombstones it leaves
# (kept for ever, for spend) are never scanned again. Created at every open, like the above.
_LIVE_INDEX = (
    "CREATE INDEX IF NOT EXISTS responses_live_created_at ON responses (created_at) "
    "WHERE deleted = 0"
)
_PURGE = (
    "UPDATE responses SET deleted = 1, response = x'7b7d', input_items = x'5b5d', "
    "events = NULL, request = x'7b7d' WHERE rowid IN (SELECT rowid FROM responses "
    "WHERE deleted = 0 AND created_at < ? AND status NOT IN "
    f"({', '.join(repr(s) for s in UNFINISHED_STATUSES)}) ORDER BY created_at LIMIT ?)"
)
# Version 3: conversations and their items (``seq`` orders the items of one conversation).
_CONVERSATION_TABLES = (
    "CREATE TABLE conversations (\n    id TEXT PRIMARY KEY,\n    created_at INTEGER NOT NULL,\n"
    "    metadata TEXT NOT NULL DEFAULT '{}',\n    api_key_id TEXT\n) STRICT",
    "CREATE TABLE conversation_items (\n    conversation_id TEXT NOT NULL,\n"
    "    seq INTEGER NOT NULL,\n    id TEXT,\n    item BLOB NOT NULL,\n"
    "    PRIMARY KEY (conversation_id, seq)\n) STRICT",
    "CREATE INDEX conversation_items_id ON conversation_items (conversation_id, id)",
)
_INSERT_CONVERSATION = (
    "INSERT INTO conversations (id, created_at, metadata, api_key_id, team) VALUES (?, ?, ?, ?, ?)"
)
_SELECT_CONVERSATION = (
    "SELECT id, created_at, metadata, api_key_id, team FROM conversations WHERE id = ?"
)
_INSERT_ITEM = "INSERT INTO conversation_items (conversation_id, seq, id, item) VALUES (?, ?, ?, ?)"
_NEXT_SEQ = "SELECT coalesce(max(seq), -1) + 1 FROM conversation_items WHERE conversation_id = ?"
_SELECT_CONVERSATION_ITEMS = (
    "SELECT item FROM conversation_items WHERE conversation_id = ? ORDER BY seq"
)
_DELETE_ITEM = (
    "DELETE FROM conversation_items WHERE conversation_id = ? AND seq = (SELECT min(seq) "
    "FROM conversation_items WHERE conversation_id = ? AND id = ?)"
)


def _walk(response_id: str, rows: dict[str, Any]) -> list[Any]:
    """The walk rows of the chain ending at `response_id`, newest first (ResponseStore.chain's
    walk: a missing or deleted link, or a cycle, raises)."""
    newest_first: list[Any] = []
    seen: set[str] = set()
    current: str | None = response_id
    while current is not None:
        if current in seen:
            raise ChainCycleError(response_id, current)
        seen.add(current)
        row = rows.get(current)
        if row is None:
            raise MissingChainLinkError(response_id, current)
        newest_first.append(row)
        current = row[1]
    return newest_first


def _conversation(row: Any) -> StoredConversation:
    return StoredConversation(
        id=row[0], created_at=row[1], metadata=orjson.loads(row[2]), api_key_id=row[3],
        team=row[4],
    )  # fmt: skip


# The probe write of /health while writes fail (store_health.py); never holds a row for long.
_CREATE_PROBE = "CREATE TABLE IF NOT EXISTS turnout_probe (blob BLOB)"

_SELECT_LIVE = f"SELECT {_RECORDS.sql_list} FROM responses WHERE id = ? AND deleted = 0"


def _chain_link(**columns: Any) -> StoredResponse:
    return StoredResponse(events=None, request={}, **columns)


# A chain link is read for its items, output, owner and attempts (history, isolation, affinity),
# never for its events (a long stream's can be megabytes, and decoding them was most of the
# cost of a long chain) or the client's body: those two are left out.
_CHAIN_RECORDS = RowCodec(
    tuple(c for c in COLUMNS if c.name not in ("events", "request")),
    encoders=_ENCODERS,
    decoders=_DECODERS,
    make=_chain_link,
)
# The links of a chain, newest first, in one statement: each live link's `stamp` (id, previous
# id, status, document lengths), walking previous_response_id (UNION drops a row seen before, so
# a cycle ends the walk). A missing or deleted link ends it; the order, that link and a cycle
# are worked out from the rows (_walk). Only columns stored before the documents, and lengths
# (from the row header): the owner columns come after the documents, and reading those walks
# each row's overflow pages (it made the walk three times slower).
_STAMP = "id, previous_response_id, status, length(response), length(input_items), length(attempts)"
_WALK_CHAIN = (
    f"WITH RECURSIVE walk(id, prev, status, lr, li, la) AS (SELECT {_STAMP} FROM responses "
    "WHERE id = ? AND deleted = 0 UNION "
    "SELECT r.id, r.previous_response_id, r.status, length(r.response), length(r.input_items), "
    "length(r.attempts) FROM responses r JOIN walk w ON r.id = w.prev WHERE r.deleted = 0) "
    "SELECT * FROM walk"
)
_SELECT_LINKS = f"SELECT {_CHAIN_RECORDS.sql_list} FROM responses WHERE deleted = 0 AND id IN "
_chain_from_row = _CHAIN_RECORDS.from_row
# Links decoded per query of the second statement (SQLite's bound-parameter limit is 32766).
_LINKS_PER_QUERY = 500
# Decoded chain links kept warm, by the bytes of their JSON documents (decoded, a few times that).
CHAIN_CACHE_BYTES = 8 << 20


class _ChainCache:
    """Decoded chain links by response id, least recently used first out.

    The next turn of a chain is the previous turn's chain plus one link, so a turn at depth N
    would otherwise decode N documents again. Only finished links are kept: a finished record
    is written once (a background response is rewritten until it finishes, never after), so a
    link is the same as long as its walk row (`stamp`: id, previous id, status, document
    lengths) is. A deleted or purged link never reaches the cache lookup: the walk, which runs
    at every read, does not return it. The records are shared between readers, which only read
    them (history.items, normalize, isolation, affinity). Used from the read threads: locked."""

    def __init__(self, budget: int = CHAIN_CACHE_BYTES) -> None:
        self.budget = budget
        self.size = 0
        self._links: OrderedDict[str, tuple[tuple[Any, ...], StoredResponse]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, response_id: str, stamp: tuple[Any, ...]) -> StoredResponse | None:
        found, _missing = self.lookup([stamp])
        return found.get(response_id)

    def lookup(
        self, stamps: list[tuple[Any, ...]]
    ) -> tuple[dict[str, StoredResponse], list[tuple[Any, ...]]]:
        """The links held for these walk rows (id first), and the rows of those not held."""
        found: dict[str, StoredResponse] = {}
        missing: list[tuple[Any, ...]] = []
        links = self._links
        with self._lock:  # once for the whole chain, not per link
            for stamp in stamps:
                hit = links.get(stamp[0])
                if hit is None or hit[0] != stamp:
                    missing.append(stamp)
                else:
                    links.move_to_end(stamp[0])
                    found[stamp[0]] = hit[1]
        return found, missing

    def add(self, stamp: tuple[Any, ...], record: StoredResponse) -> None:
        if record.status in UNFINISHED_STATUSES:
            return
        size = _stamp_size(stamp)
        with self._lock:
            old = self._links.pop(record.id, None)
            if old is not None:
                self.size -= _stamp_size(old[0])
            self._links[record.id] = (stamp, record)
            self.size += size
            while self.size > self.budget and self._links:
                _, (dropped, _record) = self._links.popitem(last=False)
                self.size -= _stamp_size(dropped)

    def discard(self, response_id: str) -> None:
        with self._lock:
            old = self._links.pop(response_id, None)
            if old is not None:
                self.size -= _stamp_size(old[0])


def _stamp_size(stamp: tuple[Any, ...]) -> int:
    return int(stamp[3] or 0) + int(stamp[4] or 0) + int(stamp[5] or 0)


_SELECT_ITEMS = "SELECT input_items FROM responses WHERE id = ? AND deleted = 0"
_SELECT_ACCOUNTING = f"SELECT {_ACCOUNTING.sql_list} FROM responses"
_UPSERT = (
    f"INSERT OR REPLACE INTO responses ({_RECORDS.sql_list}) "
    f"VALUES ({', '.join('?' * len(_RECORDS.names))})"
)
# Leases: every write of an unfinished record after its first is conditional (base.py).
_REPLACE_UNFINISHED = (
    f"UPDATE responses SET {', '.join(f'{n} = ?' for n in _RECORDS.names[1:])} "
    f"WHERE id = ? AND {_UNFINISHED}"
)
_REPLACE_EXPIRED = f"{_REPLACE_UNFINISHED} AND (lease_until IS NULL OR lease_until < ?)"
_REQUEST_CANCEL = f"UPDATE responses SET cancel_requested = 1 WHERE id = ? AND {_UNFINISHED}"
# Tombstone: keep the metadata for accounting, erase the user's content.
_DELETE = (
    "UPDATE responses SET deleted = 1, response = x'7b7d', input_items = x'5b5d', "
    "events = NULL, request = x'7b7d' WHERE id = ? AND deleted = 0"
)

# The record as one row of parameters for _UPSERT (bench/stages.py times it), and back.
_row_params = _RECORDS.to_row
_from_row = _RECORDS.from_row


_SPEND_SUMS = (
    "COUNT(*), SUM(input_tokens), SUM(cached_tokens), SUM(cache_write_tokens), "
    "SUM(output_tokens), SUM(reasoning_tokens), SUM(cost), SUM(cost IS NULL)"
)


def _spend_parts(query: SpendQuery) -> tuple[str, str, list[Any]]:
    """The group key expression, the WHERE clause (or "") and their parameters."""
    params: list[Any] = []
    tag = query.tag_key
    if tag is not None:
        key = "json_extract(tags, ?)"
        params.append(f'$."{tag}"')  # SpendQuery refuses quotes and backslashes in tag keys
    else:
        key = GROUP_BY_COLUMNS[query.group_by]  # a fixed column name, never client text
    where: list[str] = []
    if query.start is not None:
        where.append("created_at >= ?")
        params.append(query.start)
    if query.end is not None:
        where.append("created_at < ?")
        params.append(query.end)
    if query.model is not None:
        where.append("model = ?")
        params.append(query.model)
    if query.api_key_id is not None:
        where.append("api_key_id = ?")
        params.append(query.api_key_id)
    if query.team is not None:
        where.append("team = ?")
        params.append(query.team)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return key, clause, params


def _spend_sql(query: SpendQuery) -> tuple[str, list[Any]]:
    key, clause, params = _spend_parts(query)
    return f"SELECT {key} AS k, {_SPEND_SUMS} FROM responses{clause} GROUP BY k", params


def _series_sql(query: SpendQuery, bucket_seconds: int) -> tuple[str, list[Any]]:
    key, clause, params = _spend_parts(query)
    # Integer division of INTEGER values: the bucket's start, as Python's // gives it.
    sql = (
        f"SELECT (created_at / ?) * ? AS b, {key} AS k, {_SPEND_SUMS} FROM responses{clause} "
        "GROUP BY b, k"
    )
    return sql, [bucket_seconds, bucket_seconds, *params]


def _recent_sql(limit: int, f: RecentFilter) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("model", f.model), ("api_key_id", f.api_key_id), ("team", f.team), ("status", f.status),
    ):  # fmt: skip
        if value is not None:
            where.append(f"{column} = ?")  # fixed column names, never client text
            params.append(value)
    if f.before is not None:
        where.append("(created_at < ? OR (created_at = ? AND id < ?))")
        params.extend((f.before[0], f.before[0], f.before[1]))
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    # Newest first along the created_at indexes; no document column is read.
    sql = (
        f"SELECT {_ACCOUNTING.sql_list} FROM responses{clause} "
        "ORDER BY created_at DESC, id DESC LIMIT ?"
    )
    return sql, [*params, limit]


def _spend_row(k: Any, sums: tuple[Any, ...]) -> SpendRow:
    n, inp, cached, written, out, reasoning, cost, unpriced = sums
    return SpendRow(
        None if k is None else str(k), n, inp or 0, cached or 0, written or 0, out or 0,
        reasoning or 0, cost, unpriced or 0,
    )  # fmt: skip


@register_store("sqlite")
class SQLiteStore(ResponseStore, ConversationStore, SQLiteKeys):
    """Constructing does no I/O; ``await open()`` creates or checks the file and its schema."""

    url_forms = (
        "sqlite:///relative/path.db",
        "sqlite:////absolute/path.db",
        "sqlite:///:memory:",
        "sqlite:///path.db?synchronous=normal",
    )

    @classmethod
    def parse_url(cls, url: str) -> StoreUrl:
        rest = url.partition("://")[2]
        path = rest[1:] if rest.startswith("/") else ""  # "sqlite://host/..." has no meaning
        path, _sep, query = path.partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&") if part)
        unknown = set(options) - {"synchronous"}
        if not path or unknown:
            raise ValueError("sqlite store url needs a file path, no host, and only ?synchronous=")
        options["synchronous"] = options.get("synchronous", "full").lower()
        if options["synchronous"] not in ("full", "normal"):
            raise ValueError("sqlite synchronous= takes full or normal")
        return StoreUrl("sqlite", path, options)

    @classmethod
    def from_url(cls, url: StoreUrl) -> SQLiteStore:
        return cls(url.path, synchronous=url.options.get("synchronous", "full"))

    @classmethod
    def scratch_url(cls, folder: str) -> str:
        return f"sqlite:///{folder}/scratch.db"

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "full") -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', not {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._writing = False
        self._path = os.fspath(path)
        self._executor: ThreadPoolExecutor | None = None  # the worker, from open() on
        self._readers: ThreadPoolExecutor | None = None  # the read threads (not for :memory:)
        self._local = threading.local()  # each read thread's own connection
        self._chain_cache = _ChainCache()
        self._reader_conns: list[sqlite3.Connection] = []
        self._conn: sqlite3.Connection | None = None  # only ever touched on the worker
        # Serialises open() and aclose() (an asyncio.Lock binds to a loop only when contended).
        self._lifecycle = asyncio.Lock()
        self._ready = False  # open and not closing: the one check on every call
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    # -- worker-thread side ------------------------------------------------------------------

    def _open(self) -> None:
        if self._conn is not None:  # an open() whose caller was cancelled got this far
            return
        if self._path != ":memory:":
            target = Path(self._path)
            target.parent.mkdir(parents=True, exist_ok=True)
            # Stored bodies are user content: the file is the owner's only, an existing one
            # made so too (SQLite gives new -wal/-shm files the database's mode; ones a crash
            # left behind are tightened like it).
            os.close(open_private(target, os.O_RDWR, holds_captures=True))
            for suffix in ("-wal", "-shm"):
                tighten(f"{self._path}{suffix}")
        # Connected on the worker, so the connection is created by, and only ever used from,
        # the thread that owns it (sqlite3's check_same_thread stays on as a guard).
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            # Space freed by retention goes back to the file system (`_purge`). Takes effect
            # only in a file without tables yet: an older file keeps reusing its free pages
            # (`VACUUM` once, offline, converts it; README "Retention").
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")  # ":memory:" answers "memory": fine
            conn.execute(f"PRAGMA synchronous={self._synchronous}")  # see the module docstring
            conn.execute("PRAGMA busy_timeout=5000")  # another process (a CLI) may hold a lock
            was = self._migrate(conn)
            conn.execute(_UNFINISHED_INDEX)
            conn.execute(_LIVE_INDEX)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self.schema_version = SCHEMA_VERSION
        self.migrations_applied = tuple(range(was + 1, SCHEMA_VERSION + 1))

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> int:
        """Bring the file to SCHEMA_VERSION; the version it was at."""
        conn.execute("BEGIN IMMEDIATE")  # two processes opening a fresh file at once
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0:
                conn.execute(_CREATE)
                for statement in (*_INDEXES, *_CONVERSATION_TABLES, *_V4_TABLES, *_V6_TABLES):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version in (1, 2, 3, 4, 5):
                if version == 1:
                    for statement in _ADD_V2:
                        conn.execute(statement)
                    conn.execute(_BACKFILL_V2)
                    for statement in _INDEXES:
                        conn.execute(statement)
                if version < 3:
                    # Version 2 -> 3: the conversation tables; responses unchanged.
                    for statement in _CONVERSATION_TABLES:
                        conn.execute(statement)
                if version < 4:
                    for statement in (*_ADD_V4_RESPONSES, *_V4_TABLES):
                        conn.execute(statement)
                if version < 5:
                    for statement in _ADD_V5:  # older rows: no duration (NULL)
                        conn.execute(statement)
                for statement in (*_ADD_V6, *_V6_TABLES):
                    conn.execute(statement)
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
        return int(version)

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def _rdb(self) -> sqlite3.Connection:
        """The calling read thread's connection (opened on first use); the writer's for a
        ``:memory:`` database, which a second connection would not see."""
        if self._readers is None:
            return self._db()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Closed from aclose() once the read threads are done: not bound to this thread.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    def _probe(self) -> None:
        # 64 KiB: needs new pages, so it fails where a record would (a full disk), then is
        # removed in the same transaction; the freed pages are reused by the next put.
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_CREATE_PROBE)
            conn.execute("INSERT INTO turnout_probe (blob) VALUES (zeroblob(65536))")
            conn.execute("DELETE FROM turnout_probe")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

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

    def _purge(self, before: int, limit: int) -> int:
        conn = self._db()
        count = conn.execute(_PURGE, (before, limit)).rowcount
        if count:
            # Hand the pages the erased documents held back to the file system (a no-op in a
            # file without auto_vacuum=INCREMENTAL). executescript steps the pragma to its end:
            # execute() would step it once, freeing a single page.
            conn.executescript("PRAGMA incremental_vacuum")
        return int(count)

    def _get(self, response_id: str) -> StoredResponse | None:
        row = self._rdb().execute(_SELECT_LIVE, (response_id,)).fetchone()
        return None if row is None else _from_row(row)

    def _delete(self, response_id: str) -> bool:
        # The walk already skips a deleted link; this only stops its content lingering here.
        self._chain_cache.discard(response_id)
        return self._db().execute(_DELETE, (response_id,)).rowcount == 1

    def _items(
        self, response_id: str, limit: int, order: Order, after: str | None
    ) -> ItemPage | None:
        # Only the input_items column: the events of a long stream can be megabytes.
        row = self._rdb().execute(_SELECT_ITEMS, (response_id,)).fetchone()
        if row is None:
            return None
        return page_items(orjson.loads(row[0]), limit=limit, order=order, after=after)

    def _chain(self, response_id: str) -> list[StoredResponse]:
        # A turn at depth 400 used to run 400 lookups and decode every link's documents,
        # events included. Now: the walk in one statement, then the links the cache does not
        # hold (at the next turn of a chain, the newest only) in one more, both in one snapshot.
        conn = self._rdb()
        conn.execute("BEGIN")
        try:
            walked = conn.execute(_WALK_CHAIN, (response_id,)).fetchall()
            newest_first = _walk(response_id, {row[0]: row for row in walked})
            # The walk row is the link's stamp: a link cached with another one is read again.
            records, missing_rows = self._chain_cache.lookup(newest_first)
            stamps = {row[0]: row for row in missing_rows}
            missing = list(stamps)
            for start in range(0, len(missing), _LINKS_PER_QUERY):
                ids = missing[start : start + _LINKS_PER_QUERY]
                sql = f"{_SELECT_LINKS}({', '.join('?' * len(ids))})"
                for link in conn.execute(sql, ids):
                    record = _chain_from_row(link)
                    records[record.id] = record
                    self._chain_cache.add(stamps[record.id], record)
        finally:
            conn.execute("COMMIT")
        # Same snapshot: every walked link has its row (else the walk would have stopped there).
        return [records[row[0]] for row in reversed(newest_first)]

    def _spend(self, query: SpendQuery) -> SpendReport:
        sql, params = _spend_sql(query)
        rows = [_spend_row(row[0], row[1:]) for row in self._rdb().execute(sql, params)]
        return finish_report(query, rows)

    def _spend_series(self, query: SpendQuery, bucket_seconds: int) -> list[SpendPoint]:
        sql, params = _series_sql(query, bucket_seconds)
        return finish_series(
            SpendPoint(row[0], _spend_row(row[1], row[2:]))
            for row in self._rdb().execute(sql, params)
        )

    def _recent(self, limit: int, filters: RecentFilter) -> list[AccountingRow]:
        sql, params = _recent_sql(limit, filters)
        from_row = _ACCOUNTING.from_row
        return [from_row(row) for row in self._rdb().execute(sql, params)]

    def _accounting(self, query: SpendQuery) -> list[AccountingRow]:
        from_row = _ACCOUNTING.from_row
        return [from_row(row) for row in self._rdb().execute(_SELECT_ACCOUNTING)]

    def _unfinished(self) -> list[str]:
        return [row[0] for row in self._rdb().execute(_SELECT_UNFINISHED)]

    def _expired(self, now: float) -> list[str]:
        return [row[0] for row in self._rdb().execute(_SELECT_EXPIRED, (now,))]

    def _replace(self, params: tuple[Any, ...]) -> bool:
        sql = _REPLACE_UNFINISHED if len(params) == len(_RECORDS.names) else _REPLACE_EXPIRED
        return self._db().execute(sql, params).rowcount == 1

    def _renew(self, owner: str, ids: list[str], until: float) -> Renewal:
        marks = ", ".join("?" * len(ids))
        where = f"owner = ? AND id IN ({marks}) AND {_UNFINISHED}"

        def write(conn: sqlite3.Connection) -> Renewal:
            conn.execute(
                f"UPDATE responses SET lease_until = ? WHERE {where}", (until, owner, *ids)
            )
            rows = conn.execute(
                f"SELECT id, cancel_requested FROM responses WHERE {where}", (owner, *ids)
            ).fetchall()
            held = frozenset(row[0] for row in rows)
            return Renewal(held, frozenset(row[0] for row in rows if row[1]))

        return self._transaction(write)

    def _request_cancel(self, response_id: str) -> bool:
        return self._db().execute(_REQUEST_CANCEL, (response_id,)).rowcount == 1

    # conversations (writes on the worker, each one transaction)

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    def _create_conversation(
        self, row: tuple[Any, ...], items: list[tuple[str | None, bytes]]
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT_CONVERSATION, row)
            conn.executemany(
                _INSERT_ITEM,
                [(row[0], i, item_id, data) for i, (item_id, data) in enumerate(items)],
            )

        self._transaction(write)

    def _update_conversation(
        self, conversation_id: str, metadata: str
    ) -> StoredConversation | None:
        def write(conn: sqlite3.Connection) -> StoredConversation | None:
            conn.execute(
                "UPDATE conversations SET metadata = ? WHERE id = ?", (metadata, conversation_id)
            )
            row = conn.execute(_SELECT_CONVERSATION, (conversation_id,)).fetchone()
            return None if row is None else _conversation(row)

        return self._transaction(write)

    def _delete_conversation(self, conversation_id: str) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "DELETE FROM conversation_items WHERE conversation_id = ?", (conversation_id,)
            )
            return (
                conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount
                == 1
            )

        return self._transaction(write)

    def _append_items(self, conversation_id: str, items: list[tuple[str | None, bytes]]) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            if conn.execute(_SELECT_CONVERSATION, (conversation_id,)).fetchone() is None:
                return False
            (start,) = conn.execute(_NEXT_SEQ, (conversation_id,)).fetchone()
            conn.executemany(
                _INSERT_ITEM,
                [
                    (conversation_id, start + i, item_id, data)
                    for i, (item_id, data) in enumerate(items)
                ],
            )
            return True

        return self._transaction(write)

    def _delete_item(self, conversation_id: str, item_id: str) -> bool | None:
        def write(conn: sqlite3.Connection) -> bool | None:
            if conn.execute(_SELECT_CONVERSATION, (conversation_id,)).fetchone() is None:
                return None
            deleted = conn.execute(_DELETE_ITEM, (conversation_id, conversation_id, item_id))
            return deleted.rowcount == 1

        return self._transaction(write)

    def _get_conversation(self, conversation_id: str) -> StoredConversation | None:
        row = self._rdb().execute(_SELECT_CONVERSATION, (conversation_id,)).fetchone()
        return None if row is None else _conversation(row)

    def _conversation_items(self, conversation_id: str) -> list[dict[str, Any]] | None:
        conn = self._rdb()
        conn.execute("BEGIN")  # one snapshot: the conversation and its items agree
        try:
            if conn.execute(_SELECT_CONVERSATION, (conversation_id,)).fetchone() is None:
                return None
            rows = conn.execute(_SELECT_CONVERSATION_ITEMS, (conversation_id,)).fetchall()
        finally:
            conn.execute("COMMIT")
        return [orjson.loads(row[0]) for row in rows]

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- event-loop side ---------------------------------------------------------------------

    def _unusable(self) -> RuntimeError:
        if self._closed:
            return RuntimeError("response store is closed")
        return RuntimeError("response store is not open (await store.open() first)")

    async def open(self) -> None:
        async with self._lifecycle:
            if self._ready:
                return
            if self._closed:
                raise RuntimeError("response store is closed; a closed store cannot be reopened")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="turnout-sqlite"
                )
            if self._readers is None and self._path != ":memory:":
                self._readers = ThreadPoolExecutor(
                    max_workers=2, thread_name_prefix="turnout-sqlite-read"
                )
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
            except asyncio.CancelledError:
                raise  # the worker finishes opening; the next open() finds it done
            except BaseException:
                # Nothing stays behind a failed open: no connection (_open closed it), no thread.
                self._executor.shutdown(wait=False)
                self._executor = None
                if self._readers is not None:
                    self._readers.shutdown(wait=False)
                    self._readers = None
                raise
            self._ready = True

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._ready:
            raise self._unusable()
        # A cancelled caller does not stop a call the worker already started: a put in
        # flight still completes, it is just not awaited.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._ready:
            raise self._unusable()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._readers or self._executor, functools.partial(fn, *args)
        )

    async def put(self, record: StoredResponse) -> None:
        if not self._ready:
            raise self._unusable()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if is_large(record):
            record = await encode_lists(record)
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

    async def probe_write(self) -> None:
        await self._run(self._probe)

    async def get(self, response_id: str) -> StoredResponse | None:
        return await self._read(self._get, response_id)

    async def purge(self, before: int, *, limit: int) -> int:
        return await self._run(self._purge, before, limit)

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
        return await self._read(self._items, response_id, limit, order, after)

    async def chain(self, response_id: str) -> list[StoredResponse]:
        return await self._read(self._chain, response_id)

    async def spend(self, query: SpendQuery) -> SpendReport:
        return await self._read(self._spend, query)

    async def accounting(self, query: SpendQuery) -> Iterable[AccountingRow]:
        return await self._read(self._accounting, query)

    async def spend_series(self, query: SpendQuery, bucket_seconds: int) -> list[SpendPoint]:
        check_bucket(bucket_seconds)
        return await self._read(self._spend_series, query, bucket_seconds)

    async def recent(
        self, limit: int = 50, filters: RecentFilter | None = None
    ) -> list[AccountingRow]:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        return await self._read(self._recent, limit, filters or RecentFilter())

    async def unfinished(self) -> list[str]:
        return await self._read(self._unfinished)

    async def expired_unfinished(self, now: float) -> list[str]:
        return await self._read(self._expired, now)

    async def replace_unfinished(
        self, record: StoredResponse, *, expired_before: float | None = None
    ) -> bool:
        if not self._ready:
            raise self._unusable()
        if is_large(record):
            record = await encode_lists(record)
        row = _row_params(record)
        params = (*row[1:], row[0])
        if expired_before is not None:
            params = (*params, expired_before)
        # On the writer, one statement: the condition and the write are one step.
        return await self._run(self._replace, params)

    async def renew_leases(self, owner: str, ids: Iterable[str], until: float) -> Renewal:
        wanted = list(ids)
        if not wanted:
            return Renewal()
        return await self._run(self._renew, owner, wanted, until)

    async def request_cancel(self, response_id: str) -> bool:
        return await self._run(self._request_cancel, response_id)

    async def create_conversation(
        self, conversation: StoredConversation, items: list[dict[str, Any]]
    ) -> None:
        row = (
            conversation.id, conversation.created_at, _dumps(conversation.metadata).decode(),
            conversation.api_key_id, conversation.team,
        )  # fmt: skip
        await self._run(self._create_conversation, row, encode_items(items))

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        return await self._read(self._get_conversation, conversation_id)

    async def update_conversation(
        self, conversation_id: str, metadata: dict[str, str]
    ) -> StoredConversation | None:
        encoded = _dumps(metadata).decode()
        return await self._run(self._update_conversation, conversation_id, encoded)

    async def delete_conversation(self, conversation_id: str) -> bool:
        return await self._run(self._delete_conversation, conversation_id)

    async def append_items(self, conversation_id: str, items: list[dict[str, Any]]) -> bool:
        return await self._run(self._append_items, conversation_id, encode_items(items))

    async def conversation_items(self, conversation_id: str) -> list[dict[str, Any]] | None:
        return await self._read(self._conversation_items, conversation_id)

    async def delete_item(self, conversation_id: str, item_id: str) -> bool | None:
        return await self._run(self._delete_item, conversation_id, item_id)

    async def aclose(self) -> None:
        async with self._lifecycle:
            if self._closed:
                return
            self._closed = True  # no open() from now on
            if self._ready:
                # Puts already accepted land first (the batch being written and what queued
                # behind it); puts arriving meanwhile are accepted too, so wait until none is
                # left. asyncio.wait, not gather: a cancelled aclose must not cancel the writes.
                while self._flushes:
                    await asyncio.wait(set(self._flushes))
            self._ready = False  # every later call is refused before it reaches the worker
            readers, self._readers = self._readers, None
            if readers is not None:
                # Reads in flight finish first; then their connections can go.
                await asyncio.get_running_loop().run_in_executor(
                    None, functools.partial(readers.shutdown, wait=True)
                )
                for conn in self._reader_conns:
                    conn.close()
                self._reader_conns.clear()
            executor, self._executor = self._executor, None
            if executor is None:  # never opened, or its open failed: nothing to release
                return
            try:
                # Behind any calls still in flight on the worker, which finish first. Also
                # closes what an open() whose caller was cancelled left behind.
                await asyncio.get_running_loop().run_in_executor(executor, self._close)
            finally:
                executor.shutdown(wait=False)
