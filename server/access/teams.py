"""Team settings for the checks on the request path, read from the key store at most once per
`ttl_s` (1 s) per team: a team changed anywhere (the admin API, the CLI, another replica) is
seen within that, as a key is by the authenticator (server/access/auth.py), without a store
round trip per request."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from turnout.server.stores.keys import KeyStore, StoredTeam

__all__ = ["Teams"]

_MAX_CACHED = 10_000


@dataclass(slots=True)
class _Cached:
    team: StoredTeam | None
    fetched: float  # monotonic


class Teams:
    """A team's settings by name (None: no such team, or no key store)."""

    def __init__(
        self,
        keys: KeyStore | None,
        *,
        ttl_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._ttl = ttl_s
        self._monotonic = monotonic
        self._cache: dict[str, _Cached] = {}

    def invalidate(self) -> None:
        self._cache.clear()

    async def get(self, name: str) -> StoredTeam | None:
        if self._keys is None:
            return None
        now = self._monotonic()
        cached = self._cache.get(name)
        if cached is None or now - cached.fetched >= self._ttl:
            cached = _Cached(await self._keys.get_team(name), now)
            if len(self._cache) >= _MAX_CACHED:
                self._cache.pop(next(iter(self._cache)))  # the oldest entry
            self._cache.pop(name, None)  # re-inserted last: the table stays oldest first
            self._cache[name] = cached
        return cached.team
