"""Opening the upstream reply: one attempt for `provider/model`; for an alias, the router's
attempts (retries, cooldowns, fallbacks, context-window fallbacks) until one answers 2xx.

Nothing has reached the client while this runs, so failing over is always safe. Each attempt
resolves its own `Target`, so a fallback to another provider speaks that provider's dialect.
The trail of attempts (`entry`) goes into the caller's list as it grows, and rides on the error
raised when every attempt failed (`UpstreamError.attempts`), so the error reply's headers and the
telemetry record show what was tried.

When every attempt failed, the client gets the most useful of the errors: a provider's 429 (with
its `Retry-After`) over anything else, then an error a provider answered over a deployment that
could not be reached, so a dead deployment never hides a live one's answer.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from turnout.engine.builder import ResponseBuilder
from turnout.engine.canonical import CanonicalRequest
from turnout.engine.errors import RequestError, UpstreamError
from turnout.engine.web_search import hosted_view
from turnout.server.config import Settings
from turnout.server.request_context import Caller
from turnout.server.router import (
    EJECT_CODES,
    MAX_WAIT_S,
    Affinity,
    DeploymentState,
    Router,
    affinity_of,
    is_context_window_error,
    is_retryable,
)
from turnout.server.source import Source, open_source
from turnout.server.stores.base import StoredResponse
from turnout.server.targets import Target, Targets
from turnout.server.upstream import Upstream, UpstreamCall

__all__ = ["Failover", "Opened", "entry", "key_drops", "release"]

log = logging.getLogger("turnout.gateway")


@dataclass(slots=True)
class Opened:
    """The attempt that got a 2xx: where it went and the trail of attempts before it."""

    target: Target
    source: Source
    status: int
    attempts: list[dict[str, Any]]
    state: DeploymentState | None
    dropped: tuple[str, ...] = ()  # hosted tools left out (an alias's unsupported_tools: drop)


def entry(
    where: Target | DeploymentState,
    state: DeploymentState | None,
    status: int,
    started: float,
    code: str | None = None,
) -> dict[str, Any]:
    """One attempt in the stored trail: which deployment, how it ended, how long it took."""
    if isinstance(where, DeploymentState):
        deployment, provider = where.model, where.provider
    else:
        deployment, provider = where.deployment or f"{where.provider}/{where.model}", where.provider
    return {
        "deployment": deployment,
        "deployment_id": state.id if state is not None else None,
        "provider": provider,
        "status": status,
        "code": code,
        "ok": 200 <= status < 300,
        "latency_ms": round((time.monotonic() - started) * 1000, 1),
    }


def release(router: Router, state: DeploymentState, builder: ResponseBuilder) -> None:
    """The upstream reply of `state` is over: count it out of in-flight, its tokens in tpm."""
    try:
        # Usage as fed so far (finish() may not have run yet, so `builder.response` has none).
        usage = builder.usage
        tokens = int(usage.get("total_tokens") or 0)
    except Exception:  # never let accounting break a reply
        tokens = 0
    router.finished(state, tokens)


def key_drops(caller: Caller) -> bool:
    """The caller's virtual key opts in to `unsupported_tools: drop` on every model it calls
    (as an alias's `models.<alias>.unsupported_tools: drop` does for that alias)."""
    key = caller.key
    return key is not None and key.unsupported_tools == "drop"


_TOOL_PARAM = re.compile(r"^tools\[(\d+)\]$")


def _refused_tool(exc: RequestError, canon: CanonicalRequest) -> dict[str, Any] | None:
    """The hosted tool a mapping's refusal names (`tools[i]`), if that is what it refused."""
    match = _TOOL_PARAM.match(exc.param or "")
    if exc.code != "unsupported_parameter" or match is None:
        return None
    index = int(match[1])
    return next((t for t in canon.view["hosted_tools"] if t.get("index") == index), None)


# Failures before any provider answered: a provider's own error is worth more to the client.
_TRANSPORT_CODES = EJECT_CODES | {"upstream_timeout", "upstream_incomplete"}


def _remember(walk: _Walk, exc: UpstreamError) -> None:
    walk.last_upstream = exc
    if exc.code not in _TRANSPORT_CODES:
        walk.answered = exc
    if exc.status == 429:
        walk.rate_limited = exc


@dataclass(slots=True)
class _Walk:
    """One aliased request's way through the router's plan."""

    canon: CanonicalRequest
    queue: list[str]  # the aliases to try, fallbacks included (grows on a context switch)
    deadline: float
    affinity: Affinity
    attempts: list[dict[str, Any]]
    i: int = 0  # the next alias of `queue`
    last_upstream: UpstreamError | None = None
    answered: UpstreamError | None = None  # the last error a provider answered (not transport)
    rate_limited: UpstreamError | None = None  # the last 429, with its Retry-After
    first_refusal: RequestError | None = None
    drop: bool = False  # the caller's key drops hosted tools the provider lacks
    limited: list[float] = field(default_factory=list)  # retry-afters of rate-limited aliases
    cooling: list[float] = field(default_factory=list)  # ... and of cooling ones
    switched: bool = False  # to the context-window fallbacks (once)


class Failover:
    """The attempt loop; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        router: Router,
        targets: Targets,
        upstream: Upstream,
        secrets: Sequence[str],
    ) -> None:
        self.settings = settings
        self.router = router
        self.targets = targets
        self.upstream = upstream
        # Secret values known at start: masked out of upstream errors with each call's own.
        self.secrets = secrets

    async def call_dropping(
        self, canon: CanonicalRequest, target: Target
    ) -> tuple[UpstreamCall, tuple[str, ...]]:
        """`call`, leaving out each hosted tool the provider refuses (an alias's or the key's
        `unsupported_tools: drop`); the types left out come back with the call."""
        dropped: list[str] = []
        while True:
            try:
                return await self.call(canon, target), tuple(dropped)
            except RequestError as exc:
                refused = _refused_tool(exc, canon)
                if refused is None:
                    raise
                hosted = [t for t in canon.view["hosted_tools"] if t is not refused]
                dropped.append(str(refused.get("type")))
                view = {**canon.view, **hosted_view(hosted, canon.view.get("web_search"))}
                canon = CanonicalRequest(view, canon.input_items, canon.body)

    async def call(self, canon: CanonicalRequest, target: Target) -> UpstreamCall:
        """The upstream request for `target` (raises `RequestError` for a parameter its
        provider cannot honour)."""
        return target.mapping.build_request(
            canon,
            model=target.model,
            api_base=target.api_base,
            credentials=await self.targets.credentials(target),
            settings=target.settings,
        )

    async def direct(
        self,
        target: Target,
        call: UpstreamCall,
        started: float,
        dropped: tuple[str, ...] = (),
    ) -> Opened:
        """The one attempt of a `provider/model`: its errors are passed on as they are."""
        source, status = await open_source(self.upstream, call, target, self.secrets)
        attempts = [entry(target, None, status, started)]
        return Opened(target, source, status, attempts, None, dropped)

    async def attempt(
        self,
        canon: CanonicalRequest,
        chain: list[StoredResponse],
        attempts: list[dict[str, Any]] | None = None,
        deadline: float | None = None,
        *,
        drop: bool = False,
    ) -> Opened:
        """The upstream reply that answered 2xx. `deadline` (monotonic) bounds an alias's
        attempts; by default `router.timeout_s` from now. `drop`: hosted tools a provider lacks
        are left out (`key_drops`), whatever the alias says."""
        spec = self.settings.models.get(canon.model)
        if spec is None or not spec.deployments:
            # `direct`, inline: the request path of every provider/model (no extra await).
            target = self.targets.resolve(canon.model)
            started = time.monotonic()
            dropped: tuple[str, ...] = ()
            if drop:
                call, dropped = await self.call_dropping(canon, target)
            else:
                call = await self.call(canon, target)
            try:
                source, status = await open_source(self.upstream, call, target, self.secrets)
            except UpstreamError as exc:
                exc.attempts = [entry(target, None, exc.status, started, exc.code)]
                raise
            attempts = [entry(target, None, status, started)]
            return Opened(target, source, status, attempts, None, dropped)
        if deadline is None:
            deadline = time.monotonic() + self.settings.router.timeout_s
        walk = _Walk(
            canon=canon,
            queue=self.router.plan(canon.model),
            deadline=deadline,
            affinity=affinity_of(canon.view.get("entries") or [], chain, self.router.traits),
            attempts=[] if attempts is None else attempts,
            drop=drop,
        )
        try:
            while walk.i < len(walk.queue):
                alias = walk.queue[walk.i]
                walk.i += 1
                opened = await self._alias(walk, alias)
                if opened is not None:
                    return opened
            raise self._exhausted(walk)
        except UpstreamError as exc:
            exc.attempts = list(walk.attempts)
            raise

    async def _alias(self, walk: _Walk, alias: str) -> Opened | None:
        """The attempts on one alias's deployments, retries included; None: on to the next
        alias of the plan."""
        router = self.router
        tried: dict[str, int] = {}
        excluded: set[str] = set()
        group = router.groups.get(alias, [])
        for _ in range(max(self.settings.router.retries + 1, len(group))):
            pick = router.pick(alias, tried=tried, affinity=walk.affinity, exclude=excluded)
            state = pick.state
            if state is None:
                if pick.retry_after is not None:
                    (walk.limited if pick.reason == "limited" else walk.cooling).append(
                        pick.retry_after
                    )
                return None
            remaining = walk.deadline - time.monotonic()
            if pick.wait > MAX_WAIT_S or pick.wait >= remaining:
                walk.limited.append(pick.wait)  # it asked us to hold back longer than we can
                return None  # not worth waiting for: on to the fallbacks
            if pick.wait > 0:
                await anyio.sleep(pick.wait)
                remaining = walk.deadline - time.monotonic()
            try:
                return await self._try(walk, state, alias, remaining, not tried.get(state.id))
            except RequestError as exc:
                # This deployment cannot serve the request (a parameter its provider cannot
                # honour, no key configured): another one may.
                excluded.add(state.id)
                walk.first_refusal = walk.first_refusal or exc
            except UpstreamError as exc:
                if is_context_window_error(exc, self.router.traits) and self._widen(walk, alias):
                    _remember(walk, exc)
                    return None
                if not is_retryable(exc):
                    raise
                tried[state.id] = tried.get(state.id, 0) + 1
                _remember(walk, exc)
        return None

    async def _try(
        self, walk: _Walk, state: DeploymentState, alias: str, remaining: float, first: bool
    ) -> Opened:
        """One attempt on one deployment, the router told how it went (`first`: this request's
        first failure there counts toward its cooldown, a retry's does not) and the trail
        extended; its error is raised on."""
        router = self.router
        started = time.monotonic()
        router.begin(state)
        try:
            target = self.targets.for_deployment(state, alias)
            target = replace(target, timeout_s=min(target.timeout_s or remaining, remaining))
            dropped: tuple[str, ...] = ()
            if walk.drop or self._drops(alias):
                call, dropped = await self.call_dropping(walk.canon, target)
            else:
                call = await self.call(walk.canon, target)
            source, status = await open_source(self.upstream, call, target, self.secrets)
        except RequestError as exc:
            router.finished(state)
            walk.attempts.append(entry(state, state, exc.status, started, exc.code))
            raise
        except UpstreamError as exc:
            router.failed(state, exc, time.monotonic() - started, counts=first)
            router.finished(state)
            walk.attempts.append(entry(state, state, exc.status, started, exc.code))
            log.info(
                "attempt %d on %s failed: %s %s", len(walk.attempts), state.id, exc.status, exc.code
            )
            raise
        except BaseException:
            router.finished(state)  # cancelled (client left) or a bug: release it
            raise
        router.succeeded(state, time.monotonic() - started)
        walk.attempts.append(entry(state, state, status, started))
        return Opened(target, source, status, walk.attempts, state, dropped)

    def _drops(self, alias: str) -> bool:
        spec = self.settings.models.get(alias)
        return spec is not None and spec.unsupported_tools == "drop"

    def _widen(self, walk: _Walk, alias: str) -> bool:
        """A context-length error: switch (once) to the context-window fallbacks. True when
        there is an alias left to go to."""
        if walk.switched:
            return False
        walk.switched = True
        router = self.router
        bigger = router.plan(alias, context_window=True) or router.plan(
            walk.canon.model, context_window=True
        )
        done = walk.queue[: walk.i]
        walk.queue = done + [a for a in bigger if a not in done]
        return len(walk.queue) > walk.i

    @staticmethod
    def _exhausted(walk: _Walk) -> Exception:
        """What to answer when no attempt got a 2xx (see the module docstring)."""
        best = walk.rate_limited or walk.answered or walk.last_upstream
        if best is not None:
            return best
        if walk.first_refusal is not None:
            return walk.first_refusal
        model = walk.canon.model
        if walk.limited:
            return UpstreamError(
                429,
                f"Every deployment of '{model}' is at its rate limit (rpm/tpm); "
                f"retry after {math.ceil(min(walk.limited))}s.",
                code="rate_limit_exceeded",
                type="requests",
                retry_after=min(walk.limited),
            )
        return UpstreamError(
            503,
            f"No deployment of '{model}' is available: all are cooling down after "
            "repeated failures.",
            code="no_healthy_deployment",
            type="server_error",
            retry_after=min(walk.cooling) if walk.cooling else None,
        )
