"""One create call from start to the store write: the `Run` every step hands on, how it is
started, bound to the upstream reply that answered, and the headers its reply carries."""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from turnout.engine.builder import ResponseBuilder, make_echo
from turnout.engine.canonical import CanonicalRequest, conversation_of
from turnout.engine.ids import IdFactory
from turnout.server.failover import Opened, release
from turnout.server.request_context import Caller
from turnout.server.router import Router
from turnout.server.source import Source
from turnout.server.targets import Target
from turnout.server.telemetry.hub import CURRENT
from turnout.server.trail import trail_headers

__all__ = ["Run", "bind", "new_run", "reply_headers"]


@dataclass(slots=True)
class Run:
    """Everything one create call carries from start to the store write."""

    canon: CanonicalRequest
    target: Target
    builder: ResponseBuilder
    source: Source | None  # None until the upstream answered (a queued background response)
    request: dict[str, Any]
    previous_response_id: str | None
    store: bool
    upstream_status: int
    caller: Caller
    # The conversation the turn belongs to (`conversation` of the body); its items are appended
    # once the response is final (server/conversations.py).
    conversation: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    # One entry per upstream attempt: deployment, status, error code, latency (no secrets).
    attempts: list[dict[str, Any]] = field(default_factory=list)
    dropped_tools: tuple[str, ...] = ()  # left out for the provider (unsupported_tools: drop)
    # time.monotonic() when the run began: the stored record's duration_ms.
    started: float = field(default_factory=time.monotonic)
    # A background run's lease owner (server/leases.py): its final write is then conditional,
    # so a record another replica already ended is not overwritten.
    owner: str | None = None


def new_run(
    body: dict[str, Any],
    canon: CanonicalRequest,
    prev: str | None,
    target: Target,
    caller: Caller,
    *,
    ids: IdFactory,
    max_image_bytes: int | None,
    started: float | None = None,
) -> Run:
    """`started`: `time.monotonic()` when the create call began (before its upstream
    attempts), for the record's duration; default now."""
    builder = ResponseBuilder(
        ids.response(),
        int(time.time()),
        make_echo(body),
        target.mapping.finish_reasons,
        canon.model,
        ids=ids,
        provider=target.provider,
        max_image_bytes=max_image_bytes,
        namespaces=canon.view.get("tool_namespaces"),
        include=canon.view.get("include") or (),
    )
    return Run(
        canon=canon,
        target=target,
        builder=builder,
        source=None,
        # The body minus input (kept as input_items); it holds no credentials.
        request={k: v for k, v in body.items() if k != "input"},
        previous_response_id=prev,
        store=bool(canon.view.get("store", True)),
        upstream_status=0,
        caller=caller,
        conversation=conversation_of(body),
        started=time.monotonic() if started is None else started,
    )


def bind(run: Run, opened: Opened, router: Router) -> None:
    """Attach the upstream reply that answered (and what it took to get it) to the run."""
    run.target = opened.target
    run.source = opened.source
    run.upstream_status = opened.status
    run.attempts = opened.attempts
    run.dropped_tools = opened.dropped
    run.builder.route(opened.target.mapping.finish_reasons, opened.target.provider)
    ctx = CURRENT.get()
    if ctx is not None:
        # Known now: a reply the client abandons mid-stream still names its response.
        ctx.response_id = run.builder.response_id
        ctx.provider = opened.target.provider
        ctx.upstream_model = opened.target.model
        ctx.deployment = opened.target.deployment
        ctx.attempts = list(opened.attempts)
    if opened.state is not None:
        # Released when the upstream reply is (or, if the client never read it, at GC).
        opened.source.on_close = weakref.finalize(
            opened.source, release, router, opened.state, run.builder
        )


def reply_headers(run: Run) -> dict[str, str]:
    headers = trail_headers(run.target.deployment or run.canon.model, len(run.attempts))
    if run.dropped_tools:
        headers["x-turnout-dropped-tools"] = ",".join(run.dropped_tools)
    return headers
