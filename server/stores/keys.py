"""The key store contract: virtual API keys, teams and the audit log of admin changes.

A third abstract interface beside :class:`ResponseStore` and :class:`ConversationStore`,
implemented by the same backends (``memory_keys.py``, ``sqlite_keys.py`` mixed into
``MemoryStore`` and ``SQLiteStore``): keys live where the responses they own live, so one
backup, one migration and one set of credentials cover both. The contract suite
(``tests/test_key_store.py``) runs over every registered backend.

Decisions every backend honours:

* A key is stored with the SHA-256 of its secret (``secret_hash``) and a short display
  ``prefix``; the secret itself is never handed to a store. ``key_by_hash`` is the lookup the
  authenticator makes (``server/access/auth.py``), on an index.
* Every change made through the admin API or the CLI is written *with* its audit entry, in one
  transaction: an audit log never lists a change that did not happen, nor misses one that did.
  Audit entries carry settings, never secrets or hashes (:func:`public_key` is what they hold).
* A revoked key stays stored (``revoked_at``), so its spend and its audit trail keep a name;
  it is refused at the door, never deleted.
* Records are copied through JSON: nothing returned aliases what was written.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AuditEntry",
    "KeyStore",
    "StoredKey",
    "StoredTeam",
    "key_from_json",
    "key_to_json",
    "public_key",
    "team_from_json",
    "team_to_json",
]


@dataclass(slots=True)
class StoredKey:
    """One virtual key's settings. ``None`` for a limit means "no limit"."""

    id: str  # "key_" + 24 hex digits: public, names the key in APIs, spend and logs
    secret_hash: str  # sha256 hex of the secret; the secret is never stored
    prefix: str  # the secret's first characters, for display ("sk-tnt-AbCd")
    created_at: int
    name: str | None = None
    team: str | None = None
    models: list[str] | None = None  # aliases, provider/model names or globs; None: any
    max_budget_usd: float | None = None
    budget_period: str | None = None  # "30d", "1d", "12h"…; None: a lifetime budget
    rpm: int | None = None
    tpm: int | None = None
    max_background: int | None = None
    expires_at: int | None = None  # unix seconds
    metadata: dict[str, Any] = field(default_factory=dict)
    blocked: bool = False
    revoked_at: int | None = None
    # Hosted tools the key's provider lacks: "refuse" (None, the default) or "drop".
    unsupported_tools: str | None = None


@dataclass(slots=True)
class StoredTeam:
    """A team's own limits, shared by all its keys (each key keeps its own as well)."""

    name: str
    created_at: int
    models: list[str] | None = None
    max_budget_usd: float | None = None
    budget_period: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_background: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin change: who, what, when, the settings before and after (never a secret)."""

    actor: str  # "master_key", "cli:<user>", ...
    action: str  # "key.create", "key.update", "key.revoke", "team.create", ...
    target: str  # the key id or team name
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    at: int  # unix seconds
    seq: int = 0  # assigned by the store, increasing


def key_to_json(key: StoredKey) -> dict[str, Any]:
    return dataclasses.asdict(key)


def key_from_json(data: dict[str, Any]) -> StoredKey:
    names = {f.name for f in dataclasses.fields(StoredKey)}
    return StoredKey(**{k: v for k, v in data.items() if k in names})


def team_to_json(team: StoredTeam) -> dict[str, Any]:
    return dataclasses.asdict(team)


def team_from_json(data: dict[str, Any]) -> StoredTeam:
    names = {f.name for f in dataclasses.fields(StoredTeam)}
    return StoredTeam(**{k: v for k, v in data.items() if k in names})


def public_key(key: StoredKey) -> dict[str, Any]:
    """A key's settings without its hash: what admin replies, lists and audit entries hold."""
    data = key_to_json(key)
    del data["secret_hash"]
    return data


class KeyStore(ABC):
    """Async store of virtual keys, teams and the audit log."""

    @abstractmethod
    async def create_key(self, key: StoredKey, audit: AuditEntry) -> None:
        """Insert a new key (its id and secret hash are new) with its audit entry."""

    @abstractmethod
    async def get_key(self, key_id: str) -> StoredKey | None:
        """The key (revoked ones too); None when unknown."""

    @abstractmethod
    async def key_by_hash(self, secret_hash: str) -> StoredKey | None:
        """The key whose secret hashes to ``secret_hash``; None when none does."""

    @abstractmethod
    async def list_keys(self) -> list[StoredKey]:
        """Every key, oldest first."""

    @abstractmethod
    async def update_key(self, key: StoredKey, audit: AuditEntry) -> bool:
        """Replace a key's settings (not its id or hash) with its audit entry; False when
        the key is unknown (nothing is written then)."""

    @abstractmethod
    async def put_team(self, team: StoredTeam, audit: AuditEntry) -> None:
        """Insert or replace a team with its audit entry."""

    @abstractmethod
    async def get_team(self, name: str) -> StoredTeam | None:
        """The team; None when unknown."""

    @abstractmethod
    async def list_teams(self) -> list[StoredTeam]:
        """Every team, by name."""

    @abstractmethod
    async def delete_team(self, name: str, audit: AuditEntry) -> bool:
        """Forget a team's settings (its keys keep their `team`); False when unknown."""

    @abstractmethod
    async def audit_log(self, *, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        """The newest ``limit`` entries with ``seq < before`` (all when None), newest first."""
