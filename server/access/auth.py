"""The door: a bearer token to a `Caller` identity, or an OpenAI-shaped 401.

* No master key configured: the gateway is open; nobody is told apart and nothing is looked up
  (the token, if any, is only hashed to group spend, as before keys existed).
* The master key: compared in constant time (`hmac.compare_digest`), and seen as such.
* Anything else is looked up as a virtual key by the SHA-256 of the token. The lookup is
  cached per process for `ttl_s` (1 s): a key changed by this process's admin API is seen at
  once (`invalidate`), one changed elsewhere (another worker, another replica, the CLI) within
  `ttl_s`, which is how "revoked within one second everywhere" holds without a round trip to
  the store per request. The dictionary lookup is keyed by a hash of the token, so its timing
  says nothing about the token. Unknown tokens are cached too (so spraying random tokens costs
  one store read per token per second at most), in a table of bounded size.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from turnout.engine.errors import RequestError
from turnout.server.access.secrets import token_key_id
from turnout.server.request_context import Caller, Role
from turnout.server.stores.keys import KeyStore, StoredKey

__all__ = ["OPEN", "Authenticator", "Identity"]

_MAX_CACHED = 10_000


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the bearer is; the route adds the request's own fields to make a `Caller`."""

    role: Role
    key_id: str | None = None
    team: str | None = None
    key: StoredKey | None = None

    def caller(self, request_id: str | None, deadline: float | None) -> Caller:
        return Caller(
            key_id=self.key_id, team=self.team, request_id=request_id, deadline=deadline,
            role=self.role, key=self.key,
        )  # fmt: skip


OPEN = Identity("open")


def _refused(message: str, code: str = "invalid_api_key") -> RequestError:
    return RequestError(401, message, code=code)


@dataclass(slots=True)
class _Cached:
    key: StoredKey | None
    identity: Identity | None
    fetched: float  # monotonic


class Authenticator:
    def __init__(
        self,
        master_key: str | None,
        keys: KeyStore | None,
        *,
        ttl_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._master = None if master_key is None else master_key.encode()
        self._master_identity = (
            None if master_key is None else Identity("master", key_id=token_key_id(master_key))
        )
        self._keys = keys
        self._ttl = ttl_s
        self._clock = clock  # wall clock: expires_at is a unix time
        self._monotonic = monotonic
        self._cache: dict[str, _Cached] = {}

    @property
    def open(self) -> bool:
        return self._master is None

    def invalidate(self) -> None:
        """Forget every cached lookup: the next request of each key reads the store."""
        self._cache.clear()

    async def identify(self, authorization: str) -> Identity:
        """The bearer's identity; a 401 `RequestError` for a missing, unknown, revoked, blocked
        or expired key."""
        scheme, _sep, token = authorization.partition(" ")
        token = token.strip()
        bearer = scheme.lower() == "bearer" and bool(token)
        if self._master is None:
            return Identity("open", key_id=token_key_id(token)) if bearer else OPEN
        if not bearer:
            raise _refused("Incorrect API key provided. Send 'Authorization: Bearer <key>'.")
        if hmac.compare_digest(token.encode(), self._master):
            assert self._master_identity is not None
            return self._master_identity
        digest = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(digest)
        now = self._monotonic()
        if cached is None or now - cached.fetched >= self._ttl:
            cached = await self._lookup(digest, now)
        key = cached.key
        if key is None or cached.identity is None:
            raise _refused("Incorrect API key provided. Send 'Authorization: Bearer <key>'.")
        if key.revoked_at is not None:
            raise _refused(f"The API key '{key.id}' has been revoked.")
        if key.blocked:
            raise _refused(f"The API key '{key.id}' is blocked.", code="key_blocked")
        if key.expires_at is not None and self._clock() >= key.expires_at:
            raise _refused(f"The API key '{key.id}' expired.", code="key_expired")
        return cached.identity

    async def _lookup(self, digest: str, now: float) -> _Cached:
        key = None if self._keys is None else await self._keys.key_by_hash(digest)
        identity = None if key is None else Identity("key", key_id=key.id, team=key.team, key=key)
        if len(self._cache) >= _MAX_CACHED:
            self._cache.pop(next(iter(self._cache)))  # the oldest entry
        entry = _Cached(key, identity, now)
        self._cache.pop(digest, None)  # re-inserted last: the table stays oldest first
        self._cache[digest] = entry
        return entry
