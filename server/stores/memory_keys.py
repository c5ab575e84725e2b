"""The key store half of ``MemoryStore`` (``keys.py`` is the contract): keys, teams and the
audit log as orjson bytes in dicts, each change and its audit entry under one lock."""

from __future__ import annotations

import dataclasses
import threading

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

__all__ = ["MemoryKeys"]


class MemoryKeys(KeyStore):
    """Mixed into ``MemoryStore``, which provides ``_lock`` and ``_check_open``."""

    _lock: threading.Lock

    def _check_open(self) -> None:  # pragma: no cover - the store's own replaces it
        raise NotImplementedError

    def _init_keys(self) -> None:
        """Called from the store's ``__init__``."""
        # key id -> key; secret hash -> key id; team name -> team (orjson bytes).
        self._key_rows: dict[str, bytes] = {}
        self._key_hashes: dict[str, str] = {}
        self._team_rows: dict[str, bytes] = {}
        self._audit: list[AuditEntry] = []

    def _key_tables(self) -> tuple[dict[str, bytes], dict[str, str], dict[str, bytes]]:
        return self._key_rows, self._key_hashes, self._team_rows

    def _log(self, audit: AuditEntry) -> None:
        self._audit.append(dataclasses.replace(audit, seq=len(self._audit) + 1))

    async def create_key(self, key: StoredKey, audit: AuditEntry) -> None:
        self._check_open()
        data = orjson.dumps(key_to_json(key))
        with self._lock:
            keys, hashes, _ = self._key_tables()
            if key.id in keys or key.secret_hash in hashes:
                raise ValueError(f"key {key.id!r} (or its secret) exists already")
            keys[key.id] = data
            hashes[key.secret_hash] = key.id
            self._log(audit)

    async def get_key(self, key_id: str) -> StoredKey | None:
        self._check_open()
        with self._lock:
            data = self._key_tables()[0].get(key_id)
        return None if data is None else key_from_json(orjson.loads(data))

    async def key_by_hash(self, secret_hash: str) -> StoredKey | None:
        self._check_open()
        with self._lock:
            keys, hashes, _ = self._key_tables()
            key_id = hashes.get(secret_hash)
            data = None if key_id is None else keys.get(key_id)
        return None if data is None else key_from_json(orjson.loads(data))

    async def list_keys(self) -> list[StoredKey]:
        self._check_open()
        with self._lock:
            rows = list(self._key_tables()[0].values())
        keys = [key_from_json(orjson.loads(data)) for data in rows]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def update_key(self, key: StoredKey, audit: AuditEntry) -> bool:
        self._check_open()
        with self._lock:
            keys, _, _ = self._key_tables()
            old = keys.get(key.id)
            if old is None:
                return False
            stored = orjson.loads(old)
            # The id and the secret's hash never change through an update.
            data = {**key_to_json(key), "secret_hash": stored["secret_hash"]}
            keys[key.id] = orjson.dumps(data)
            self._log(audit)
        return True

    async def put_team(self, team: StoredTeam, audit: AuditEntry) -> None:
        self._check_open()
        data = orjson.dumps(team_to_json(team))
        with self._lock:
            self._key_tables()[2][team.name] = data
            self._log(audit)

    async def get_team(self, name: str) -> StoredTeam | None:
        self._check_open()
        with self._lock:
            data = self._key_tables()[2].get(name)
        return None if data is None else team_from_json(orjson.loads(data))

    async def list_teams(self) -> list[StoredTeam]:
        self._check_open()
        with self._lock:
            rows = sorted(self._key_tables()[2].items())
        return [team_from_json(orjson.loads(data)) for _, data in rows]

    async def delete_team(self, name: str, audit: AuditEntry) -> bool:
        self._check_open()
        with self._lock:
            teams = self._key_tables()[2]
            if teams.pop(name, None) is None:
                return False
            self._log(audit)
        return True

    async def audit_log(self, *, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        self._check_open()
        with self._lock:
            entries = [e for e in self._audit if before is None or e.seq < before]
        return [orjson_copy(e) for e in reversed(entries[-limit:])] if limit > 0 else []


def orjson_copy(entry: AuditEntry) -> AuditEntry:
    """A copy that shares no dict with the log."""
    return dataclasses.replace(
        entry,
        before=None if entry.before is None else orjson.loads(orjson.dumps(entry.before)),
        after=None if entry.after is None else orjson.loads(orjson.dumps(entry.after)),
    )
