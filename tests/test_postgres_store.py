"""What only the PostgreSQL store shows (the contract suite runs it through everything else):
migrations under the advisory lock, from concurrent stores and processes; the schema has every
column; group commits; NUL characters; the password never shown; its key store; `turnout
migrate`. Runs on the test server (tests/postgres.py): a server that does not answer fails
these tests, naming it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import postgres
from tests.test_store_contract import record, same_record
from turnout.engine.errors import ConfigError
from turnout.server.cli import mask_store_url
from turnout.server.stores import PostgresStore, SpendQuery, create_store, open_store
from turnout.server.stores.columns import COLUMN_NAMES
from turnout.server.stores.keys import AuditEntry, StoredKey, StoredTeam, public_key
from turnout.server.stores.postgres_schema import MIGRATION_LOCK, SCHEMA_VERSION
from turnout.server.stores.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "hunter2-pg-secret"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """A store URL on a schema nobody has opened yet, dropped afterwards."""
    the_url = postgres.schema_url(uuid.uuid4().hex[:12])
    try:
        yield the_url
    finally:
        await PostgresStore.drop_scratch(the_url)


@pytest.fixture
async def store(url: str) -> AsyncIterator[PostgresStore]:
    s = await open_store(url)
    assert isinstance(s, PostgresStore)
    try:
        yield s
    finally:
        await s.aclose()


def schema_of(url: str) -> str:
    return url.rpartition("schema=")[2]


async def versions(url: str) -> list[int]:
    conn = await postgres.connect()
    try:
        rows = await conn.fetch(f"SELECT version FROM {schema_of(url)}.schema_version")
    finally:
        await conn.close()
    return sorted(row[0] for row in rows)


# -- migrations ---------------------------------------------------------------------------------


async def test_concurrent_opens_of_a_fresh_database_migrate_once(url: str) -> None:
    stores = [create_store(url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert [s.schema_version for s in stores] == [SCHEMA_VERSION] * 4
        applied = [s.migrations_applied for s in stores]
        assert sorted(applied) == [(), (), (), tuple(range(1, SCHEMA_VERSION + 1))]
        assert await versions(url) == list(range(1, SCHEMA_VERSION + 1))
        await stores[0].put(record("resp_m"))
        assert await stores[3].get("resp_m") is not None
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))


_OPEN_AT = textwrap.dedent(
    """
    import asyncio, sys, time
    from turnout.server.stores import open_store

    async def main() -> None:
        time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # both start together
        store = await open_store(sys.argv[1])
        print(",".join(map(str, store.migrations_applied)) or "-", flush=True)
        await store.aclose()

    asyncio.run(main())
    """
)


async def test_two_processes_opening_a_fresh_database_migrate_once(url: str) -> None:
    start = time.time() + 2.0  # after both interpreters have imported Turnout
    processes = []
    for _ in range(2):
        processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", _OPEN_AT, url, str(start),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            )
        )  # fmt: skip
    outputs = [await p.communicate() for p in processes]
    for p, (_out, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err.decode()
    printed = sorted(out.decode().strip() for out, _ in outputs)
    assert printed == ["-", ",".join(map(str, range(1, SCHEMA_VERSION + 1)))]
    assert await versions(url) == list(range(1, SCHEMA_VERSION + 1))


async def test_migrations_wait_for_the_lock_another_process_holds(url: str) -> None:
    conn = await postgres.connect()
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            opening = asyncio.create_task(open_store(url))
            await asyncio.sleep(0.3)
            assert not opening.done()  # queued on the lock, not racing past it
        s = await opening  # the lock released: it migrates
        assert s.migrations_applied == tuple(range(1, SCHEMA_VERSION + 1))
        await s.aclose()
    finally:
        await conn.close()


async def test_every_column_is_in_the_table(store: PostgresStore, url: str) -> None:
    # A column added to columns.COLUMNS needs a PostgreSQL migration too.
    conn = await postgres.connect()
    try:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = 'responses'",
            schema_of(url),
        )
    finally:
        await conn.close()
    # cancel_requested is no record column: only request_cancel sets it.
    assert sorted(row[0] for row in rows) == sorted([*COLUMN_NAMES, "cancel_requested"])


async def test_a_newer_schema_is_refused(url: str) -> None:
    s = await open_store(url)
    await s.aclose()
    conn = await postgres.connect()
    try:
        await conn.execute(
            f"INSERT INTO {schema_of(url)}.schema_version (version) VALUES ($1)",
            SCHEMA_VERSION + 1,
        )
    finally:
        await conn.close()
    with pytest.raises(RuntimeError, match=f"version {SCHEMA_VERSION + 1} is newer"):
        await open_store(url)


# -- writes ---------------------------------------------------------------------------------------


async def test_a_bad_row_in_a_group_commit_fails_only_its_own_put(store: PostgresStore) -> None:
    good = [record(f"resp_g{i}") for i in range(10)]
    bad = record("resp_bad", created_at=2**63)  # past bigint: refused by the driver
    results = await asyncio.gather(
        *(store.put(r) for r in (*good[:5], bad, *good[5:])), return_exceptions=True
    )
    assert [isinstance(r, Exception) for r in results] == [False] * 5 + [True] + [False] * 5
    for rec in good:
        got = await store.get(rec.id)
        assert got is not None and same_record(got, rec)
    assert await store.get("resp_bad") is None


async def test_nul_characters_never_reach_text_columns(store: PostgresStore) -> None:
    rec = record(
        "resp_nul", model="m\x00odel", tags={"k\x00": "v\x00"},
        response={"text": "keeps \x00 and \\u0000"}, request={"metadata": {"k\x00": "v\x00"}},
    )  # fmt: skip
    await store.put(rec)
    got = await store.get("resp_nul")
    assert got is not None
    assert got.model == "m\ufffdodel" and got.tags == {"k\ufffd": "v\ufffd"}
    assert got.response == rec.response and got.request == rec.request  # documents exact
    report = await store.spend(SpendQuery("metadata:k\ufffd"))
    assert [(r.key, r.requests) for r in report.data] == [("v\ufffd", 1)]
    # A client's id with a NUL finds nothing; it is never an error.
    assert await store.get("resp\x00") is None
    assert await store.delete("resp\x00") is False
    assert await store.get_conversation("conv\x00") is None
    assert await store.get_key("key\x00") is None


async def test_probe_write_leaves_nothing(store: PostgresStore, url: str) -> None:
    await store.probe_write()
    conn = await postgres.connect()
    try:
        count = await conn.fetchval(f"SELECT count(*) FROM {schema_of(url)}.turnout_probe")
    finally:
        await conn.close()
    assert count == 0


# -- the password ---------------------------------------------------------------------------------


def test_the_password_is_never_shown_by_the_url_or_the_store() -> None:
    url = f"postgresql://turnout:{PASSWORD}@db.internal:6543/gw?schema=a1&pool_size=3"
    parsed = PostgresStore.parse_url(url)
    assert parsed.options["password"] == PASSWORD and PASSWORD not in repr(parsed)
    assert PASSWORD not in repr(create_store(url))
    assert mask_store_url(url) == (
        "postgresql://turnout:***@db.internal:6543/gw?schema=a1&pool_size=3"
    )
    for bad in (
        f"postgresql://turnout:{PASSWORD}@db.internal/",
        f"postgres://turnout:{PASSWORD}@db.internal:x/gw",
        f"postgres://turnout:{PASSWORD}@db.internal/gw?{PASSWORD}=1",
        f"postgres://turnout:{PASSWORD}@db.internal/gw?sslmode={PASSWORD}",
    ):
        with pytest.raises(ValueError) as info:
            create_store(bad)
        assert PASSWORD not in str(info.value), bad


async def test_a_server_that_does_not_answer_is_named_without_the_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql://turnout:{PASSWORD}@127.0.0.1:1/gw"
    with pytest.raises(ConnectionError) as info:
        await open_store(url)
    message = str(info.value)
    assert "PostgreSQL at 127.0.0.1:1 (database 'gw', user 'turnout') did not answer" in message
    assert PASSWORD not in message
    # The start-up check (turnout serve) says the same at the store's line, password masked.
    from turnout.server.config import load_config
    from turnout.server.preflight import check_store

    config = tmp_path / "turnout.yaml"
    config.write_text(f"store: {url}\n")
    settings = load_config(str(config), {})

    def check() -> None:
        check_store(settings, mask_store_url(settings.store))

    with pytest.raises(ConfigError) as problems:
        await asyncio.to_thread(check)
    shown = str(problems.value.problems[0])
    assert "turnout.yaml:1:" in shown and "did not answer" in shown and PASSWORD not in shown


# -- keys -----------------------------------------------------------------------------------------


def _key(n: int, **settings: object) -> StoredKey:
    return StoredKey(
        id=f"key_{n:024x}", secret_hash=f"{n:064x}", prefix="sk-tnt-AbCd",
        created_at=1_700_000_000 + n % 3, **settings,  # type: ignore[arg-type]
    )  # fmt: skip


def _audit(action: str, target: str, after: object = None) -> AuditEntry:
    return AuditEntry("test", action, target, None, after, 1_700_000_000)  # type: ignore[arg-type]


async def test_keys_teams_and_the_audit_log(store: PostgresStore) -> None:
    keys = [_key(n, name=f"k{n}", team="search", models=["claude"]) for n in (5, 1, 3)]
    for key in keys:
        await store.create_key(key, _audit("key.create", key.id, public_key(key)))
    with pytest.raises(ValueError, match="exists already"):
        await store.create_key(dataclasses.replace(keys[0]), _audit("key.create", "x"))
    with pytest.raises(ValueError, match="exists already"):  # the same secret, another id
        await store.create_key(dataclasses.replace(keys[0], id="key_other"), _audit("k", "y"))
    assert await store.get_key(keys[0].id) == keys[0]
    assert await store.key_by_hash(keys[1].secret_hash) == keys[1]
    assert await store.key_by_hash("0" * 64) is None and await store.get_key("key_no") is None
    assert [k.id for k in await store.list_keys()] == [
        k.id for k in sorted(keys, key=lambda k: (k.created_at, k.id))
    ]
    # An update keeps the id and the hash, whatever the new settings say.
    changed = dataclasses.replace(keys[0], rpm=10, secret_hash="f" * 64, blocked=True)
    assert await store.update_key(changed, _audit("key.update", changed.id))
    got = await store.get_key(keys[0].id)
    assert got is not None and got.rpm == 10 and got.blocked
    assert got.secret_hash == keys[0].secret_hash
    assert not await store.update_key(_key(99), _audit("key.update", "key_99"))
    # Teams, in code point order (not the database's locale).
    for name in ("beta", "Alpha", "alpha"):
        await store.put_team(StoredTeam(name=name, created_at=1), _audit("team.create", name))
    await store.put_team(StoredTeam(name="beta", created_at=2), _audit("team.update", "beta"))
    assert [t.name for t in await store.list_teams()] == ["Alpha", "alpha", "beta"]
    team = await store.get_team("beta")
    assert team is not None and team.created_at == 2
    assert await store.delete_team("beta", _audit("team.delete", "beta"))
    assert not await store.delete_team("beta", _audit("team.delete", "beta"))
    assert await store.get_team("beta") is None
    # One entry per change that happened, newest first, none for the refused ones.
    log = await store.audit_log()
    assert [e.action for e in log] == [
        "team.delete", "team.update", "team.create", "team.create", "team.create",
        "key.update", "key.create", "key.create", "key.create",
    ]  # fmt: skip
    assert log[-1].after == public_key(keys[0]) and "secret_hash" not in (log[-1].after or {})
    older = await store.audit_log(limit=2, before=log[1].seq)
    assert [e.seq for e in older] == [log[2].seq, log[3].seq]
    assert await store.audit_log(limit=0) == []


async def test_a_change_and_its_audit_entry_are_one_transaction(store: PostgresStore) -> None:
    key = _key(7)
    bad_audit = _audit("key.create", key.id, {"x": 2**64})  # orjson refuses it: no audit row
    with pytest.raises(TypeError):
        await store.create_key(key, bad_audit)
    assert await store.get_key(key.id) is None and await store.audit_log() == []


# -- turnout migrate ------------------------------------------------------------------------------


def _migrate(config: Path) -> subprocess.CompletedProcess[str]:
    turnout = Path(sys.executable).parent / "turnout"
    command = [str(turnout)] if turnout.exists() else [sys.executable, "-m", "turnout.server.cli"]
    return subprocess.run(
        [*command, "migrate", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def test_turnout_migrate(url: str, tmp_path: Path) -> None:
    config = tmp_path / "turnout.yaml"
    with_password = url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
    config.write_text(f"store: {with_password}\n")  # trust auth: any password is accepted
    first = await asyncio.to_thread(_migrate, config)
    assert first.returncode == 0, first.stderr
    every = ", ".join(map(str, range(1, SCHEMA_VERSION + 1)))
    assert first.stdout.strip().endswith(f"schema version {SCHEMA_VERSION} (applied {every})")
    assert "postgres:***@" in first.stdout and PASSWORD not in first.stdout + first.stderr
    again = await asyncio.to_thread(_migrate, config)
    assert again.returncode == 0 and again.stdout.strip().endswith("(up to date)")
    assert await versions(url) == list(range(1, SCHEMA_VERSION + 1))
    # SQLite: opening the file migrates it.
    config.write_text("store: sqlite:///fresh.db\n")
    sqlite = await asyncio.to_thread(_migrate, config)
    assert sqlite.returncode == 0, sqlite.stderr
    sqlite_every = ", ".join(map(str, range(1, SQLITE_SCHEMA_VERSION + 1)))
    assert sqlite.stdout.strip().endswith(
        f"schema version {SQLITE_SCHEMA_VERSION} (applied {sqlite_every})"
    )
    assert (tmp_path / "fresh.db").is_file()
    # A server that does not answer: exit 1, one line naming it, no password.
    config.write_text(f"store: postgresql://postgres:{PASSWORD}@127.0.0.1:1/postgres\n")
    down = await asyncio.to_thread(_migrate, config)
    assert down.returncode == 1 and "did not answer" in down.stderr
    assert PASSWORD not in down.stderr + down.stdout
