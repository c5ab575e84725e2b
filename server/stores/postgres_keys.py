"""The key store half of ``PostgresStore`` (``keys.py`` is the contract), as ``sqlite_keys.py``
is SQLite's: each change in one transaction with its audit entry; ``key_by_hash`` one probe of
the unique index on ``secret_hash``.

Settings are one orjson document per key or team (``doc``, ``bytea``): read whole, changed
together, new settings need no migration. Lists are ordered ``COLLATE "C"`` (code point order,
as SQLite and Python sort), not by the database's locale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from .keys import (
    AuditEntry,
    KeyStore,
    StoredKey,
    StoredTeam,
    key_from_json,
    key_to_json,
    team_from_json,
    team_to_json,
)

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PostgresKeys", "pg_text"]

_dumps = orjson.dumps

_INSERT_AUDIT = (
    "INSERT INTO audit_log (at, actor, action, target, before, after) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)
_SELECT_AUDIT = "SELECT seq, at, actor, action, target, before, after FROM audit_log"


def pg_text(value: str) -> str:
    """A string as a ``text`` value: PostgreSQL refuses NUL characters in text, so each becomes
    U+FFFD, the same on write and on lookup (a NUL in a client's id finds nothing, never an
    error). Documents (``bytea``) keep NULs as they are."""
    return value if "\x00" not in value else value.replace("\x00", "\ufffd")


def _audit_row(entry: AuditEntry) -> tuple[Any, ...]:
    before = None if entry.before is None else _dumps(entry.before)
    after = None if entry.after is None else _dumps(entry.after)
    return (entry.at, pg_text(entry.actor), pg_text(entry.action), pg_text(entry.target),
            before, after)  # fmt: skip


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=row[0], at=row[1], actor=row[2], action=row[3], target=row[4],
        before=None if row[5] is None else orjson.loads(row[5]),
        after=None if row[6] is None else orjson.loads(row[6]),
    )  # fmt: skip


class PostgresKeys(KeyStore):
    """Mixed into ``PostgresStore``, which provides the pool (`_db`)."""

    def _db(self) -> asyncpg.Pool:  # pragma: no cover - the store's own replaces it
        raise NotImplementedError

    async def create_key(self, key: StoredKey, audit: AuditEntry) -> None:
        from asyncpg import UniqueViolationError

        pool = self._db()
        row = (pg_text(key.id), key.secret_hash, key.created_at, _dumps(key_to_json(key)))
        async with pool.acquire() as conn, conn.transaction():
            try:
                await conn.execute("INSERT INTO api_keys VALUES ($1, $2, $3, $4)", *row)
            except UniqueViolationError:
                raise ValueError(f"key {key.id!r} (or its secret) exists already") from None
            await conn.execute(_INSERT_AUDIT, *_audit_row(audit))

    async def _one_doc(self, sql: str, value: str) -> dict[str, Any] | None:
        data = await self._db().fetchval(sql, pg_text(value))
        return None if data is None else dict(orjson.loads(data))

    async def get_key(self, key_id: str) -> StoredKey | None:
        doc = await self._one_doc("SELECT doc FROM api_keys WHERE id = $1", key_id)
        return None if doc is None else key_from_json(doc)

    async def key_by_hash(self, secret_hash: str) -> StoredKey | None:
        doc = await self._one_doc("SELECT doc FROM api_keys WHERE secret_hash = $1", secret_hash)
        return None if doc is None else key_from_json(doc)

    async def list_keys(self) -> list[StoredKey]:
        rows = await self._db().fetch(
            'SELECT doc FROM api_keys ORDER BY created_at, id COLLATE "C"'
        )
        return [key_from_json(orjson.loads(row[0])) for row in rows]

    async def update_key(self, key: StoredKey, audit: AuditEntry) -> bool:
        doc = key_to_json(key)
        key_id = pg_text(key.id)
        async with self._db().acquire() as conn, conn.transaction():
            old = await conn.fetchval("SELECT doc FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
            if old is None:
                return False
            # The id and the secret's hash never change through an update.
            doc["secret_hash"] = orjson.loads(old)["secret_hash"]
            await conn.execute("UPDATE api_keys SET doc = $2 WHERE id = $1", key_id, _dumps(doc))
            await conn.execute(_INSERT_AUDIT, *_audit_row(audit))
            return True

    async def put_team(self, team: StoredTeam, audit: AuditEntry) -> None:
        async with self._db().acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO teams (name, doc) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET doc = EXCLUDED.doc",
                pg_text(team.name),
                _dumps(team_to_json(team)),
            )
            await conn.execute(_INSERT_AUDIT, *_audit_row(audit))

    async def get_team(self, name: str) -> StoredTeam | None:
        doc = await self._one_doc("SELECT doc FROM teams WHERE name = $1", name)
        return None if doc is None else team_from_json(doc)

    async def list_teams(self) -> list[StoredTeam]:
        rows = await self._db().fetch('SELECT doc FROM teams ORDER BY name COLLATE "C"')
        return [team_from_json(orjson.loads(row[0])) for row in rows]

    async def delete_team(self, name: str, audit: AuditEntry) -> bool:
        async with self._db().acquire() as conn, conn.transaction():
            status = await conn.execute("DELETE FROM teams WHERE name = $1", pg_text(name))
            if status != "DELETE 1":
                return False
            await conn.execute(_INSERT_AUDIT, *_audit_row(audit))
            return True

    async def audit_log(self, *, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        if limit <= 0:
            return []
        if before is None:
            rows = await self._db().fetch(_SELECT_AUDIT + " ORDER BY seq DESC LIMIT $1", limit)
        else:
            rows = await self._db().fetch(
                _SELECT_AUDIT + " WHERE seq < $1 ORDER BY seq DESC LIMIT $2", before, limit
            )
        return [_entry(row) for row in rows]
