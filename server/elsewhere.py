"""Background responses running in another process (another worker or replica), through the
store: its owner writes the progress with each lease renewal and reads cancel marks there
(server/leases.py).

`cancel` marks the record and waits, bounded by a lease and a tick, for the owner's final
record; `follow` replays the stored events and polls for new ones until the terminal one (or a
terminal record: a cancel adds no event).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from turnout.server.history import UNFINISHED
from turnout.server.pump import TERMINAL_EVENTS
from turnout.server.replies import DONE, encode_sse
from turnout.server.stores.base import ResponseStore, StoredResponse

__all__ = ["cancel", "follow"]

# How often a follower or a canceller reads the record again: the owner writes at most once a
# second, so reading faster would mostly find nothing new.
POLL_S = 0.25


async def cancel(store: ResponseStore, record: StoredResponse, wait_s: float) -> StoredResponse:
    """Ask the owner to cancel the record, then wait up to `wait_s` for the final record; the
    record as it then stands (still unfinished if the owner did not answer in time)."""
    if not await store.request_cancel(record.id):
        return await store.get(record.id) or record  # it ended meanwhile
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        current = await store.get(record.id)
        if current is None:
            return record
        record = current
        if record.status not in UNFINISHED:
            break
    return record


async def follow(
    store: ResponseStore,
    record: StoredResponse,
    starting_after: int | None,
    done_marker: bool,
) -> AsyncGenerator[bytes, None]:
    """The record's events after `starting_after` as SSE, then each new one as the owner
    writes it, until the response ends (or the record is deleted)."""
    last = -1 if starting_after is None else starting_after
    while True:
        fresh = [e for e in record.events or [] if int(e["sequence_number"]) > last]
        if fresh:
            last = int(fresh[-1]["sequence_number"])
            yield b"".join([encode_sse(event) for event in fresh])
        if record.status not in UNFINISHED or any(e["type"] in TERMINAL_EVENTS for e in fresh):
            break
        await asyncio.sleep(POLL_S)
        current = await store.get(record.id)
        if current is None:
            break
        record = current
    if done_marker:
        yield DONE
