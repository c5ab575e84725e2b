"""The door (server/access/auth.py): a bearer token to an identity or a 401, with fake clocks.

The open gateway looks nothing up; the master key is compared in constant time; a virtual key
is looked up by its hash, refused when unknown, revoked, blocked or expired, and cached for at
most `ttl_s`: a change written by another store handle (the CLI, another worker) is seen within
the TTL, one made through `invalidate` at once, and the cache stays bounded however many
tokens are sprayed at it.
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from turnout.engine.errors import RequestError
from turnout.server.access import auth as auth_module
from turnout.server.access.auth import OPEN, Authenticator
from turnout.server.access.secrets import (
    display_prefix,
    new_key_id,
    new_secret,
    secret_hash,
    token_key_id,
)
from turnout.server.stores import MemoryStore, SQLiteStore
from turnout.server.stores.keys import AuditEntry, KeyStore, StoredKey

pytestmark = pytest.mark.anyio

MASTER = "mk-the-master-key-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    """A settable clock, for both the wall clock (expiry) and the monotonic one (the TTL)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingStore(MemoryStore):
    """Counts the authenticator's lookups."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def key_by_hash(self, secret_hash: str) -> StoredKey | None:
        self.lookups += 1
        return await super().key_by_hash(secret_hash)


async def add_key(store: KeyStore, **settings: Any) -> tuple[StoredKey, str]:
    secret = new_secret()
    key = StoredKey(
        id=new_key_id(),
        secret_hash=secret_hash(secret),
        prefix=display_prefix(secret),
        created_at=1_700_000_000,
        **settings,
    )
    await store.create_key(key, AuditEntry("test", "key.create", key.id, None, None, 1))
    return key, secret


async def change(store: KeyStore, key: StoredKey, **settings: Any) -> StoredKey:
    changed = dataclasses.replace(key, **settings)
    assert await store.update_key(changed, AuditEntry("test", "key.update", key.id, None, None, 2))
    return changed


def bearer(token: str) -> str:
    return f"Bearer {token}"


async def refused(auth: Authenticator, header: str, code: str = "invalid_api_key") -> str:
    with pytest.raises(RequestError) as caught:
        await auth.identify(header)
    assert caught.value.status == 401 and caught.value.code == code, caught.value
    return caught.value.message


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def wall() -> Clock:
    return Clock()


@pytest.fixture
def mono() -> Clock:
    return Clock(100.0)


@pytest.fixture
def auth(store: CountingStore, wall: Clock, mono: Clock) -> Authenticator:
    return Authenticator(MASTER, store, ttl_s=1.0, clock=wall, monotonic=mono)


# -- no master key: the open gateway ------------------------------------------------------------


async def test_an_open_gateway_lets_everyone_in_and_looks_nothing_up(store: CountingStore) -> None:
    key, secret = await add_key(store)
    gate = Authenticator(None, store)
    assert gate.open
    assert await gate.identify("") is OPEN
    assert await gate.identify("Basic abc") is OPEN
    anyone = await gate.identify(bearer("whatever-token"))
    assert anyone.role == "open" and anyone.key_id == token_key_id("whatever-token")
    # Even a virtual key's secret is just a token there: keys are not checked without a master.
    as_key = await gate.identify(bearer(secret))
    assert as_key.role == "open" and as_key.key_id != key.id and as_key.key is None
    assert store.lookups == 0


# -- the master key -------------------------------------------------------------------------------


async def test_the_master_key_is_recognised_in_constant_time(
    auth: Authenticator, store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert not auth.open
    master = await auth.identify(bearer(MASTER))
    assert master.role == "master" and master.key_id == token_key_id(MASTER)
    assert master.team is None and master.key is None
    assert (await auth.identify(f"bearer  {MASTER} ")).role == "master"  # scheme in any case
    assert compared and all(b == MASTER.encode() for _, b in compared)
    assert store.lookups == 0  # the master key is never looked up


@pytest.mark.parametrize("header", ["", "Bearer", "Bearer   ", "Basic " + MASTER, MASTER])
async def test_no_bearer_token_is_a_401(auth: Authenticator, header: str) -> None:
    message = await refused(auth, header)
    assert MASTER not in message


# -- virtual keys ---------------------------------------------------------------------------------


async def test_a_virtual_key_is_its_own_identity(auth: Authenticator, store: CountingStore) -> None:
    key, secret = await add_key(store, team="research", rpm=5)
    who = await auth.identify(bearer(secret))
    assert (who.role, who.key_id, who.team) == ("key", key.id, "research")
    assert who.key == key
    caller = who.caller("req-1", None)
    assert (caller.role, caller.key_id, caller.team, caller.key) == ("key", key.id, "research", key)


async def test_an_unknown_token_is_a_401_that_quotes_nothing(
    auth: Authenticator, store: CountingStore
) -> None:
    await add_key(store)
    near_miss = new_secret()
    message = await refused(auth, bearer(near_miss))
    assert near_miss not in message and near_miss[:12] not in message
    assert await refused(auth, bearer(MASTER + "x"))  # the master key and then some


async def test_revoked_blocked_and_expired_keys_are_refused(
    auth: Authenticator, store: CountingStore, wall: Clock, mono: Clock
) -> None:
    revoked, s1 = await add_key(store, revoked_at=1_700_000_100)
    blocked, s2 = await add_key(store, blocked=True)
    expiring, s3 = await add_key(store, expires_at=int(wall.now) + 60)
    message = await refused(auth, bearer(s1))
    assert revoked.id in message and "revoked" in message and s1 not in message
    assert blocked.id in await refused(auth, bearer(s2), "key_blocked")
    assert (await auth.identify(bearer(s3))).key_id == expiring.id
    wall.now += 59
    mono.now += 10  # past the cache: re-read, still valid
    assert (await auth.identify(bearer(s3))).key_id == expiring.id
    wall.now += 1  # expires_at reached: refused at once, cached or not
    assert expiring.id in await refused(auth, bearer(s3), "key_expired")
    # Revoked wins over blocked (the order the status is reported in).
    both, s4 = await add_key(store, blocked=True, revoked_at=5)
    assert "revoked" in await refused(auth, bearer(s4))
    assert both.id


# -- the cache: revocation everywhere within ttl_s ------------------------------------------------


async def test_lookups_are_cached_for_ttl_s(
    auth: Authenticator, store: CountingStore, mono: Clock
) -> None:
    _, secret = await add_key(store)
    for _ in range(5):
        await auth.identify(bearer(secret))
    assert store.lookups == 1
    mono.now += 0.999
    await auth.identify(bearer(secret))
    assert store.lookups == 1
    mono.now += 0.001
    await auth.identify(bearer(secret))
    assert store.lookups == 2


@pytest.fixture
async def two_handles(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore]]:
    """The gateway's store and the CLI's, on one SQLite file."""
    gateway, cli = SQLiteStore(tmp_path / "keys.db"), SQLiteStore(tmp_path / "keys.db")
    await gateway.open()
    await cli.open()
    yield gateway, cli
    await gateway.aclose()
    await cli.aclose()


async def test_a_revocation_by_another_handle_is_seen_within_ttl(
    two_handles: tuple[SQLiteStore, SQLiteStore], wall: Clock, mono: Clock
) -> None:
    gateway, cli = two_handles
    auth = Authenticator(MASTER, gateway, ttl_s=1.0, clock=wall, monotonic=mono)
    key, secret = await add_key(cli)
    assert (await auth.identify(bearer(secret))).key_id == key.id
    await change(cli, key, revoked_at=int(wall.now))
    mono.now += 0.5  # still cached: the revocation is not seen yet (at most ttl_s late)
    assert (await auth.identify(bearer(secret))).key_id == key.id
    mono.now += 0.5  # ttl_s after the lookup: read again, refused
    await refused(auth, bearer(secret))


async def test_invalidate_makes_a_change_immediate(
    auth: Authenticator, store: CountingStore
) -> None:
    key, secret = await add_key(store)
    assert (await auth.identify(bearer(secret))).key_id == key.id
    blocked = await change(store, key, blocked=True)
    assert (await auth.identify(bearer(secret))).key_id == key.id  # cached
    auth.invalidate()
    await refused(auth, bearer(secret), "key_blocked")
    await change(store, blocked, blocked=False)
    auth.invalidate()
    assert (await auth.identify(bearer(secret))).key_id == key.id


async def test_an_unknown_answer_is_cached_too_and_expires(
    auth: Authenticator, store: CountingStore, mono: Clock
) -> None:
    """Spraying one random token costs one store read per second, and a key created right
    after an unknown lookup works within ttl_s (at once after `invalidate`)."""
    secret = new_secret()
    for _ in range(3):
        await refused(auth, bearer(secret))
    assert store.lookups == 1
    key = StoredKey(new_key_id(), secret_hash(secret), display_prefix(secret), 1)
    await store.create_key(key, AuditEntry("test", "key.create", key.id, None, None, 1))
    await refused(auth, bearer(secret))  # the cached "unknown"
    mono.now += 1.0
    assert (await auth.identify(bearer(secret))).key_id == key.id


async def test_the_cache_is_bounded_and_drops_the_oldest(
    auth: Authenticator, store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_module, "_MAX_CACHED", 50)
    key, secret = await add_key(store)
    await auth.identify(bearer(secret))  # the oldest entry
    for _ in range(200):
        await refused(auth, bearer(new_secret()))
    cache = auth._cache
    assert len(cache) <= 50
    lookups = store.lookups
    # The key's entry was the oldest and went first: it is read again, and still works.
    assert (await auth.identify(bearer(secret))).key_id == key.id
    assert store.lookups == lookups + 1
    assert len(cache) <= 50
