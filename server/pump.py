"""The event pump: upstream op batches through the run's `ResponseBuilder` into event groups,
the store write awaited just before the terminal event, and the groups encoded as SSE.

Streamed and non-streamed replies run this very same loop, so they cannot disagree. One group per
upstream batch: a stream costs one send per batch and never holds an event back for a later one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import anyio

from turnout.engine.builder import response_error
from turnout.engine.errors import UpstreamError
from turnout.server.replies import DONE, encode_sse
from turnout.server.run import Run
from turnout.server.store_health import StoreUnavailable

__all__ = [
    "GENERIC_FAILURE",
    "TERMINAL_EVENTS",
    "event_groups",
    "sse",
    "store_failure",
    "stored_groups",
]

log = logging.getLogger("turnout.gateway")

TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})
GENERIC_FAILURE = "The server had an error while processing your request."

Group = list[dict[str, Any]]
Finish = Callable[[Run], Awaitable[None]]


async def event_groups(run: Run) -> AsyncGenerator[Group, None]:
    """The builder's events for the whole reply, one list per upstream batch (the start events
    first, before the upstream body is read); failures after the start become `response.failed`
    carrying the upstream code and message (anchor-failures 6)."""
    b = run.builder
    source = run.source
    assert source is not None, "the upstream is opened before the events are read"
    failure: tuple[str, str] | None = None
    last: Group = []
    try:
        opening = b.start()
        if opening:  # empty when a background response already announced its start
            yield opening
        async with aclosing(source.batches()) as batches:
            async for ops in batches:
                events = b.feed(ops)
                if b.terminal:
                    # Held until the upstream is released below: once the terminal event is
                    # out, the client may act on it (the deployment must be free).
                    last = events
                    break
                if events:
                    yield events
    except UpstreamError as exc:
        # Raised mid-reply only by Turnout itself (a cut, a stall, a bad frame: the provider's
        # own errors arrive as `error` ops), so its code is ours, not the provider's: the
        # message says what happened and, like the provider's errors, who it happened with.
        failure = ("server_error", _named(exc.message, run.target.provider))
    except Exception:
        # A mapping or builder bug mid-reply: the client sees a generic failure, the log gets
        # the traceback.
        log.exception("failed while translating the reply from %s", run.target.provider)
        failure = ("server_error", GENERIC_FAILURE)
    finally:
        # Shielded: on a client disconnect the task is cancelled, and an unshielded await here
        # would be cancelled too, leaking the upstream connection until GC.
        with anyio.CancelScope(shield=True):
            await source.aclose()
    tail = b.fail(*failure) if failure is not None else ([] if b.terminal else b.finish())
    if last or tail:
        yield last + tail


def _named(message: str, provider: str) -> str:
    """Upstream failures name the provider first (Turnout's own messages mostly do already)."""
    if message.startswith((f"{provider}:", f"{provider} ")):
        return message
    return f"{provider}: {message}"


async def stored_groups(run: Run, finish: Finish) -> AsyncGenerator[Group, None]:
    """`event_groups`, with `finish` (the store write) awaited just before the terminal event
    leaves (the events before it in its group go out first, without waiting for the write)."""
    # aclosing: `async for` does not close an inner generator when the outer one is closed
    # (client disconnect), and the upstream must be released now, not at GC time.
    async with aclosing(event_groups(run)) as groups:
        async for group in groups:
            run.events.extend(group)
            cut = next((i for i, e in enumerate(group) if e.get("type") in TERMINAL_EVENTS), None)
            if cut is None:
                yield group
                continue
            if cut:
                yield group[:cut]
            await finish(run)
            yield group[cut:]


def store_failure(run: Run, exc: StoreUnavailable) -> dict[str, Any]:
    """The terminal event that could not be stored, as `response.failed` saying so (same
    sequence number: the client never saw the original). The run's Response becomes that
    failed one too, so a poller of a live background response reads the same."""
    terminal = next(e for e in reversed(run.events) if e.get("type") in TERMINAL_EVENTS)
    response = run.builder.response
    response.update(
        status="failed",
        completed_at=None,
        incomplete_details=None,
        error=response_error(exc.code, exc.message),
    )
    return {**terminal, "type": "response.failed", "response": response}


async def sse(run: Run, finish: Finish, done_marker: bool) -> AsyncGenerator[bytes, None]:
    """`stored_groups` as SSE, one chunk per group; the terminal event and `data: [DONE]`
    leave in the same chunk. A store that fails the final write ends the stream with
    `response.failed` (`store_unavailable`), never a cut."""
    ended = False
    try:
        async with aclosing(stored_groups(run, finish)) as groups:
            async for group in groups:
                data = b"".join([encode_sse(event) for event in group])
                if done_marker and group[-1].get("type") in TERMINAL_EVENTS:
                    data += DONE  # nothing follows a terminal event: one send for both
                    ended = True
                yield data
    except StoreUnavailable as exc:
        data = encode_sse(store_failure(run, exc))
        yield data + DONE if done_marker else data
        return
    if done_marker and not ended:
        yield DONE
