"""A team's own limits (`StoredTeam`), read from the key store and kept for a second.

Budgets, rate limits and `max_background` of a team are shared by all its keys, so every
request of a key with a team needs the team's settings. They are cached per process for
`ttl_s` (1 s, like the authenticator's key lookups): a team changed elsewhere is seen within a
second, and a busy team costs one store read per second, never one per request. A key whose
team has no stored settings has no team limits (cached as such).
"""

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
        """Forget every cached team: the next request of each reads the store."""
        self._cache.clear()

    async def get(self, name: str | None) -> StoredTeam | None:
        """The team's settings; None for no team, an unknown team or no key store."""
        if name is None or self._keys is None:
            return None
        now = self._monotonic()
        cached = self._cache.get(name)
        if cached is None or now - cached.fetched >= self._ttl:
            team = await self._keys.get_team(name)
            if len(self._cache) >= _MAX_CACHED and name not in self._cache:
                self._cache.pop(next(iter(self._cache)))  # the oldest entry
            cached = self._cache[name] = _Cached(team, now)
        return cached.team
