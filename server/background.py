"""Background responses (`background: true`): the work outlives the request that started it.

`create` answers at once with the response "queued" (already stored, so GET, input_items and
cancel work from that moment) and a task produces the reply. While the task runs, its events
live here: `GET /v1/responses/{id}` shows the live snapshot, `?stream=true` replays the events so
far and then follows new ones until the end, and the create call's own stream is just the first
follower, so a client that disconnects leaves the work running and can resume with
`starting_after`. Once the task ends, the store has the final record (written before the
terminal event is published, as for every response) and the entry is dropped.

One process owns its background responses: they are not shared between workers, and a process
that stops cancels them (recorded as failed, so a poller is not left waiting on "queued").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from turnout.engine.builder import ResponseBuilder

__all__ = ["BackgroundResponses", "LiveResponse"]

Event = dict[str, Any]

log = logging.getLogger("turnout.background")


class LiveResponse:
    """A background response in the making: the builder and every event published so far."""

    __slots__ = ("_wake", "builder", "done", "events", "started", "task")

    def __init__(self, builder: ResponseBuilder) -> None:
        self.builder = builder
        self.events: list[Event] = []
        self.done = False
        # Set by the work's first step: a cancel before it would skip the final write.
        self.started = False
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def response(self) -> dict[str, Any]:
        return self.builder.response

    def publish(self, events: list[Event]) -> None:
        if events:
            self.events.extend(events)
            self._notify()

    def close(self) -> None:
        self.done = True
        self._notify()

    def _notify(self) -> None:
        # Each waiter holds the Event it saw; a fresh one for the next round.
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    async def follow(self, starting_after: int | None = None) -> AsyncIterator[list[Event]]:
        """The events from the first one (or those after `starting_after`), then each new
        batch as it is published, until the response is done."""
        seen = 0
        while True:
            wake = self._wake
            if seen < len(self.events):
                batch = self.events[seen:]
                seen += len(batch)
                if starting_after is not None:
                    batch = [e for e in batch if e["sequence_number"] > starting_after]
                if batch:
                    yield batch
                continue
            if self.done:
                return
            await wake.wait()


class BackgroundResponses:
    """The process's running background responses, by response id."""

    def __init__(self) -> None:
        self._live: dict[str, LiveResponse] = {}
        self.stopping = False

    def get(self, response_id: str) -> LiveResponse | None:
        return self._live.get(response_id)

    def running(self) -> int:
        return sum(1 for live in self._live.values() if not live.done)

    def reserve(self, live: LiveResponse) -> None:
        """Count the response as running from now (before its first await), so concurrent
        creates cannot all pass the `max_background` check."""
        self._live[live.builder.response_id] = live

    def release(self, live: LiveResponse) -> None:
        """Undo `reserve` when the response could not be started."""
        if self._live.get(live.builder.response_id) is live:
            del self._live[live.builder.response_id]

    def launch(self, live: LiveResponse, work: Coroutine[Any, Any, None]) -> None:
        response_id = live.builder.response_id
        self._live[response_id] = live
        task = asyncio.get_running_loop().create_task(work, name=f"background {response_id}")
        live.task = task

        def forget(task: asyncio.Task[None]) -> None:
            live.close()
            if not task.cancelled() and task.exception() is not None:
                # The final write failed (the store is down): keep serving the final state from
                # here, since the store still says "queued".
                log.error("background response %s: %r", response_id, task.exception())
                return
            if self._live.get(response_id) is live:
                del self._live[response_id]

        task.add_done_callback(forget)

    async def cancel(self, response_id: str) -> LiveResponse | None:
        """Stop a running response and wait until its final record is written."""
        live = self._live.get(response_id)
        if live is None or live.task is None:
            return None
        await _stop(live)
        return live

    async def aclose(self) -> None:
        """Shutdown: every running response is stopped and recorded as failed."""
        self.stopping = True
        running = [live for live in self._live.values() if live.task is not None]
        if running:
            await asyncio.gather(*(_stop(live) for live in running))


async def _stop(live: LiveResponse) -> None:
    """Cancel the work once (a second cancel would cut its own final write short) and wait
    for it; a task that has not taken its first step gets to, so its handler runs."""
    task = live.task
    assert task is not None
    while not live.started and not task.done():
        await asyncio.sleep(0)
    if not task.done() and not task.cancelling():
        task.cancel()
    await asyncio.wait([task])
