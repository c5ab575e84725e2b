"""PostgreSQL response store (``postgresql://user[:password]@host[:port]/database``, also
``postgres://``), for several workers and replicas on one database.

Driver: asyncpg, with its own connection pool. Measured here (PostgreSQL 15 on loopback, the
responses table, one ``put`` = one upsert of a ~2 KB record): at concurrency 1 both asyncpg and
psycopg 3 commit in ~0.37 ms p50 (the commit's WAL flush dominates), at concurrency 32 asyncpg
wrote ~20 % more per second, and a ``get`` by id was 2-3x faster with asyncpg (its binary
protocol and per-connection prepared-statement cache; ~6,000 vs ~2,200 reads/s serially). The
gateway's hot path is one ``put`` per response plus a chain read per follow-up turn, so asyncpg.
Its types come from asyncpg-stubs. Installed with the ``postgres`` extra
(``pip install 'turnout[postgres]'``) and imported only when a ``postgresql://`` store is
opened, so an SQLite-only install does not need it.

The URL: ``?schema=NAME`` keeps the tables in that schema (created at start-up when missing:
one database can hold several gateways' stores, the tests give each test its own),
``?pool_size=N`` the most connections a process opens (default 10), ``?sslmode=`` as libpq's
(``require``, ``verify-full``...). The password (also ``PGPASSWORD`` or ``~/.pgpass``) is never
shown: parse errors name no part of the URL, connection errors only host, port, database and
user, and ``StoreUrl``'s repr masks it.

Semantics are SQLite's (the contract suite runs over both): ``put`` is one upsert, durable when
it returns (the commit is flushed: keep ``synchronous_commit`` on). Puts that arrive while a
write is in flight are written together by one task in one transaction (a pipelined
``executemany``, one commit, one WAL flush), as ``SQLiteStore`` groups its commits; a batch that
fails is retried one row at a time, so one bad record fails only its own ``put``. ``delete``
leaves a tombstone; ``chain`` is one recursive CTE; ``spend`` one ``GROUP BY`` (``tags ->> key``
for ``metadata:<key>``); a conversation's append locks its row (``SELECT ... FOR UPDATE``), so
concurrent turns are contiguous. Text columns cannot hold NUL characters: they are stored as
U+FFFD (``postgres_keys.pg_text``), on lookup too, and documents keep them (see ``_json``).

Schema and migrations: ``postgres_schema.py`` (applied by ``open()`` under an advisory lock;
``turnout migrate`` runs them explicitly).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import urllib.parse
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from .base import (
    GROUP_BY_COLUMNS,
    UNFINISHED_STATUSES,
    AccountingRow,
    ChainCycleError,
    ItemPage,
    MissingChainLinkError,
    Order,
    Renewal,
    ResponseStore,
    SpendQuery,
    SpendReport,
    SpendRow,
    StoredResponse,
    StoreUrl,
    finish_report,
    page_items,
)
from .columns import ACCOUNTING_COLUMNS, COLUMNS, RowCodec
from .conversations import ConversationStore, StoredConversation
from .encoding import document, encode_items, encode_lists, is_large
from .postgres_keys import PostgresKeys, pg_text
from .postgres_schema import migrate, valid_schema_name
from .registry import register_store

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PostgresStore"]

_dumps = orjson.dumps
_NUL_ESCAPE = b"\\u0000"


def _clean(value: Any) -> Any:
    """``value`` with every NUL in its strings (keys too) made U+FFFD."""
    if isinstance(value, str):
        return pg_text(value)
    if isinstance(value, dict):
        return {pg_text(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _json(value: Any) -> str:
    """A ``jsonb`` value (``tags``): jsonb refuses ``\\u0000``, so a document holding one is
    stored with U+FFFD there (the request and response documents keep the original)."""
    data = _dumps(value)
    if _NUL_ESCAPE in data:
        data = _dumps(_clean(value))
    return data.decode()


_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "text": pg_text,
    "document": document,
    "json": _json,
}
_DECODERS: dict[str, Callable[[Any], Any]] = {"document": orjson.loads, "json": orjson.loads}
_RECORDS = RowCodec(COLUMNS, encoders=_ENCODERS, decoders=_DECODERS, make=StoredResponse)
_ACCOUNTING = RowCodec(
    ACCOUNTING_COLUMNS, encoders=_ENCODERS, decoders=_DECODERS, make=AccountingRow
)
_to_row = _RECORDS.to_row
# asyncpg's Record indexes like a tuple (its stubs do not call it a Sequence).
_from_row: Callable[[Any], StoredResponse] = _RECORDS.from_row
_accounting_row: Callable[[Any], AccountingRow] = _ACCOUNTING.from_row

_NAMES = _RECORDS.names
_UPSERT = (
    f"INSERT INTO responses ({_RECORDS.sql_list}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(_NAMES) + 1))}) "
    f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{n} = EXCLUDED.{n}' for n in _NAMES[1:])}"
)
# Leases: every write of an unfinished record after its first is conditional (base.py).
_UNFINISHED = f"status IN ({', '.join(repr(s) for s in UNFINISHED_STATUSES)}) AND deleted = false"
_REPLACE_UNFINISHED = (
    f"UPDATE responses SET {', '.join(f'{n} = ${i}' for i, n in enumerate(_NAMES[1:], 2))} "
    f"WHERE id = $1 AND {_UNFINISHED}"
)
_REPLACE_EXPIRED = (
    f"{_REPLACE_UNFINISHED} AND (lease_until IS NULL OR lease_until < ${len(_NAMES) + 1})"
)
_RENEW = (
    "UPDATE responses SET lease_until = $3 "
    f"WHERE owner = $1 AND id = ANY($2::text[]) AND {_UNFINISHED} RETURNING id, cancel_requested"
)
_REQUEST_CANCEL = f"UPDATE responses SET cancel_requested = true WHERE id = $1 AND {_UNFINISHED}"
_SELECT_EXPIRED = (
    f"SELECT id FROM responses WHERE {_UNFINISHED} AND (lease_until IS NULL OR lease_until < $1)"
)
_SELECT_LIVE = f"SELECT {_RECORDS.sql_list} FROM responses WHERE id = $1 AND NOT deleted"
_SELECT_ITEMS = "SELECT input_items FROM responses WHERE id = $1 AND NOT deleted"
# Tombstone: keep the metadata for accounting, erase the user's content.
_DELETE = (
    "UPDATE responses SET deleted = true, response = '\\x7b7d'::bytea, "
    "input_items = '\\x5b5d'::bytea, events = NULL, request = '\\x7b7d'::bytea "
    "WHERE id = $1 AND NOT deleted"
)
# SKIP LOCKED: replicas purging at once take different rows, none waits for another.
_PURGE = (
    "UPDATE responses SET deleted = true, response = '\\x7b7d'::bytea, "
    "input_items = '\\x5b5d'::bytea, events = NULL, request = '\\x7b7d'::bytea "
    "WHERE id IN (SELECT id FROM responses WHERE NOT deleted AND created_at < $1 "
    f"AND status NOT IN ({', '.join(repr(s) for s in UNFINISHED_STATUSES)}) "
    "ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
)
_SELECT_UNFINISHED = (
    f"SELECT id FROM responses WHERE status IN "
    f"({', '.join(repr(s) for s in UNFINISHED_STATUSES)}) AND deleted = false"
)
# The walk follows ids only (no documents copied through the recursion), then one join reads
# the records: one statement, one snapshot. `seen` stops a cycle.
_CHAIN = f"""
WITH RECURSIVE walk (id, prev, depth, seen) AS (
    SELECT id, previous_response_id, 0, ARRAY[id] FROM responses WHERE id = $1 AND NOT deleted
  UNION ALL
    SELECT r.id, r.previous_response_id, w.depth + 1, w.seen || r.id
    FROM walk w JOIN responses r ON r.id = w.prev
    WHERE NOT r.deleted AND r.id <> ALL (w.seen)
)
SELECT {", ".join(f"r.{n}" for n in _NAMES)}
FROM walk w JOIN responses r ON r.id = w.id ORDER BY w.depth
"""
_SPEND_SUMS = (
    "count(*), sum(input_tokens)::bigint, sum(cached_tokens)::bigint, "
    "sum(cache_write_tokens)::bigint, sum(output_tokens)::bigint, "
    "sum(reasoning_tokens)::bigint, sum(cost), count(*) FILTER (WHERE cost IS NULL)"
)

_INSERT_CONVERSATION = (
    "INSERT INTO conversations (id, created_at, metadata, api_key_id, team) "
    "VALUES ($1, $2, $3, $4, $5)"
)
_CONVERSATION_COLUMNS = "id, created_at, metadata, api_key_id, team"
_SELECT_CONVERSATION = f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE id = $1"
_INSERT_ITEM = (
    "INSERT INTO conversation_items (conversation_id, seq, id, item) VALUES ($1, $2, $3, $4)"
)
# One statement, one snapshot: the conversation and its items agree (item NULL: none yet).
_SELECT_CONVERSATION_ITEMS = (
    "SELECT i.item FROM conversations c LEFT JOIN conversation_items i "
    "ON i.conversation_id = c.id WHERE c.id = $1 ORDER BY i.seq"
)
_DELETE_ITEM = (
    "DELETE FROM conversation_items WHERE conversation_id = $1 AND seq = (SELECT min(seq) "
    "FROM conversation_items WHERE conversation_id = $1 AND id = $2)"
)


def _conversation(row: Any) -> StoredConversation:
    return StoredConversation(
        id=row[0], created_at=row[1], metadata=orjson.loads(row[2]), api_key_id=row[3],
        team=row[4],
    )  # fmt: skip


def _where(query: SpendQuery, params: list[Any]) -> str:
    where: list[str] = []
    for column, value, op in (
        ("created_at", query.start, ">="),
        ("created_at", query.end, "<"),
        ("model", query.model, "="),
        ("api_key_id", query.api_key_id, "="),
        ("team", query.team, "="),
    ):
        if value is not None:
            params.append(pg_text(value) if isinstance(value, str) else value)
            where.append(f"{column} {op} ${len(params)}")
    return f" WHERE {' AND '.join(where)}" if where else ""


def _spend_sql(query: SpendQuery) -> tuple[str, list[Any]]:
    params: list[Any] = []
    tag = query.tag_key
    if tag is not None:
        params.append(tag)
        key = "tags ->> $1"
    else:
        key = GROUP_BY_COLUMNS[query.group_by]  # a fixed column name, never client text
    clause = _where(query, params)
    return f"SELECT {key} AS k, {_SPEND_SUMS} FROM responses{clause} GROUP BY k", params


class _Secret(str):
    """A password inside a ``StoreUrl``: its repr (what a logged ``StoreUrl`` shows) masks it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_FORM = "postgresql://user[:password]@host[:port]/database[?schema=&pool_size=&sslmode=]"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: none. The store leaves no session state behind (no LISTEN, no SET, no
    session lock), and asyncpg still rolls back an unfinished transaction; its default reset
    would cost one more round trip per query."""


def _status_count(status: str) -> int:
    """The row count of a command tag (``UPDATE 1`` -> 1)."""
    return int(status.rpartition(" ")[2] or 0)


@register_store("postgresql", "postgres")
class PostgresStore(ResponseStore, ConversationStore, PostgresKeys):
    """Constructing does no I/O; ``await open()`` connects, migrates and keeps a pool."""

    url_forms = (
        "postgresql://user[:password]@host[:port]/database",
        "postgres://user@host/database?schema=turnout&pool_size=10",
    )
    # The server the contract suite makes its scratch schemas on (set by the tests, from
    # TURNOUT_TEST_POSTGRES_URL); None: no server here.
    scratch_server: ClassVar[str | None] = None
    _scratch_numbers: ClassVar[itertools.count[int]] = itertools.count()

    @classmethod
    def parse_url(cls, url: str) -> StoreUrl:
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or 5432
        except ValueError:
            raise ValueError(f"postgresql store url is malformed (form: {_FORM})") from None
        database = urllib.parse.unquote(parts.path.lstrip("/"))
        if not parts.hostname or not database or "/" in database or parts.fragment:
            raise ValueError(f"postgresql store url needs a host and a database: {_FORM}")
        options: dict[str, str] = {"host": parts.hostname, "port": str(port)}
        if parts.username:
            options["user"] = urllib.parse.unquote(parts.username)
        if parts.password is not None:
            options["password"] = _Secret(urllib.parse.unquote(parts.password))
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"schema", "pool_size", "sslmode"})
        if unknown or any(len(values) > 1 for values in query.values()):
            # The names are not quoted back either: a mistyped URL may hold a secret anywhere.
            raise ValueError(
                "postgresql store url takes only ?schema=, ?pool_size= and ?sslmode=, each once"
            )
        schema = query.get("schema", [None])[0]
        if schema is not None:
            if not valid_schema_name(schema):
                raise ValueError(
                    "postgresql store url: schema= takes a lower-case name of letters, digits "
                    "and _ (at most 63)"
                )
            options["schema"] = schema
        pool_size = query.get("pool_size", ["10"])[0]
        if not pool_size.isdigit() or not 1 <= int(pool_size) <= 1000:
            raise ValueError("postgresql store url: pool_size= takes a number from 1 to 1000")
        options["pool_size"] = pool_size
        sslmode = query.get("sslmode", [None])[0]
        if sslmode is not None:
            if sslmode not in _SSLMODES:
                raise ValueError(f"postgresql store url: sslmode= takes {', '.join(_SSLMODES)}")
            options["sslmode"] = sslmode
        return StoreUrl("postgresql", database, options)

    @classmethod
    def from_url(cls, url: StoreUrl) -> PostgresStore:
        o = url.options
        return cls(
            host=o["host"], port=int(o["port"]), database=url.path, user=o.get("user"),
            password=o.get("password"), schema=o.get("schema"),
            pool_size=int(o.get("pool_size", "10")), sslmode=o.get("sslmode"),
        )  # fmt: skip

    @classmethod
    def scratch_url(cls, folder: str) -> str | None:
        # A schema of its own per scratch store, named after this process so a run that was
        # killed can have its leftovers found (tests/postgres.py sweeps them).
        server = cls.scratch_server
        if server is None:
            return None
        name = f"turnout_test_{os.getpid()}_{next(cls._scratch_numbers)}"
        return f"{server}{'&' if '?' in server else '?'}schema={name}"

    @classmethod
    async def drop_scratch(cls, url: str) -> None:
        parsed = cls.parse_url(url)
        schema = parsed.options.get("schema")
        if schema is None or not schema.startswith("turnout_test_"):
            return  # only what scratch_url made
        store = cls.from_url(parsed)
        conn = await store._connect_once()
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # a checked name
        finally:
            await conn.close()

    def __init__(
        self,
        *,
        host: str,
        port: int = 5432,
        database: str,
        user: str | None = None,
        password: str | None = None,
        schema: str | None = None,
        pool_size: int = 10,
        sslmode: str | None = None,
    ) -> None:
        if schema is not None and not valid_schema_name(schema):
            raise ValueError(f"schema name {schema!r} is not a lower-case identifier")
        self._shown = f"PostgreSQL at {host}:{port} (database {database!r}, user {user!r})"
        self._connect_args: dict[str, Any] = {
            "host": host, "port": port, "database": database, "user": user,
            "password": password, "ssl": sslmode, "timeout": 10,
            "server_settings": {"application_name": "turnout"}
            | ({"search_path": schema} if schema else {}),
        }  # fmt: skip
        self._schema = schema
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[None]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._writing = False
        # Serialises open() and aclose() (an asyncio.Lock binds to a loop only when contended).
        self._lifecycle = asyncio.Lock()
        self._ready = False  # open and not closing: the one check on every call
        self._closed = False

    def __repr__(self) -> str:
        return f"<PostgresStore {self._shown}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def _unusable(self) -> RuntimeError:
        if self._closed:
            return RuntimeError("response store is closed")
        return RuntimeError("response store is not open (await store.open() first)")

    def _db(self) -> asyncpg.Pool:
        if not self._ready or self._pool is None:
            raise self._unusable()
        return self._pool

    def _unreachable(self, exc: BaseException) -> ConnectionError:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        return ConnectionError(f"{self._shown} did not answer: {type(exc).__name__}: {reason}")

    async def _connect_once(self) -> asyncpg.Connection:
        driver = _driver()
        try:
            conn: asyncpg.Connection = await driver.connect(**self._connect_args)
        except (OSError, TimeoutError, driver.PostgresError, driver.InterfaceError) as e:
            raise self._unreachable(e) from e
        return conn

    async def open(self) -> None:
        async with self._lifecycle:
            if self._ready:
                return
            if self._closed:
                raise RuntimeError("response store is closed; a closed store cannot be reopened")
            driver = _driver()
            try:
                pool = await driver.create_pool(
                    min_size=1, max_size=self._pool_size, reset=_keep_session,
                    **self._connect_args,
                )  # fmt: skip
            except (OSError, TimeoutError, driver.PostgresError, driver.InterfaceError) as e:
                raise self._unreachable(e) from e
            try:
                async with pool.acquire() as conn:
                    self.schema_version, self.migrations_applied = await migrate(conn, self._schema)
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool
            self._ready = True

    async def aclose(self) -> None:
        async with self._lifecycle:
            if self._closed:
                return
            self._closed = True  # no open() from now on
            if self._ready:
                # Puts already accepted land first (see SQLiteStore.aclose).
                while self._flushes:
                    await asyncio.wait(set(self._flushes))
            self._ready = False
            pool, self._pool = self._pool, None
            if pool is None:
                return
            try:
                # Reads in flight finish first (close waits for every connection's release).
                await asyncio.wait_for(pool.close(), 10)
            except TimeoutError:
                pool.terminate()  # a connection held for 10 s more: cut it
            except asyncio.CancelledError:
                pool.terminate()
                raise

    # -- responses ---------------------------------------------------------------------------

    async def put(self, record: StoredResponse) -> None:
        if not self._ready:
            raise self._unusable()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if is_large(record):
            record = await encode_lists(record)
        self._pending.append((_to_row(record), future))
        if not self._writing:
            # One writer task at a time: what queues up while it writes is the next batch.
            self._writing = True
            task = loop.create_task(self._flush())
            self._flushes.add(task)  # a reference, so the task cannot be collected mid-write
            task.add_done_callback(self._flushes.discard)
        await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._write([row for row, _ in batch])
                except Exception as exc:
                    if len(batch) == 1:
                        _settle(batch[0][1], exc)
                        continue
                    # One bad row must not fail the others: each alone, in its own commit.
                    for row, future in batch:
                        try:
                            await self._write([row])
                        except Exception as one:
                            _settle(future, one)
                        else:
                            _settle(future, None)
                    continue
                for _, future in batch:
                    _settle(future, None)
        finally:
            # No await between the empty-queue check and this: a put cannot slip in unseen.
            self._writing = False

    async def _write(self, rows: list[tuple[Any, ...]]) -> None:
        pool = self._pool
        if pool is None:
            raise self._unusable()
        if len(rows) == 1:
            await pool.execute(_UPSERT, *rows[0])
            return
        async with pool.acquire() as conn, conn.transaction():
            await conn.executemany(_UPSERT, rows)

    async def probe_write(self) -> None:
        # 64 KiB written, then rolled back: fails where a record would (a full disk, a
        # read-only server), leaves nothing.
        async with self._db().acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                await conn.execute("INSERT INTO turnout_probe VALUES ($1)", bytes(65536))
            finally:
                await transaction.rollback()

    async def get(self, response_id: str) -> StoredResponse | None:
        row = await self._db().fetchrow(_SELECT_LIVE, pg_text(response_id))
        return None if row is None else _from_row(row)

    async def delete(self, response_id: str) -> bool:
        return _status_count(await self._db().execute(_DELETE, pg_text(response_id))) == 1

    async def list_input_items(
        self,
        response_id: str,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
    ) -> ItemPage | None:
        # Only the input_items column: the events of a long stream can be megabytes.
        data = await self._db().fetchval(_SELECT_ITEMS, pg_text(response_id))
        if data is None:
            return None
        return page_items(orjson.loads(data), limit=limit, order=order, after=after)

    async def chain(self, response_id: str) -> list[StoredResponse]:
        rows = await self._db().fetch(_CHAIN, pg_text(response_id))
        if not rows:
            raise MissingChainLinkError(response_id, response_id)
        newest_first = [_from_row(row) for row in rows]
        prev = newest_first[-1].previous_response_id
        if prev is not None:
            # The walk stopped early: at a link it had seen (a cycle) or one that is gone.
            if any(r.id == pg_text(prev) for r in newest_first):
                raise ChainCycleError(response_id, prev)
            raise MissingChainLinkError(response_id, prev)
        newest_first.reverse()
        return newest_first

    async def unfinished(self) -> list[str]:
        return [row[0] for row in await self._db().fetch(_SELECT_UNFINISHED)]

    async def expired_unfinished(self, now: float) -> list[str]:
        return [row[0] for row in await self._db().fetch(_SELECT_EXPIRED, now)]

    async def replace_unfinished(
        self, record: StoredResponse, *, expired_before: float | None = None
    ) -> bool:
        if not self._ready:
            raise self._unusable()
        if is_large(record):
            record = await encode_lists(record)
        row = _to_row(record)
        if expired_before is None:
            status = await self._db().execute(_REPLACE_UNFINISHED, *row)
        else:
            status = await self._db().execute(_REPLACE_EXPIRED, *row, expired_before)
        return _status_count(status) == 1

    async def renew_leases(self, owner: str, ids: Iterable[str], until: float) -> Renewal:
        wanted = [pg_text(i) for i in ids]
        if not wanted:
            return Renewal()
        rows = await self._db().fetch(_RENEW, pg_text(owner), wanted, until)
        held = frozenset(row[0] for row in rows)
        return Renewal(held, frozenset(row[0] for row in rows if row[1]))

    async def request_cancel(self, response_id: str) -> bool:
        status = await self._db().execute(_REQUEST_CANCEL, pg_text(response_id))
        return _status_count(status) == 1

    async def purge(self, before: int, *, limit: int) -> int:
        # The freed space (TOASTed documents) is reused after autovacuum, as any update's.
        return _status_count(await self._db().execute(_PURGE, before, limit))

    async def spend(self, query: SpendQuery) -> SpendReport:
        sql, params = _spend_sql(query)
        rows = []
        for k, n, inp, cached, written, out, reasoning, cost, unpriced in await self._db().fetch(
            sql, *params
        ):
            rows.append(
                SpendRow(
                    None if k is None else str(k), n, inp or 0, cached or 0, written or 0,
                    out or 0, reasoning or 0, cost, unpriced or 0,
                )
            )  # fmt: skip
        return finish_report(query, rows)

    async def accounting(self, query: SpendQuery) -> Iterable[AccountingRow]:
        params: list[Any] = []
        clause = _where(query, params)
        sql = f"SELECT {_ACCOUNTING.sql_list} FROM responses{clause}"
        return [_accounting_row(row) for row in await self._db().fetch(sql, *params)]

    # -- conversations -----------------------------------------------------------------------

    async def create_conversation(
        self, conversation: StoredConversation, items: list[dict[str, Any]]
    ) -> None:
        cid = pg_text(conversation.id)
        row = (
            cid, conversation.created_at, _dumps(conversation.metadata),
            _opt_text(conversation.api_key_id), _opt_text(conversation.team),
        )  # fmt: skip
        encoded = encode_items(items)
        async with self._db().acquire() as conn, conn.transaction():
            await conn.execute(_INSERT_CONVERSATION, *row)
            if encoded:
                await conn.executemany(
                    _INSERT_ITEM,
                    [(cid, i, _opt_text(iid), data) for i, (iid, data) in enumerate(encoded)],
                )

    async def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        row = await self._db().fetchrow(_SELECT_CONVERSATION, pg_text(conversation_id))
        return None if row is None else _conversation(row)

    async def update_conversation(
        self, conversation_id: str, metadata: dict[str, str]
    ) -> StoredConversation | None:
        row = await self._db().fetchrow(
            f"UPDATE conversations SET metadata = $2 WHERE id = $1 "
            f"RETURNING {_CONVERSATION_COLUMNS}",
            pg_text(conversation_id),
            _dumps(metadata),
        )
        return None if row is None else _conversation(row)

    async def delete_conversation(self, conversation_id: str) -> bool:
        cid = pg_text(conversation_id)
        async with self._db().acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM conversation_items WHERE conversation_id = $1", cid)
            status = await conn.execute("DELETE FROM conversations WHERE id = $1", cid)
        return _status_count(status) == 1

    async def append_items(self, conversation_id: str, items: list[dict[str, Any]]) -> bool:
        cid = pg_text(conversation_id)
        encoded = encode_items(items)
        async with self._db().acquire() as conn, conn.transaction():
            # The row lock queues concurrent appends to one conversation: each turn's items
            # land contiguously after the last committed one.
            if await conn.fetchval("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", cid):
                start = await conn.fetchval(
                    "SELECT coalesce(max(seq), -1) + 1 FROM conversation_items "
                    "WHERE conversation_id = $1",
                    cid,
                )
                if encoded:
                    await conn.executemany(
                        _INSERT_ITEM,
                        [(cid, start + i, _opt_text(iid), data)
                         for i, (iid, data) in enumerate(encoded)],
                    )  # fmt: skip
                return True
        return False

    async def conversation_items(self, conversation_id: str) -> list[dict[str, Any]] | None:
        rows = await self._db().fetch(_SELECT_CONVERSATION_ITEMS, pg_text(conversation_id))
        if not rows:
            return None
        return [orjson.loads(row[0]) for row in rows if row[0] is not None]

    async def delete_item(self, conversation_id: str, item_id: str) -> bool | None:
        cid = pg_text(conversation_id)
        async with self._db().acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM conversations WHERE id = $1", cid) is None:
                return None
            status = await conn.execute(_DELETE_ITEM, cid, pg_text(item_id))
        return _status_count(status) == 1


def _opt_text(value: str | None) -> str | None:
    return None if value is None else pg_text(value)


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():  # its caller was cancelled: the row is written all the same
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


def _driver() -> Any:
    """asyncpg, imported on first use: an SQLite-only install does not have it."""
    try:
        import asyncpg
    except ImportError:
        raise RuntimeError(
            "a postgresql:// store needs the asyncpg driver: pip install 'turnout[postgres]'"
        ) from None
    return asyncpg
