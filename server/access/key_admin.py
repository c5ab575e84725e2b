"""Managing virtual keys and teams: the one implementation behind the admin API
(`server/admin.py`), `turnout keys|teams` (`server/keys_cli.py`) and the admin console
(`server/console/`). No web framework here: each call takes a parsed body and returns the JSON
to show, or raises `RequestError` (404 `key_not_found`, 400 naming the field, …), which the API
answers as OpenAI's error body, the CLI prints and the console shows on its page.

* Every change is written with its audit entry in one store transaction (`stores/keys.py`),
  naming `actor` (`master_key`, `cli:<user>`, `ui:master_key`) and holding the settings
  before and after: `public_key` of the key, never its secret or its hash. A call that
  changes nothing writes nothing.
* After a change `on_change` runs (the API passes `Authenticator.invalidate`), so this process
  sees it at once; other processes (other workers, the CLI's gateway) within the
  authenticator's cache lifetime (1 s).
* The secret exists only in `create_key`'s reply: it is made there, hashed, and returned once.
* Updates read, change and write back: two admins changing one key at the same moment, the
  later write wins (each is in the audit log).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from turnout.engine.errors import RequestError
from turnout.server.access.key_settings import key_settings, new_team_settings, team_settings
from turnout.server.access.periods import Period, parse_period
from turnout.server.access.secrets import display_prefix, new_key_id, new_secret, secret_hash
from turnout.server.stores.base import ResponseStore, SpendQuery
from turnout.server.stores.keys import (
    AuditEntry,
    KeyStore,
    StoredKey,
    StoredTeam,
    public_key,
    team_to_json,
)

__all__ = [
    "KeyAdmin",
    "audit_json",
    "key_json",
    "key_not_found",
    "key_status",
    "team_json",
    "team_not_found",
]

AUDIT_PAGE_MAX = 1000


def key_not_found(key_id: str) -> RequestError:
    return RequestError(404, f"No API key with id '{key_id}'.", code="key_not_found")


def team_not_found(name: str) -> RequestError:
    return RequestError(404, f"No team named '{name}'.", code="team_not_found")


def key_status(key: StoredKey, now: float) -> str:
    """`revoked`, `blocked`, `expired` or `active`: what the door would say, in its order."""
    if key.revoked_at is not None:
        return "revoked"
    if key.blocked:
        return "blocked"
    if key.expires_at is not None and now >= key.expires_at:
        return "expired"
    return "active"


def key_json(key: StoredKey, now: float) -> dict[str, Any]:
    """A key as the admin API shows it: its settings and status, never its secret or hash."""
    settings = public_key(key)
    return {"id": key.id, "object": "api_key", "status": key_status(key, now), **settings}


def team_json(team: StoredTeam) -> dict[str, Any]:
    return {"name": team.name, "object": "team", **team_to_json(team)}


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "object": "audit_entry", "seq": entry.seq, "at": entry.at, "actor": entry.actor,
        "action": entry.action, "target": entry.target, "before": entry.before,
        "after": entry.after,
    }  # fmt: skip


def _cleared(field: str, value: Any) -> Any:
    """A checked setting as stored: null is no limit (None), except an empty `metadata`; a
    budget is a float even when written `5`."""
    if value is None and field == "metadata":
        return {}
    if field == "max_budget_usd" and value is not None:
        return float(value)
    return value


class KeyAdmin:
    """Keys, teams and the audit log of one store, changed in the name of `actor`."""

    def __init__(
        self,
        store: ResponseStore,
        *,
        actor: str,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._actor = actor
        self._on_change = on_change
        self._clock = clock

    @property
    def _keys(self) -> KeyStore:
        if not isinstance(self._store, KeyStore):
            raise RequestError(
                400,
                f"Virtual keys need a store that keeps them; this gateway's "
                f"{type(self._store).__name__} does not.",
                code="keys_unavailable",
            )
        return self._store

    def _audit(
        self, action: str, target: str, before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> AuditEntry:  # fmt: skip
        return AuditEntry(self._actor, action, target, before, after, int(self._clock()))

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # -- keys ---------------------------------------------------------------------------------

    async def create_key(self, body: Any) -> dict[str, Any]:
        """A new key: the reply is the only place its secret ever appears (`key`)."""
        settings = {name: _cleared(name, value) for name, value in key_settings(body).items()}
        keys = self._keys
        secret = new_secret()
        key = StoredKey(
            id=new_key_id(), secret_hash=secret_hash(secret), prefix=display_prefix(secret),
            created_at=int(self._clock()), **settings,
        )  # fmt: skip
        await keys.create_key(key, self._audit("key.create", key.id, None, public_key(key)))
        self._changed()
        shown = key_json(key, self._clock())
        return {"id": key.id, "object": "api_key", "key": secret, **shown}

    async def list_keys(self, team: str | None = None) -> dict[str, Any]:
        now = self._clock()
        keys = await self._keys.list_keys()
        data = [key_json(k, now) for k in keys if team is None or k.team == team]
        return {"object": "list", "data": data}

    async def _key(self, key_id: str) -> StoredKey:
        key = await self._keys.get_key(key_id)
        if key is None:
            raise key_not_found(key_id)
        return key

    async def key(self, key_id: str) -> dict[str, Any]:
        """The key's settings, status, and what it spent (stored responses, priced) in its
        current budget period."""
        return await self._with_spend(await self._key(key_id))

    async def _with_spend(self, key: StoredKey) -> dict[str, Any]:
        now = self._clock()
        period = Period.at(now, key.created_at, parse_period(key.budget_period))
        query = SpendQuery(
            group_by="api_key", api_key_id=key.id, start=period.start, end=period.end
        )
        return {**key_json(key, now), **await self._spend(query, period, key.max_budget_usd)}

    async def _spend(
        self, query: SpendQuery, period: Period, budget: float | None
    ) -> dict[str, Any]:
        total = (await self._store.spend(query)).total
        spent = total.cost or 0.0
        return {
            "spend": spent,
            "budget_remaining_usd": None if budget is None else max(0.0, budget - spent),
            # A lifetime budget has no period: nothing starts or resets.
            "period_start": None if period.end is None else period.start,
            "resets_at": period.end,
            "requests": total.requests,
        }

    async def update_key(self, key_id: str, body: Any) -> dict[str, Any]:
        """Change any of a key's settings (`blocked` included); a revoked key is a 409."""
        changes = {name: _cleared(name, value) for name, value in key_settings(body).items()}
        keys = self._keys
        key = await self._key(key_id)
        if key.revoked_at is not None:
            raise RequestError(
                409, f"The API key '{key_id}' is revoked; a revoked key cannot be changed.",
                code="key_revoked",
            )  # fmt: skip
        updated = dataclasses.replace(key, **changes)
        if updated != key:
            audit = self._audit("key.update", key.id, public_key(key), public_key(updated))
            if not await keys.update_key(updated, audit):
                raise key_not_found(key_id)
            self._changed()
        return await self._with_spend(updated)

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoke: the key is refused from its next request on (within a second everywhere)
        and stays listed. Revoking a revoked key changes nothing and answers the same."""
        keys = self._keys
        key = await self._key(key_id)
        if key.revoked_at is None:
            revoked = dataclasses.replace(key, revoked_at=int(self._clock()))
            audit = self._audit("key.revoke", key.id, public_key(key), public_key(revoked))
            if not await keys.update_key(revoked, audit):
                raise key_not_found(key_id)
            self._changed()
            key = revoked
        return key_json(key, self._clock())

    # -- teams --------------------------------------------------------------------------------

    async def _team(self, name: str) -> StoredTeam:
        team = await self._keys.get_team(name)
        if team is None:
            raise team_not_found(name)
        return team

    async def create_team(self, body: Any) -> dict[str, Any]:
        name, settings = new_team_settings(body)
        keys = self._keys
        if await keys.get_team(name) is not None:
            raise RequestError(
                409, f"A team named '{name}' exists already; PATCH /admin/teams/{name} "
                "changes it.", param="name", code="team_exists",
            )  # fmt: skip
        changes = {field: _cleared(field, value) for field, value in settings.items()}
        team = StoredTeam(name=name, created_at=int(self._clock()), **changes)
        await keys.put_team(team, self._audit("team.create", name, None, team_to_json(team)))
        self._changed()
        return team_json(team)

    async def list_teams(self) -> dict[str, Any]:
        return {"object": "list", "data": [team_json(t) for t in await self._keys.list_teams()]}

    async def team(self, name: str) -> dict[str, Any]:
        """The team's settings and what its keys spent (stored responses) in its period."""
        return await self._team_with_spend(await self._team(name))

    async def _team_with_spend(self, team: StoredTeam) -> dict[str, Any]:
        period = Period.at(self._clock(), team.created_at, parse_period(team.budget_period))
        query = SpendQuery(group_by="team", team=team.name, start=period.start, end=period.end)
        return {**team_json(team), **await self._spend(query, period, team.max_budget_usd)}

    async def update_team(self, name: str, body: Any) -> dict[str, Any]:
        changes = {field: _cleared(field, v) for field, v in team_settings(body).items()}
        keys = self._keys
        team = await self._team(name)
        updated = dataclasses.replace(team, **changes)
        if updated != team:
            audit = self._audit("team.update", name, team_to_json(team), team_to_json(updated))
            await keys.put_team(updated, audit)
            self._changed()
        return await self._team_with_spend(updated)

    async def delete_team(self, name: str) -> dict[str, Any]:
        """Forget a team's settings (its limits); its keys keep their team, so team-mates
        still see each other's responses."""
        keys = self._keys
        team = await self._team(name)
        if not await keys.delete_team(name, self._audit("team.delete", name,
                                                        team_to_json(team), None)):  # fmt: skip
            raise team_not_found(name)
        self._changed()
        return {"name": name, "object": "team.deleted", "deleted": True}

    # -- audit --------------------------------------------------------------------------------

    async def audit(self, *, limit: int = 100, before: int | None = None) -> dict[str, Any]:
        """Newest first; `before` (a `seq`) pages back: the next page is `before=next_before`."""
        entries = await self._keys.audit_log(limit=limit + 1, before=before)
        more = len(entries) > limit
        entries = entries[:limit]
        return {
            "object": "list",
            "data": [audit_json(e) for e in entries],
            "has_more": more,
            "next_before": entries[-1].seq if more and entries else None,
        }
