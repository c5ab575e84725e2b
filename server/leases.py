"""Leases of background responses: which process runs one, and until when that holds.

Several workers on one SQLite file, or replicas on one PostgreSQL database, share the stored
background responses. Each process has an `owner` id (`hostname:pid:random`, made when its
gateway is built, so after a fork) written with every background record it starts, with a lease
(`lease_until`, unix seconds, `background.lease_s` ahead, default 30 s). While the process lives,
`Leases` ticks about once a second (at most `lease_s / 3` apart) and, in one store call, extends
the leases of its running responses and learns which of them another replica asked to cancel
(`request_cancel`) or ended (deleted, or failed after the lease ran out): those stop here. The
same tick writes each running response's progress (its events so far, at most once a second,
only when there are new ones), so `GET` and `GET ?stream=true` on another replica see it.

Every few seconds, and at start-up, each process fails the unfinished records whose lease ran
out (`fail_expired`): their process stopped (crashed, killed with `kill -9`, its machine gone)
without ending them. Records of a live process are never touched: its lease is renewed well
before it runs out. Every write of a record after its first is conditional in the store
(`replace_unfinished`: still unfinished, and for a failure still expired), so a renewal and a
failure cannot both win and a terminal status is never changed; the first terminal write wins
(`finish.Finisher._final_write`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from turnout.server.history import UNFINISHED
from turnout.server.stores.base import ResponseStore

if TYPE_CHECKING:
    from turnout.server.background import BackgroundResponses

__all__ = ["LEASE_EXPIRED", "Leases", "fail_expired", "process_owner"]

log = logging.getLogger("turnout.background")

LEASE_EXPIRED = "The replica running this background response stopped (its lease expired)."
# A record from before leases (no owner): the process that wrote it is gone.
STOPPED_BEFORE = "The gateway stopped before this background response finished."
# At most this long between two checks for cancels and between two progress writes.
TICK_S = 1.0
# At most this long between two sweeps for expired leases.
SWEEP_S = 5.0


def process_owner() -> str:
    """This process's owner id; random too, since a pid is reused after a restart."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def fail_expired(
    store: ResponseStore, running: set[str] | frozenset[str] = frozenset(), now: float | None = None
) -> int:
    """Fail the unfinished records whose lease ran out before `now` (none of `running`, this
    process's own); how many this call failed (another replica may get some first)."""
    now = time.time() if now is None else now
    count = 0
    for response_id in await store.expired_unfinished(now):
        if response_id in running:
            continue
        stored = await store.get(response_id)
        if stored is None or stored.status not in UNFINISHED:
            continue
        message = LEASE_EXPIRED if stored.owner is not None else STOPPED_BEFORE
        response = {
            **stored.response,
            "status": "failed",
            "error": {"code": "server_error", "message": message},
        }
        events = list(stored.events or [])
        seq = int(events[-1]["sequence_number"]) + 1 if events else 0
        events.append({"type": "response.failed", "sequence_number": seq, "response": response})
        failed = replace(stored, status="failed", response=response, events=events)
        # Only if still unfinished and still expired: the owner's renewal wins a race.
        if await store.replace_unfinished(failed, expired_before=now):
            count += 1
    if count:
        log.warning(
            "%d background response(s) whose replica stopped (lease expired): failed", count
        )
    return count


class Leases:
    """The renewal ticks and expiry sweeps of one process (see the module docstring)."""

    def __init__(self, store: ResponseStore, responses: BackgroundResponses, lease_s: float):
        self.store = store
        self.responses = responses
        self.lease_s = lease_s
        self.tick_s = min(TICK_S, lease_s / 3)
        self.sweep_s = min(SWEEP_S, lease_s / 3)
        self._task: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[object]] = set()

    @property
    def owner(self) -> str:
        return self.responses.owner

    def until(self) -> float:
        return time.time() + self.lease_s

    async def recover(self) -> int:
        return await fail_expired(self.store, self.responses.ids())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="leases")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        next_sweep = time.monotonic() + self.sweep_s
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.tick()
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_s
                    await fail_expired(self.store, self.responses.ids())
            except Exception as exc:  # the store is down: try again at the next tick
                log.warning("background leases: %r", exc)

    async def tick(self) -> None:
        """Renew the leases of what runs here; stop what was cancelled or ended elsewhere;
        write the progress of the rest."""
        running = self.responses.owned()
        if not running:
            return
        until = self.until()
        renewal = await self.store.renew_leases(self.owner, [r.id for r in running], until)
        for live in running:
            if live.builder.terminal or live.done:
                continue  # its final write is under way
            if live.id in renewal.cancel or live.id not in renewal.held:
                live.lost = live.id not in renewal.held
                self._stop(live.id)
                continue
            snapshot = live.snapshot
            if snapshot is not None and len(live.events) > live.persisted:
                live.persisted = len(live.events)
                await self.store.replace_unfinished(
                    replace(snapshot(), owner=self.owner, lease_until=until)
                )

    def _stop(self, response_id: str) -> None:
        # Not awaited here: a cancel waits for the final write, the tick goes on.
        task = asyncio.get_running_loop().create_task(self.responses.cancel(response_id))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)
