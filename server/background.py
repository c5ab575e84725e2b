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
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from engine.builder import ResponseBuilder

__all__ = ["BackgroundResponses", "LiveResponse"]

Event = dict[str, Any]


class LiveResponse:
    """A background response in the making: the builder and every event published so far."""

    __slots__ = ("_wake", "builder", "done", "events", "task")

    def __init__(self, builder: ResponseBuilder) -> None:
        self.builder = builder
        self.events: list[Event] = []
        self.done = False
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

    def launch(self, live: LiveResponse, work: Coroutine[Any, Any, None]) -> None:
        response_id = live.builder.response_id
        self._live[response_id] = live
        task = asyncio.get_running_loop().create_task(work, name=f"background {response_id}")
        live.task = task

        def forget(_: asyncio.Task[None]) -> None:
            live.close()
            if self._live.get(response_id) is live:
                del self._live[response_id]

        task.add_done_callback(forget)

    async def cancel(self, response_id: str) -> LiveResponse | None:
        """Stop a running response and wait until its final record is written."""
        live = self._live.get(response_id)
        if live is None or live.task is None:
            return None
        live.task.cancel()
        await asyncio.wait([live.task])
        return live

    async def aclose(self) -> None:
        """Shutdown: every running response is stopped and recorded as failed."""
        self.stopping = True
        tasks = [live.task for live in self._live.values() if live.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
