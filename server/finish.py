"""The finish step of a response: price it, hand the telemetry its facts, write the record.

Runs once per response, awaited just before its terminal event (or JSON reply) leaves, so the
stored Response, the terminal event and the JSON body agree on `usage.cost`, and a follow-up
chained on the response finds it at once (anchor-failures 1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from turnout.server.pricing import Price, PriceBook, UsageCounts, usage_counts
from turnout.server.request_context import Caller
from turnout.server.router import Router
from turnout.server.run import Run
from turnout.server.store_health import StoreHealth, StoreUnavailable
from turnout.server.stores.base import ResponseStore, StoredResponse
from turnout.server.telemetry.clip import clip
from turnout.server.telemetry.hub import CURRENT, RequestContext, Telemetry

__all__ = ["Finisher", "record", "tags"]

log = logging.getLogger("turnout.gateway")


class Finisher:
    """Cost, record and notify for every response of one gateway."""

    def __init__(
        self, store: ResponseStore, router: Router, prices: PriceBook, health: StoreHealth
    ) -> None:
        self.store = store
        self.router = router
        self.prices = prices
        self.health = health
        # The telemetry hub is wired in by the app (server/app.py) and stays None for a bare
        # Gateway (unit tests).
        self.telemetry: Telemetry | None = None
        # Appends a turn to its conversation (server/conversations.py), after the record.
        self.turns: Callable[[Run], Awaitable[None]] | None = None
        # What the response cost, for the caller's budgets and token limits
        # (server/access/admission.py); before the record, whether or not one is kept.
        self.settle: Callable[[Caller, float | None, UsageCounts], None] | None = None

    async def __call__(self, run: Run) -> None:
        """Price the response, hand the telemetry its facts, then write the record. With
        `store: false` nothing is written (the client's choice: spend queries do not see that
        response); its cost still reaches the logs and metrics. A turn of a conversation is
        appended to it after the record."""
        response = run.builder.response
        created_at = int(response.get("created_at") or time.time())
        counts = usage_counts(response.get("usage"))
        if run.builder.web_searches:
            counts = replace(counts, web_searches=run.builder.web_searches)
        price = self._cost(run, counts, created_at)
        usage = response.get("usage")
        if isinstance(usage, dict):
            # In the body as `usage.cost` (US dollars, null when unknown): an extra key that the
            # SDK's strict validation and OpenAI's schema accept. Set before the terminal event
            # leaves, so the stored Response, the terminal event and the JSON reply agree.
            usage["cost"] = None if price is None else price.cost
        if self.settle is not None:
            self.settle(run.caller, None if price is None else price.cost, counts)
        run_tags = tags(run.request.get("metadata"))
        ctx = CURRENT.get()
        self._notify(ctx, run, counts, price, run_tags)
        try:
            if run.owner is not None:
                await self._final_write(run, record(run, counts, price, run_tags))
            elif run.store:
                await self.health.put(self.store, record(run, counts, price, run_tags))
            # `store: false` keeps no record, but a conversation still grows by the turn.
            if run.conversation is not None and self.turns is not None:
                await self.turns(run)
        except StoreUnavailable as exc:
            if ctx is not None:  # the log record says what the client got
                ctx.status = "failed"
                ctx.error = {"code": exc.code, "message": exc.message, "type": exc.type}
            raise

    async def _final_write(self, run: Run, final: StoredResponse) -> None:
        """A background response's final record, written only while the stored one is
        unfinished: the first terminal write wins (server/leases.py). Another replica failed it
        only if this process did not renew its lease in time (stalled, or cut off from the
        store), and its answer has been served since: it stands."""
        final = replace(final, owner=run.owner, lease_until=None)
        if not await self.health.write(self.store.replace_unfinished(final)):
            log.warning(
                "background response %s was already ended (%s): its %s outcome is not stored",
                final.id, "by another replica after its lease expired, or deleted", final.status,
            )  # fmt: skip

    def _cost(self, run: Run, counts: UsageCounts, created_at: int) -> Price | None:
        """The response's price, or None (counted as an unknown price, never an error)."""
        target = run.target
        pricing = None
        if target.deployment_id is not None:
            state = self.router.state(target.deployment_id)
            pricing = state.deployment.pricing if state is not None else None
        try:
            price = self.prices.cost(
                target.provider, target.model, counts, alias=run.canon.model,
                deployment_pricing=pricing, created_at=created_at,
            )  # fmt: skip
        except Exception:  # pricing must never fail a response
            log.exception("pricing %s/%s failed", target.provider, target.model)
            price = None
        if price is None and self.telemetry is not None:
            self.telemetry.unknown_price(target.provider, target.model)
        return price

    def _notify(
        self,
        ctx: RequestContext | None,
        run: Run,
        counts: UsageCounts,
        price: Price | None,
        run_tags: dict[str, str],
    ) -> None:
        """What only the gateway knows, for the request's telemetry record (emitted by the
        route once the reply is over: `Telemetry.finish`)."""
        if ctx is None:
            return
        response = run.builder.response
        ctx.response_id = str(response.get("id"))
        ctx.status = str(response.get("status"))
        ctx.provider = run.target.provider
        ctx.upstream_model = run.target.model
        ctx.response_model = str(response.get("model") or run.canon.model)
        ctx.deployment = run.target.deployment
        ctx.attempts = list(run.attempts)
        ctx.usage = {
            "input_tokens": counts.input_tokens,
            "cached_tokens": counts.cached_tokens,
            "cache_write_tokens": counts.cache_write_tokens,
            "output_tokens": counts.output_tokens,
            "reasoning_tokens": counts.reasoning_tokens,
        }
        ctx.cost = None if price is None else price.cost
        ctx.cost_source = None if price is None else price.source
        ctx.metadata = run_tags
        error = response.get("error")
        if isinstance(error, dict):
            ctx.error = {**error, "type": "response.failed"}
        telemetry = self.telemetry
        if telemetry is None:
            return
        limit = telemetry.capture_max_chars  # cut before any sink redacts or copies it
        if telemetry.capture_prompts:
            ctx.captured["instructions"] = clip(response.get("instructions"), limit)
            ctx.captured["input"] = clip(run.canon.input_items, limit)
        if telemetry.capture_outputs:
            ctx.captured["output"] = clip(response.get("output"), limit)


