"""The KeyStore contract (server/stores/keys.py) over every registered backend: keys, teams
and the audit log, each change written with its audit entry or not at all; then what only a
SQLite file shows (reopen, the version 3 → 4 migration).

Like tests/test_store_contract.py, the first part runs once per *registered* backend through
the parametrized `backend`/`store` fixtures: a new backend is covered without touching this file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_store_contract import item, priced, undo_version_4
from turnout.server.access.secrets import display_prefix, new_key_id, new_secret, secret_hash
from turnout.server.stores import (
    STORE_BACKENDS,
    ResponseStore,
    SQLiteStore,
    StoredConversation,
    open_store,
)
from turnout.server.stores.keys import (
    AuditEntry,
    KeyStore,
    StoredKey,
    StoredTeam,
    public_key,
    team_to_json,
)
from turnout.server.stores.sqlite import SCHEMA_VERSION

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=sorted(STORE_BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = STORE_BACKENDS[request.param].scratch_url(str(tmp_path))
    assert url is not None, f"{request.param}:// store: no scratch store; start its server"
    return url


@pytest.fixture
async def store(backend: str) -> AsyncIterator[KeyStore]:
    s = await open_store(backend)
    assert isinstance(s, KeyStore)
    try:
        yield s
    finally:
        await s.aclose()


def make_key(created_at: int = 1_765_552_659, **settings: Any) -> StoredKey:
    secret = new_secret()
    return StoredKey(
        id=new_key_id(),
        secret_hash=secret_hash(secret),
        prefix=display_prefix(secret),
        created_at=created_at,
        **settings,
    )


def full_key() -> StoredKey:
    """Every field set, with values whose types could drift (floats, nested metadata)."""
    return make_key(
        name="Ada's key ✓",
        team="research",
        models=["claude", "openai/*", "gemini/gemini-2.5-*"],
        max_budget_usd=12.5,
        budget_period="30d",
        rpm=60,
        tpm=100_000,
        max_background=3,
        expires_at=1_900_000_000,
        metadata={"owner": "ada", "cost_center": "42"},
        blocked=True,
        revoked_at=1_800_000_000,
        unsupported_tools="drop",
    )


def audit(action: str, target: str, after: dict[str, Any] | None = None, at: int = 7) -> AuditEntry:
    return AuditEntry("test", action, target, None, after, at)


def same(a: Any, b: Any) -> bool:
    """Equal with identical types all the way down (1 == 1.0 would hide drift)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return same(dataclasses.asdict(a), dataclasses.asdict(b))  # type: ignore[arg-type]
    return bool(a == b)


def test_every_registered_backend_keeps_keys() -> None:
    for scheme, cls in STORE_BACKENDS.items():
        assert issubclass(cls, KeyStore), scheme
        assert not cls.__abstractmethods__, scheme


# -- keys -----------------------------------------------------------------------------------------


async def test_a_key_round_trips_by_id_and_by_hash(store: KeyStore) -> None:
    key = full_key()
    await store.create_key(key, audit("key.create", key.id, public_key(key)))
    assert same(await store.get_key(key.id), key)
    assert same(await store.key_by_hash(key.secret_hash), key)
    plain = make_key()
    await store.create_key(plain, audit("key.create", plain.id))
    got = await store.get_key(plain.id)
    assert same(got, plain) and got is not None and got.metadata == {} and got.models is None
    assert await store.get_key("key_000000000000000000000000") is None
    assert await store.key_by_hash(secret_hash("sk-tnt-never-made")) is None


async def test_a_second_key_with_the_same_id_or_secret_is_refused_and_logs_nothing(
    store: KeyStore,
) -> None:
    key = make_key(name="first")
    await store.create_key(key, audit("key.create", key.id))
    same_id = dataclasses.replace(make_key(name="second"), id=key.id)
    same_hash = dataclasses.replace(make_key(name="third"), secret_hash=key.secret_hash)
    for clash in (same_id, same_hash):
        with pytest.raises(ValueError, match="exists already"):
            await store.create_key(clash, audit("key.create", clash.id))
    # The failed creates wrote neither a key nor an audit entry (one transaction each).
    assert [e.action for e in await store.audit_log()] == ["key.create"]
    assert same(await store.get_key(key.id), key)
    assert same(await store.key_by_hash(key.secret_hash), key)
    assert [k.id for k in await store.list_keys()] == [key.id]


async def test_list_keys_oldest_first_revoked_ones_included(store: KeyStore) -> None:
    keys = [make_key(created_at=t) for t in (30, 10, 20, 10)]
    keys[2] = dataclasses.replace(keys[2], revoked_at=40)
    for key in keys:
        await store.create_key(key, audit("key.create", key.id))
    want = sorted(keys, key=lambda k: (k.created_at, k.id))
    assert [k.id for k in await store.list_keys()] == [k.id for k in want]
    assert all(same(a, b) for a, b in zip(await store.list_keys(), want, strict=True))


