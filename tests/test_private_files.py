"""Files that hold prompts, outputs or private records are created owner-only (0600), whatever
the umask; an existing one is tightened when captured text goes into it."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from turnout.server.private_files import open_private
from turnout.server.stores.sqlite import SQLiteStore
from turnout.server.telemetry import SinkContext
from turnout.server.telemetry.sinks import JsonlSink


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    # The usual 022 would make a plain open() 0644: the files must not depend on it.
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def write_one(path: Path, capture: bool) -> None:
    config: dict[str, Any] = {"type": "jsonl", "path": str(path)}
    if capture:
        config["capture"] = {"prompts": True, "outputs": True}
    sink = JsonlSink(config, SinkContext())
    await sink.start()
    sink.emit({"type": "turnout.request", "input": "a private prompt"})
    await sink.drain()
    await sink.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("capture", [False, True])
async def test_a_new_jsonl_log_is_owner_only(tmp_path: Path, capture: bool) -> None:
    path = tmp_path / "logs" / "requests.jsonl"
    await write_one(path, capture)
    assert mode(path) == 0o600
    assert ("a private prompt" in path.read_text()) is capture


@pytest.mark.anyio
async def test_an_existing_jsonl_log_gets_private_when_prompts_go_into_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text("")
    path.chmod(0o644)
    await write_one(path, capture=False)
    assert mode(path) == 0o644  # no prompts: the operator's mode stands
    with caplog.at_level(logging.WARNING, "turnout"):
        await write_one(path, capture=True)
    assert mode(path) == 0o600
    assert str(path) in caplog.text and "made private" in caplog.text
    assert len(path.read_text().splitlines()) == 2  # appended, never truncated


def test_a_file_that_cannot_be_tightened_is_named_and_still_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "shared.jsonl"
    path.write_text("")
    path.chmod(0o644)

    def refuse(fd: int, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refuse)
    with caplog.at_level(logging.WARNING, "turnout"):
        fd = open_private(path, os.O_WRONLY | os.O_APPEND, holds_captures=True)
    os.close(fd)
    assert mode(path) == 0o644
    assert str(path) in caplog.text and "could not be made private" in caplog.text


@pytest.mark.anyio
async def test_the_sqlite_store_and_its_journal_are_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    store = SQLiteStore(db)
    await store.open()
    try:
        wal = tmp_path / "new.db-wal"
        assert wal.exists() and mode(wal) == 0o600  # SQLite copies the database's mode
        assert mode(db) == 0o600
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_an_existing_store_file_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    first = SQLiteStore(db)
    await first.open()
    await first.aclose()
    db.chmod(0o644)
    stale = tmp_path / "old.db-wal"  # as a crash would leave it, readable by all
    stale.write_bytes(b"")
    stale.chmod(0o644)
    store = SQLiteStore(db)
    await store.open()
    try:
        assert mode(db) == 0o600 and mode(stale) == 0o600
    finally:
        await store.aclose()
