"""The PostgreSQL server the tests use, and their clean-up.

`TURNOUT_TEST_POSTGRES_URL` (tests only; default: this machine kind's local server) names a
database the tests may create schemas in. Each scratch store is a schema of its own,
``turnout_test_<pid>_<n>`` (`PostgresStore.scratch_url`), dropped after its test
(`ResponseStore.drop_scratch`); what a test left anyway is dropped at the end of the session,
and a session also drops what runs that no longer live left behind (a killed run).

A server that does not answer fails the tests that need it, naming it (never skipped).
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from turnout.server.stores import PostgresStore, create_store

__all__ = ["SERVER", "connect", "run_sync", "schema_url", "sweep", "use_test_server"]

T = TypeVar("T")

SERVER = os.environ.get(
    "TURNOUT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_SCRATCH = re.compile(r"turnout_test_(\d+)_\w+")


def use_test_server() -> None:
    """Point the contract suite's scratch stores at the test server."""
    PostgresStore.scratch_server = SERVER


def schema_url(tag: str) -> str:
    """The URL of a store in a schema of its own for this process (``tag`` tells them apart);
    swept like the scratch stores."""
    return f"{SERVER}{'&' if '?' in SERVER else '?'}schema=turnout_test_{os.getpid()}_{tag}"


async def connect() -> Any:
    """A plain asyncpg connection to the test server (PostgresStore's own connect: its clear
    error when the server does not answer)."""
    store = create_store(SERVER)
    assert isinstance(store, PostgresStore)
    return await store._connect_once()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _sweep(mine: bool) -> list[str]:
    conn = await connect()
    try:
        names = [
            row[0]
            for row in await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'turnout\\_test\\_%'"
            )
        ]
        dropped = []
        for name in names:
            match = _SCRATCH.fullmatch(name)
            if match is None:
                continue
            pid = int(match.group(1))
            if (mine and pid == os.getpid()) or not _alive(pid):
                await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")  # matched name
                dropped.append(name)
        return dropped
    finally:
        await conn.close()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on a loop of its own, in a thread (callable from a sync hook or
    fixture, whatever loop the calling thread has)."""
    result: list[T] = []
    error: list[BaseException] = []

    def main() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def sweep(*, mine: bool) -> list[str]:
    """Drop the scratch schemas of runs that are gone (and this run's own with ``mine``). A
    server that does not answer is left to fail the tests that use it."""
    try:
        return run_sync(_sweep(mine))
    except ConnectionError:
        return []