def record(
    run: Run, counts: UsageCounts, price: Price | None, run_tags: dict[str, str]
) -> StoredResponse:
    """The stored record of the run as it stands; its caller's key id for spend by key."""
    response = run.builder.response
    return StoredResponse(
        id=str(response["id"]),
        created_at=int(response.get("created_at") or time.time()),
        model=str(response.get("model") or run.canon.model),
        provider=run.target.provider,
        status=str(response.get("status")),
        response=response,
        input_items=run.canon.input_items,
        events=run.events,
        request=run.request,
        previous_response_id=run.previous_response_id,
        deployment=run.target.deployment,
        attempts=run.attempts,
        cost=None if price is None else price.cost,
        input_tokens=counts.input_tokens,
        cached_tokens=counts.cached_tokens,
        cache_write_tokens=counts.cache_write_tokens,
        output_tokens=counts.output_tokens,
        reasoning_tokens=counts.reasoning_tokens,
        api_key_id=run.caller.key_id,
        team=run.caller.team,
        tags=run_tags,
        duration_ms=round((time.monotonic() - run.started) * 1000, 1),
    )


def tags(metadata: Any) -> dict[str, str]:
    """The request's `metadata` as spend tags (OpenAI allows 16 string pairs; anything else
    is not a tag)."""
    if not isinstance(metadata, dict):
        return {}
    return {str(k): str(v) for k, v in list(metadata.items())[:16] if isinstance(v, str | int)}