async def test_update_replaces_settings_but_never_the_id_or_the_hash(store: KeyStore) -> None:
    key = make_key(rpm=10, metadata={"a": "1"})
    await store.create_key(key, audit("key.create", key.id))
    changed = dataclasses.replace(
        key,
        rpm=None,
        blocked=True,
        models=["claude"],
        metadata={},
        name="renamed",
        secret_hash=secret_hash("sk-tnt-an-attempt-to-swap-the-secret"),
    )
    entry = AuditEntry("test", "key.update", key.id, public_key(key), public_key(changed), 9)
    assert await store.update_key(changed, entry) is True
    got = await store.get_key(key.id)
    assert got is not None
    assert same(got, dataclasses.replace(changed, secret_hash=key.secret_hash))
    # The old secret still finds the key; the hash an update tried to set finds nothing.
    assert same(await store.key_by_hash(key.secret_hash), got)
    assert await store.key_by_hash(changed.secret_hash) is None
    (last, _) = await store.audit_log(limit=2)
    assert (last.action, last.before, last.after) == ("key.update", entry.before, entry.after)


async def test_updating_an_unknown_key_writes_nothing(store: KeyStore) -> None:
    ghost = make_key()
    assert await store.update_key(ghost, audit("key.update", ghost.id)) is False
    assert await store.get_key(ghost.id) is None
    assert await store.audit_log() == []


async def test_keys_are_copies(store: KeyStore) -> None:
    key = make_key(models=["a"], metadata={"k": "v"})
    await store.create_key(key, audit("key.create", key.id))
    key.models.append("written-after-create")  # type: ignore[union-attr]
    key.metadata["k"] = "changed-after-create"
    got = await store.get_key(key.id)
    assert got is not None and got.models == ["a"] and got.metadata == {"k": "v"}
    got.models.append("changed-after-read")  # type: ignore[union-attr]
    got.metadata["new"] = "x"
    for again in (
        await store.get_key(key.id),
        await store.key_by_hash(key.secret_hash),
        (await store.list_keys())[0],
    ):
        assert again is not None and again.models == ["a"] and again.metadata == {"k": "v"}


async def test_concurrent_creates_all_land_each_with_its_entry(store: KeyStore) -> None:
    keys = [make_key(created_at=i) for i in range(40)]
    await asyncio.gather(*(store.create_key(k, audit("key.create", k.id)) for k in keys))
    assert {k.id for k in await store.list_keys()} == {k.id for k in keys}
    entries = await store.audit_log(limit=100)
    assert sorted(e.target for e in entries) == sorted(k.id for k in keys)
    assert len({e.seq for e in entries}) == 40


# -- teams ----------------------------------------------------------------------------------------


async def test_teams_put_get_list_replace_delete(store: KeyStore) -> None:
    ops = StoredTeam(
        "ops",
        5,
        models=["claude"],
        max_budget_usd=100.0,
        budget_period="1d",
        rpm=600,
        tpm=10**6,
        max_background=8,
        metadata={"lead": "grace"},
    )
    ads = StoredTeam("ads", 6)
    for team in (ops, ads):
        await store.put_team(team, audit("team.create", team.name, team_to_json(team)))
    assert same(await store.get_team("ops"), ops)
    assert same(await store.get_team("ads"), ads)
    assert await store.get_team("nobody") is None
    assert [t.name for t in await store.list_teams()] == ["ads", "ops"]  # by name
    cheaper = dataclasses.replace(ops, max_budget_usd=50.0, rpm=None)
    await store.put_team(cheaper, audit("team.update", "ops"))
    assert same(await store.get_team("ops"), cheaper)
    assert await store.delete_team("ops", audit("team.delete", "ops")) is True
    assert await store.get_team("ops") is None
    assert await store.delete_team("ops", audit("team.delete", "ops")) is False
    actions = [e.action for e in await store.audit_log()]
    assert actions == ["team.delete", "team.update", "team.create", "team.create"]
    got = await store.get_team("ads")
    assert got is not None
    got.metadata["x"] = "y"
    assert same(await store.get_team("ads"), ads)


# -- the audit log --------------------------------------------------------------------------------


