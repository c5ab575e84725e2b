"""Retention (config ``retention: {days: N}``): stored responses older than N days are forgotten.

A background task of the app (started in its lifespan, stopped first at shutdown) asks the store
to `purge` the live, finished responses created more than N days ago, in batches of `BATCH`,
pausing `PAUSE_S` between batches, until a batch comes back short; then it sleeps `INTERVAL_S`.
Each batch is one short write (SQLite: on the writer thread between puts; PostgreSQL: one
``UPDATE … FOR UPDATE SKIP LOCKED``, so replicas purging at once share the work), so requests
never wait behind a whole purge.

A purged response becomes a tombstone, as ``DELETE /v1/responses/{id}`` leaves: its response,
input items, events and request are erased, the accounting columns stay, so spend totals do not
change. SQLite hands the freed pages back to the file system (``PRAGMA incremental_vacuum``, in
a file created with ``auto_vacuum=INCREMENTAL``); PostgreSQL reuses them after autovacuum.
A failed run is logged and tried again at the next interval; it never stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from turnout.server.stores.base import ResponseStore

__all__ = ["BATCH", "INTERVAL_S", "PAUSE_S", "Retention"]

log = logging.getLogger("turnout.retention")

BATCH = 500  # records per write: a few milliseconds, whatever their size
PAUSE_S = 0.05  # between batches: puts and reads interleave freely
INTERVAL_S = 600.0  # between runs; a record outlives its N days by at most this


class Retention:
    """Purges ``store`` of responses older than ``days``; `start` on the server's loop."""

    def __init__(
        self,
        store: ResponseStore,
        days: float,
        *,
        batch: int = BATCH,
        pause_s: float = PAUSE_S,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if days <= 0 or batch < 1:
            raise ValueError(f"retention needs days > 0 and batch >= 1, not {days}, {batch}")
        self.store, self.days, self.batch = store, days, batch
        self.pause_s, self.interval_s, self.clock = pause_s, interval_s, clock
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """One purge of everything older than the cutoff; how many responses it forgot."""
        cutoff = int(self.clock() - self.days * 86400)
        total = 0
        while True:
            count = await self.store.purge(cutoff, limit=self.batch)
            total += count
            if count < self.batch:
                break
            await asyncio.sleep(self.pause_s)
        if total:
            log.info(
                "retention: %d stored responses older than %g days forgotten", total, self.days
            )
        return total

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # the store's words, one line; next interval tries again
                reason = str(exc).splitlines()[0] if str(exc) else ""
                log.warning("retention: purge failed (%s: %s)", type(exc).__name__, reason)
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
