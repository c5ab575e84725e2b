"""The key store half of ``SQLiteStore`` (``keys.py`` is the contract): three tables added by
schema version 4, written on the store's writer thread, each change in one transaction with
its audit entry, read on the reader threads.

Settings are one JSON document per key or team (``doc``): they are read whole and change
together, and new settings need no migration; what is looked up has a column of its own
(``secret_hash``, unique, so the authenticator's lookup is one index probe).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

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

__all__ = ["KEY_TABLES", "SQLiteKeys"]

T = TypeVar("T")

KEY_TABLES = (
    "CREATE TABLE api_keys (\n    id TEXT PRIMARY KEY,\n    secret_hash TEXT NOT NULL UNIQUE,\n"
    "    created_at INTEGER NOT NULL,\n    doc TEXT NOT NULL\n) STRICT",
    "CREATE TABLE teams (\n    name TEXT PRIMARY KEY,\n    doc TEXT NOT NULL\n) STRICT",
    "CREATE TABLE audit_log (\n    seq INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "    at INTEGER NOT NULL,\n    actor TEXT NOT NULL,\n    action TEXT NOT NULL,\n"
    "    target TEXT NOT NULL,\n    before TEXT,\n    after TEXT\n) STRICT",
)
_INSERT_AUDIT = (
    "INSERT INTO audit_log (at, actor, action, target, before, after) VALUES (?, ?, ?, ?, ?, ?)"
)
_SELECT_KEY = "SELECT doc FROM api_keys WHERE id = ?"
_SELECT_KEY_BY_HASH = "SELECT doc FROM api_keys WHERE secret_hash = ?"


def _text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _audit_row(entry: AuditEntry) -> tuple[Any, ...]:
    before = None if entry.before is None else _text(entry.before)
    after = None if entry.after is None else _text(entry.after)
    return (entry.at, entry.actor, entry.action, entry.target, before, after)


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=row[0], at=row[1], actor=row[2], action=row[3], target=row[4],
        before=None if row[5] is None else orjson.loads(row[5]),
        after=None if row[6] is None else orjson.loads(row[6]),
    )  # fmt: skip


class SQLiteKeys(KeyStore):
    """Mixed into ``SQLiteStore``, which provides the threads and the transaction helper."""

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover
        raise NotImplementedError

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:  # pragma: no cover
        raise NotImplementedError

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:  # pragma: no cover
        raise NotImplementedError

    def _rdb(self) -> sqlite3.Connection:  # pragma: no cover
        raise NotImplementedError

    # -- worker-thread side ------------------------------------------------------------------

    def _create_key(self, row: tuple[Any, ...], audit: tuple[Any, ...]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?)", row)
            except sqlite3.IntegrityError:
                raise ValueError(f"key {row[0]!r} (or its secret) exists already") from None
            conn.execute(_INSERT_AUDIT, audit)

        self._transaction(write)

    def _update_key(self, key_id: str, doc: dict[str, Any], audit: tuple[Any, ...]) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            row = conn.execute(_SELECT_KEY, (key_id,)).fetchone()
            if row is None:
                return False
            # The id and the secret's hash never change through an update.
            doc["secret_hash"] = orjson.loads(row[0])["secret_hash"]
            conn.execute("UPDATE api_keys SET doc = ? WHERE id = ?", (_text(doc), key_id))
            conn.execute(_INSERT_AUDIT, audit)
            return True

        return self._transaction(write)

    def _put_team(self, name: str, doc: str, audit: tuple[Any, ...]) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO teams VALUES (?, ?)", (name, doc))
            conn.execute(_INSERT_AUDIT, audit)

        self._transaction(write)

    def _delete_team(self, name: str, audit: tuple[Any, ...]) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            if conn.execute("DELETE FROM teams WHERE name = ?", (name,)).rowcount != 1:
                return False
            conn.execute(_INSERT_AUDIT, audit)
            return True

        return self._transaction(write)

    def _one_doc(self, sql: str, value: str) -> dict[str, Any] | None:
        row = self._rdb().execute(sql, (value,)).fetchone()
        return None if row is None else dict(orjson.loads(row[0]))

    def _docs(self, sql: str) -> list[dict[str, Any]]:
        return [orjson.loads(row[0]) for row in self._rdb().execute(sql)]

    def _audit_log(self, limit: int, before: int | None) -> list[AuditEntry]:
        sql = "SELECT seq, at, actor, action, target, before, after FROM audit_log"
        params: tuple[Any, ...] = (limit,)
        if before is not None:
            sql += " WHERE seq < ?"
            params = (before, limit)
        rows = self._rdb().execute(sql + " ORDER BY seq DESC LIMIT ?", params).fetchall()
        return [_entry(row) for row in rows]

    # -- event-loop side ---------------------------------------------------------------------

    async def create_key(self, key: StoredKey, audit: AuditEntry) -> None:
        row = (key.id, key.secret_hash, key.created_at, _text(key_to_json(key)))
        await self._run(self._create_key, row, _audit_row(audit))

    async def get_key(self, key_id: str) -> StoredKey | None:
        doc = await self._read(self._one_doc, _SELECT_KEY, key_id)
        return None if doc is None else key_from_json(doc)

    async def key_by_hash(self, secret_hash: str) -> StoredKey | None:
        doc = await self._read(self._one_doc, _SELECT_KEY_BY_HASH, secret_hash)
        return None if doc is None else key_from_json(doc)

    async def list_keys(self) -> list[StoredKey]:
        docs = await self._read(self._docs, "SELECT doc FROM api_keys ORDER BY created_at, id")
        return [key_from_json(doc) for doc in docs]

    async def update_key(self, key: StoredKey, audit: AuditEntry) -> bool:
        return await self._run(self._update_key, key.id, key_to_json(key), _audit_row(audit))

    async def put_team(self, team: StoredTeam, audit: AuditEntry) -> None:
        await self._run(self._put_team, team.name, _text(team_to_json(team)), _audit_row(audit))

    async def get_team(self, name: str) -> StoredTeam | None:
        doc = await self._read(self._one_doc, "SELECT doc FROM teams WHERE name = ?", name)
        return None if doc is None else team_from_json(doc)

    async def list_teams(self) -> list[StoredTeam]:
        docs = await self._read(self._docs, "SELECT doc FROM teams ORDER BY name")
        return [team_from_json(doc) for doc in docs]

    async def delete_team(self, name: str, audit: AuditEntry) -> bool:
        return await self._run(self._delete_team, name, _audit_row(audit))

    async def audit_log(self, *, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        if limit <= 0:
            return []
        return await self._read(self._audit_log, limit, before)