async def test_audit_log_newest_first_with_limit_and_cursor(store: KeyStore) -> None:
    teams = [StoredTeam(f"t{i:02d}", i) for i in range(12)]
    for i, team in enumerate(teams):
        before = {"n": i - 1, "nested": {"list": [1, 2.5, None]}} if i else None
        entry = AuditEntry(f"actor{i}", "team.create", team.name, before, {"n": i}, 1000 + i)
        await store.put_team(team, entry)
    entries = await store.audit_log(limit=100)
    assert [e.target for e in entries] == [t.name for t in reversed(teams)]
    seqs = [e.seq for e in entries]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 12 and min(seqs) >= 1
    newest = entries[0]
    assert (newest.actor, newest.action, newest.at) == ("actor11", "team.create", 1011)
    assert same(newest.before, {"n": 10, "nested": {"list": [1, 2.5, None]}})
    assert same(newest.after, {"n": 11}) and entries[-1].before is None
    # Paging: `before` a seq gives what is older, `limit` caps each page.
    page1 = await store.audit_log(limit=5)
    page2 = await store.audit_log(limit=5, before=page1[-1].seq)
    page3 = await store.audit_log(limit=5, before=page2[-1].seq)
    assert [e.seq for e in page1 + page2 + page3] == seqs
    assert len(page3) == 2 and await store.audit_log(limit=5, before=page3[-1].seq) == []
    assert await store.audit_log(limit=0) == []
    # Entries are copies.
    page1[0].after["n"] = "changed"  # type: ignore[index]
    assert (await store.audit_log(limit=1))[0].after == {"n": 11}


async def test_closed_store_refuses_key_calls(backend: str) -> None:
    s = await open_store(backend)
    assert isinstance(s, KeyStore)
    await s.aclose()
    key = make_key()
    calls = (
        s.create_key(key, audit("key.create", key.id)),
        s.get_key(key.id),
        s.key_by_hash(key.secret_hash),
        s.list_keys(),
        s.audit_log(),
        s.list_teams(),
        s.put_team(StoredTeam("t", 1), audit("team.create", "t")),
        s.get_team("t"),
    )
    for call in calls:
        with pytest.raises(RuntimeError):
            await call


# -- SQLite: what only a file shows ---------------------------------------------------------------


async def test_sqlite_keys_teams_and_audit_survive_reopen(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    key = full_key()
    store = SQLiteStore(db)
    await store.open()
    await store.create_key(key, audit("key.create", key.id, public_key(key)))
    await store.put_team(StoredTeam("ops", 3, rpm=5), audit("team.create", "ops"))
    await store.aclose()
    again = SQLiteStore(db)
    await again.open()
    try:
        assert same(await again.key_by_hash(key.secret_hash), key)
        assert same(await again.get_team("ops"), StoredTeam("ops", 3, rpm=5))
        assert [e.action for e in await again.audit_log()] == ["team.create", "key.create"]
    finally:
        await again.aclose()


async def test_sqlite_a_second_handle_sees_a_change_at_once(tmp_path: Path) -> None:
    """The CLI and the gateway are two handles on one file: a revocation written by one is
    read by the other's next lookup (the authenticator's cache is the only delay)."""
    db = tmp_path / "shared.db"
    gateway, cli = SQLiteStore(db), SQLiteStore(db)
    await gateway.open()
    await cli.open()
    try:
        key = make_key()
        await cli.create_key(key, audit("key.create", key.id))
        assert same(await gateway.key_by_hash(key.secret_hash), key)
        revoked = dataclasses.replace(key, revoked_at=99)
        assert await cli.update_key(revoked, audit("key.revoke", key.id))
        assert same(await gateway.key_by_hash(key.secret_hash), revoked)
    finally:
        await gateway.aclose()
        await cli.aclose()


def _key_schema(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE tbl_name IN "
            "('api_keys', 'teams', 'audit_log') ORDER BY name"
        ).fetchall()
    conn.close()
    return [tuple(row) for row in rows]


async def test_sqlite_migrates_a_version_3_database(tmp_path: Path) -> None:
    db = tmp_path / "v3.db"
    s = SQLiteStore(db)
    await s.open()
    await s.put(priced("kept", team=None))
    await s.create_conversation(StoredConversation("conv_kept", 5), [item("msg_1")])
    await s.aclose()
    conn = sqlite3.connect(db)
    undo_version_4(conn)  # what version 3 was: no key tables, no team columns
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    conn.close()
    assert _key_schema(db) == []

    store: ResponseStore = SQLiteStore(db)
    await store.open()
    try:
        assert isinstance(store, SQLiteStore)
        assert await store.get("kept") == priced("kept", team=None)  # the data stayed
        assert await store.conversation_items("conv_kept") == [item("msg_1")]
        key = make_key(team="t")
        await store.create_key(key, audit("key.create", key.id))  # and the new tables work
        assert same(await store.key_by_hash(key.secret_hash), key)
        assert [e.target for e in await store.audit_log()] == [key.id]
    finally:
        await store.aclose()
    fresh = SQLiteStore(tmp_path / "fresh.db")
    await fresh.open()
    await fresh.aclose()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    check.close()
    # The migrated file has exactly the key tables (and indexes) a new file has.
    assert _key_schema(db) == _key_schema(tmp_path / "fresh.db")
    assert len(_key_schema(db)) >= 3
