"""Background responses (`background: true`): the work outlives the request that started it.

`create` answers at once with the response "queued" (already stored, so GET, input_items and
cancel work from that moment) and a task produces the reply. While the task runs, its events
live here: `GET /v1/responses/{id}` shows the live snapshot, `?stream=true` replays the events so
far and then follows new ones until the end, and the create call's own stream is just the first
follower, so a client that disconnects leaves the work running and can resume with
`starting_after`. Once the task ends, the store has the final record (written before the
terminal event is published, as for every response) and the entry is dropped.

The process that runs a background response owns it by a lease in the store (server/leases.py):
other workers and replicas read its progress from the store, ask it to cancel through the store,
and fail it once the lease runs out if this process stops without ending it. A process that
shuts down cleanly stops its own (recorded as failed, so a poller is not left waiting).

`BackgroundWork` is the gateway's side of it: `create` stores the response queued (builder
`queue()`) and launches `_run`, which publishes every event group to the `LiveResponse`; the final
record is written by the same `stored_groups` as any response. Cancel → `builder.cancel()`
(status `cancelled`, no event) and a final write; shutdown → `response.failed`. The upstream is
always streamed. Every write after the queued record is conditional (`replace_unfinished`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import anyio

from turnout.engine.builder import ResponseBuilder
from turnout.engine.canonical import CanonicalRequest
from turnout.engine.errors import RequestError, UpstreamError
from turnout.engine.ids import IdFactory
from turnout.server.access.teams import Teams
from turnout.server.config import Settings
from turnout.server.failover import Failover, Opened, key_drops
from turnout.server.finish import Finisher, record, tags
from turnout.server.leases import process_owner
from turnout.server.pricing import UsageCounts
from turnout.server.pump import GENERIC_FAILURE, store_failure, stored_groups
from turnout.server.replies import DONE, JsonReply, StreamReply, encode_sse
from turnout.server.request_context import Caller
from turnout.server.run import Run, bind, new_run, reply_headers
from turnout.server.store_health import StoreUnavailable
from turnout.server.stores.base import StoredResponse
from turnout.server.stores.keys import StoredTeam
from turnout.server.targets import Targets
from turnout.server.telemetry.hub import CURRENT
from turnout.server.upstream import UpstreamCall

__all__ = ["BackgroundResponses", "BackgroundWork", "LiveResponse"]

Event = dict[str, Any]

log = logging.getLogger("turnout.background")

# Retry-After of the max_background 429: a background response runs for seconds to minutes,
# so retrying sooner would mostly meet the cap again.
BACKGROUND_RETRY_AFTER_S = 5.0


class LiveResponse:
    """A background response in the making: the builder and every event published so far,
    and whose it is (the creator's key and team: server/access/isolation.py)."""

    __slots__ = (
        "_wake", "api_key_id", "builder", "done", "events", "lost", "persisted", "snapshot",
        "started", "task", "team",
    )  # fmt: skip

    def __init__(
        self, builder: ResponseBuilder, api_key_id: str | None = None, team: str | None = None
    ) -> None:
        self.builder = builder
        # Whose it is: who may see it, and whose `max_background` it counts against.
        self.api_key_id = api_key_id
        self.team = team
        self.events: list[Event] = []
        self.done = False
        # Set by the work's first step: a cancel before it would skip the final write.
        self.started = False
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        # Leases (server/leases.py): the record as it stands, for the progress writes; how
        # many events the last one held; set when another replica ended the record.
        self.snapshot: Callable[[], StoredResponse] | None = None
        self.persisted = 0
        self.lost = False

    @property
    def id(self) -> str:
        return self.builder.response_id

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

    def __init__(self, owner: str | None = None) -> None:
        self._live: dict[str, LiveResponse] = {}
        self.stopping = False
        # This process's lease owner id (server/leases.py): made here, once per gateway, so
        # each forked worker has its own.
        self.owner = owner or process_owner()

    def get(self, response_id: str) -> LiveResponse | None:
        return self._live.get(response_id)

    def ids(self) -> frozenset[str]:
        return frozenset(self._live)

    def owned(self) -> list[LiveResponse]:
        """The responses at work here (launched, not done): those whose leases are renewed."""
        return [live for live in self._live.values() if live.task is not None and not live.done]

    def running(self) -> int:
        return sum(1 for live in self._live.values() if not live.done)

    def running_for(self, *, key_id: str | None = None, team: str | None = None) -> int:
        """How many of a key's (or a team's) background responses are at work."""
        return sum(
            1
            for live in self._live.values()
            if not live.done
            and ((key_id is not None and live.api_key_id == key_id)
                 or (team is not None and live.team == team))
        )  # fmt: skip

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


class BackgroundWork:
    """Creating, running, following and recovering background responses."""

    def __init__(
        self,
        settings: Settings,
        responses: BackgroundResponses,
        targets: Targets,
        failover: Failover,
        finish: Finisher,
        ids: IdFactory,
        done_marker: bool,
        teams: Teams | None = None,
    ) -> None:
        self.settings = settings
        self.responses = responses
        self.targets = targets
        self.failover = failover
        self.finish = finish
        self.ids = ids
        self.done_marker = done_marker
        self.teams = teams  # a team's own max_background (server/access/teams.py)

    async def create(
        self,
        body: dict[str, Any],
        canon: CanonicalRequest,
        chain: list[StoredResponse],
        prev: str | None,
        caller: Caller,
        headers: dict[str, str] | None = None,
    ) -> JsonReply | StreamReply:
        """Store the response as queued, start the work, answer at once. For a direct
        provider/model the request is built first, so an unknown model, a missing key or a
        parameter the provider cannot honour is still this call's own 4xx. `headers`: the
        admission's (`x-ratelimit-*`), for a 429 from the caps."""
        team = None
        if self.teams is not None and caller.team is not None:
            team = await self.teams.get(caller.team)
        self._check_caps(caller, team, headers)
        reply_stream = canon.stream
        # The upstream always streams, so GET shows the output as it grows and followers get
        # every delta, whether the create call itself asked for a stream or not.
        canon = CanonicalRequest({**canon.view, "stream": True}, canon.input_items, canon.body)
        run, call = await self._queued(body, canon, prev, caller)
        # Checked again after the await: the caps hold however creates interleave.
        self._check_caps(caller, team, headers)
        live = LiveResponse(run.builder, caller.key_id, caller.team)
        live.publish(run.events)
        self.responses.reserve(live)  # counted against the caps before the next await
        run.owner = self.responses.owner
        run_tags = tags(body.get("metadata"))
        live.snapshot = lambda: replace(
            record(run, UsageCounts(), None, run_tags), events=list(run.events)
        )
        lease_until = time.time() + self.settings.background.lease_s
        try:
            await self.finish.health.put(
                self.finish.store,
                replace(live.snapshot(), owner=run.owner, lease_until=lease_until),
            )
            live.persisted = len(run.events)
        except BaseException:
            self.responses.release(live)
            raise
        self.responses.launch(live, self._run(live, run, chain, call))
        # For an alias no deployment has been tried yet: no x-turnout-* headers that would
        # name a guess (the stored record and GET name the one that answered).
        headers = reply_headers(run) if call is not None else {}
        if reply_stream:
            return StreamReply(self.follow_sse(live), headers, detached=True)
        return JsonReply(run.builder.response, headers, detached=True)

    def _check_caps(
        self, caller: Caller, team: StoredTeam | None, headers: dict[str, str] | None
    ) -> None:
        """429 when the gateway (`limits.max_background`), the caller's key or its team already
        has as many background responses at work as it may."""
        limit = self.settings.limits.max_background
        if self.responses.running() >= limit:
            raise _capped(
                f"Too many background responses at work ({limit}, limits.max_background): "
                "retry once some have finished.",
                headers,
            )
        key = caller.key
        if key is not None and key.max_background is not None:
            held = self.responses.running_for(key_id=key.id)
            if held >= key.max_background:
                raise _capped(
                    f"The key '{key.id}' already has {held} background response(s) at work, "
                    f"its max_background ({key.max_background}): retry once one has finished.",
                    headers,
                )
        if team is not None and team.max_background is not None:
            held = self.responses.running_for(team=team.name)
            if held >= team.max_background:
                raise _capped(
                    f"The team '{team.name}' already has {held} background response(s) at "
                    f"work, its max_background ({team.max_background}): retry once one has "
                    "finished.",
                    headers,
                )

    async def _queued(
        self, body: dict[str, Any], canon: CanonicalRequest, prev: str | None, caller: Caller
    ) -> tuple[Run, UpstreamCall | None]:
        """The run, announced queued; with the upstream request already built for a direct
        provider/model."""
        spec = self.settings.models.get(canon.model)
        call = None
        dropped: tuple[str, ...] = ()
        if spec is None or not spec.deployments:
            target = self.targets.resolve(canon.model)
            if key_drops(caller):
                call, dropped = await self.failover.call_dropping(canon, target)
            else:
                call = await self.failover.call(canon, target)
        else:
            # The router picks (and fails over) when the work starts; a deployment without a key
            # must not fail the create call when another one would answer.
            target = self.targets.placeholder(canon.model)
        run = new_run(
            body, canon, prev, target, caller,
            ids=self.ids, max_image_bytes=self.settings.limits.max_image_bytes,
        )  # fmt: skip
        run.dropped_tools = dropped
        run.events.extend(run.builder.queue())
        return run, call

    async def _run(
        self,
        live: LiveResponse,
        run: Run,
        chain: list[StoredResponse],
        call: UpstreamCall | None,
    ) -> None:
        live.started = True
        ctx = CURRENT.get()
        try:
            opening = run.builder.start()  # response.in_progress: the work has begun
            run.events.extend(opening)
            live.publish(opening)
            opened = await self._open(live, run, chain, call)
            if opened is None:
                return
            bind(run, opened, self.failover.router)
            async with aclosing(stored_groups(run, self.finish)) as groups:
                async for group in groups:
                    live.publish(group)
        except asyncio.CancelledError:
            # The cancel call, or the gateway shutting down (then it is a failure: the work was
            # not finished, and a poller must not wait on it forever).
            with anyio.CancelScope(shield=True):
                if live.lost:
                    # Deleted, or failed by another replica after the lease ran out: the store
                    # keeps that (the conditional write below is refused); followers here learn.
                    message = "This background response was ended elsewhere (lease lost)."
                    await self._end(live, run, run.builder.fail("server_error", message))
                elif self.responses.stopping:
                    message = "The gateway shut down before this background response finished."
                    await self._end(live, run, run.builder.fail("server_error", message))
                else:
                    run.builder.cancel()
                    await self._end(live, run, [])
        except StoreUnavailable as exc:
            # The final write failed (logged by StoreHealth): followers and pollers of this
            # process learn it from a response.failed that says so; nothing was stored.
            failed = store_failure(run, exc)
            run.events.append(failed)
            live.publish([failed])
            raise  # kept live by `launch` (the store still says "queued"): GET reads it here
        except Exception:
            log.exception("background response %s failed", run.builder.response_id)
            with anyio.CancelScope(shield=True):
                await self._end(live, run, run.builder.fail("server_error", GENERIC_FAILURE))
        finally:
            telemetry = self.finish.telemetry
            if telemetry is not None and ctx is not None:
                telemetry.finish(ctx)

    async def _open(
        self,
        live: LiveResponse,
        run: Run,
        chain: list[StoredResponse],
        call: UpstreamCall | None,
    ) -> Opened | None:
        """The upstream reply; None when no attempt answered (the run is then ended failed).
        The work outlives the request: its attempts' deadline runs from the work's start."""
        try:
            if call is not None:
                started = time.monotonic()
                return await self.failover.direct(run.target, call, started, run.dropped_tools)
            drop = key_drops(run.caller)
            return await self.failover.attempt(run.canon, chain, run.attempts, drop=drop)
        except (RequestError, UpstreamError) as exc:
            code = exc.code or ("invalid_request" if isinstance(exc, RequestError) else None)
            await self._end(live, run, run.builder.fail(code or "server_error", exc.message))
            return None

    async def _end(self, live: LiveResponse, run: Run, events: list[Event]) -> None:
        """Store the final record, then let the followers see the events they have not seen
        (a cancel can land between the store write and the terminal event's publication)."""
        run.events.extend(events)
        await self.finish(run)
        live.publish(run.events[len(live.events) :])

    async def follow_sse(
        self, live: LiveResponse, starting_after: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """A running background response as SSE: its events so far, then the new ones."""
        async for group in live.follow(starting_after):
            yield b"".join([encode_sse(event) for event in group])
        if self.done_marker:
            yield DONE


def _capped(message: str, headers: dict[str, str] | None) -> RequestError:
    return RequestError(
        429, message, param="background", code="rate_limit_exceeded", type="requests",
        retry_after=BACKGROUND_RETRY_AFTER_S, headers=dict(headers) if headers else None,
    )  # fmt: skip
