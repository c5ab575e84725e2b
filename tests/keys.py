"""Virtual keys for tests, written straight into a gateway's store (before or while it runs:
the gateway reads a key it has not seen on its first request; a cached "unknown" answer lasts
at most one second)."""

from __future__ import annotations

import asyncio
import getpass
import time
from pathlib import Path
from typing import Any

from turnout.server.access.secrets import display_prefix, new_key_id, new_secret, secret_hash
from turnout.server.stores import SQLiteStore
from turnout.server.stores.keys import AuditEntry, StoredKey, StoredTeam, public_key

__all__ = ["make_key", "make_team"]


async def _create_key(db: Path, **settings: Any) -> tuple[StoredKey, str]:
    secret = new_secret()
    key = StoredKey(
        id=new_key_id(), secret_hash=secret_hash(secret), prefix=display_prefix(secret),
        created_at=int(settings.pop("created_at", time.time())), **settings,
    )  # fmt: skip
    store = SQLiteStore(db)
    await store.open()
    try:
        audit = AuditEntry(
            f"test:{getpass.getuser()}", "key.create", key.id, None, public_key(key),
            int(time.time()),
        )  # fmt: skip
        await store.create_key(key, audit)
    finally:
        await store.aclose()
    return key, secret


def make_key(db: Path, **settings: Any) -> tuple[StoredKey, str]:
    """A new key with `settings` (StoredKey fields) in the SQLite store at `db`: the key and
    its secret."""
    return asyncio.run(_create_key(db, **settings))


async def _put_team(db: Path, team: StoredTeam) -> None:
    store = SQLiteStore(db)
    await store.open()
    try:
        audit = AuditEntry("test", "team.create", team.name, None, None, int(time.time()))
        await store.put_team(team, audit)
    finally:
        await store.aclose()


def make_team(db: Path, name: str, **settings: Any) -> StoredTeam:
    team = StoredTeam(name=name, created_at=int(settings.pop("created_at", time.time())),
                      **settings)  # fmt: skip
    asyncio.run(_put_team(db, team))
    return team
