"""The PostgreSQL store's schema and its versioned migrations.

``MIGRATIONS`` is a list of (version, statements); ``migrate`` applies the ones a database has
not had yet, each recorded in ``schema_version`` (one row per applied version), all in one
transaction under a transaction-level advisory lock on a fixed key (``MIGRATION_LOCK``): two
replicas starting at once queue on the lock, the second finds the versions applied and does
nothing. The lock is released by the commit (or the rollback of a failed migration), so it
never outlives the connection's transaction or leaks to a pooled connection.

Version 1 is the schema of SQLite's version 4, in PostgreSQL types (the responses table is
generated from ``columns.COLUMNS``; a column added there later needs a migration here too, and
``tests/test_postgres_store.py`` checks that every column exists). Types: 64-bit integers
(``bigint``); documents SQL only hands back are ``bytea`` of orjson bytes (written as they are,
no parsing by the server: the fastest write); ``tags`` is ``jsonb`` because spend groups on a
metadata key with ``->>``. Settings of keys and teams and the audit entries are ``bytea`` of
orjson too, like conversation metadata: read whole, never looked inside by SQL.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .base import UNFINISHED_STATUSES
from .columns import COLUMNS, Column

if TYPE_CHECKING:
    import asyncpg

__all__ = ["MIGRATIONS", "MIGRATION_LOCK", "SCHEMA_VERSION", "migrate", "valid_schema_name"]

# "turnout" in ASCII, as a bigint: the key of the advisory lock migrations run under.
MIGRATION_LOCK = int.from_bytes(b"turnout", "big")

_TYPES = {
    "text": "text",
    "integer": "bigint",
    "real": "double precision",
    "flag": "boolean",
    "document": "bytea",  # orjson bytes
    "json": "jsonb",  # looked into by spend (tags ->> key)
}
_SQLITE_VERSION_OF_V1 = 4  # version 1 here holds every column SQLite's version 4 has


def _declare(col: Column) -> str:
    parts = [col.name, _TYPES[col.kind]]
    if col.name == "id":
        parts.append("PRIMARY KEY")
    if not col.nullable:
        parts.append("NOT NULL")
    if col.default is not None:
        parts.append(f"DEFAULT {col.default}")
    return " ".join(parts)


_UNFINISHED = f"status IN ({', '.join(repr(s) for s in UNFINISHED_STATUSES)}) AND deleted = false"
_V1 = (
    "CREATE TABLE responses (\n    "
    + ",\n    ".join(_declare(c) for c in COLUMNS if c.since <= _SQLITE_VERSION_OF_V1)
    + "\n)",
    "CREATE INDEX responses_created_at ON responses (created_at)",
    "CREATE INDEX responses_model_created_at ON responses (model, created_at)",
    "CREATE INDEX responses_key_created_at ON responses (api_key_id, created_at)",
    "CREATE INDEX responses_team_created_at ON responses (team, created_at)",
    # Partial: only the few rows still at work, nothing on the write path of finished ones.
    f"CREATE INDEX responses_unfinished ON responses (status) WHERE {_UNFINISHED}",
    "CREATE TABLE conversations (\n    id text PRIMARY KEY,\n    created_at bigint NOT NULL,\n"
    "    metadata bytea NOT NULL,\n    api_key_id text,\n    team text\n)",
    "CREATE TABLE conversation_items (\n    conversation_id text NOT NULL,\n"
    "    seq bigint NOT NULL,\n    id text,\n    item bytea NOT NULL,\n"
    "    PRIMARY KEY (conversation_id, seq)\n)",
    "CREATE INDEX conversation_items_id ON conversation_items (conversation_id, id)",
    "CREATE TABLE api_keys (\n    id text PRIMARY KEY,\n    secret_hash text NOT NULL UNIQUE,\n"
    "    created_at bigint NOT NULL,\n    doc bytea NOT NULL\n)",
    "CREATE TABLE teams (\n    name text PRIMARY KEY,\n    doc bytea NOT NULL\n)",
    "CREATE TABLE audit_log (\n    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
    "    at bigint NOT NULL,\n    actor text NOT NULL,\n    action text NOT NULL,\n"
    "    target text NOT NULL,\n    before bytea,\n    after bytea\n)",
    # /health's probe write (inserted, then rolled back: never holds a row).
    "CREATE TABLE turnout_probe (data bytea)",
)

# Version 2: retention walks the live records oldest first; partial, so the tombstones it
# leaves behind (kept for spend) are never scanned again.
_V2 = ("CREATE INDEX responses_live_created_at ON responses (created_at) WHERE deleted = false",)

# Version 3: the columns SQLite's version 5 added (`duration_ms`: what the console's Requests
# page shows; NULL for older rows).
_V3 = tuple(f"ALTER TABLE responses ADD COLUMN {_declare(c)}" for c in COLUMNS if c.since == 5)
# Version 4: the leases of background responses (SQLite's version 6; server/leases.py):
# who runs one and until when, and the cancel mark another replica may set.
_V4 = (
    "ALTER TABLE responses ADD COLUMN owner text",
    "ALTER TABLE responses ADD COLUMN lease_until double precision",
    "ALTER TABLE responses ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false",
)

# Append only: a released version's statements never change (databases have run them).
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = ((1, _V1), (2, _V2), (3, _V3), (4, _V4))
SCHEMA_VERSION = MIGRATIONS[-1][0]

_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version (\n    version integer PRIMARY KEY,\n"
    "    applied_at timestamptz NOT NULL DEFAULT now()\n)"
)
# Lower case, so the name needs no quoting anywhere (search_path, CREATE SCHEMA).
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def valid_schema_name(name: str) -> bool:
    return _SCHEMA_NAME.fullmatch(name) is not None


async def migrate(conn: asyncpg.Connection, schema: str | None) -> tuple[int, tuple[int, ...]]:
    """Bring the database (its ``schema``, created when missing) to `SCHEMA_VERSION`: the
    version it is at now, and the versions this call applied (none when another process did)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        if schema is not None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")  # a checked name
        await conn.execute(_VERSION_TABLE)
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"PostgreSQL store schema version {current} is newer than this Turnout "
                f"reads (version {SCHEMA_VERSION}): upgrade Turnout"
            )
        applied: list[int] = []
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
            applied.append(version)
    return SCHEMA_VERSION, tuple(applied)
