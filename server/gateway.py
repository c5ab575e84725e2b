"""Request orchestration for `POST /v1/responses`, free of any web framework.

One request, in order:

1. load the `previous_response_id` chain from the store (404 `previous_response_not_found`);
2. `engine.canonical.normalize(body, history)` validates the body and merges the new input onto
   the history idempotently (an item whose `id`, or function_call whose `call_id`, is already in
   the history is dropped: anchor-failures 9);
3. resolve `model` to a provider mapping + deployment (400 `model_not_found`, 401
   `missing_api_key`);
4. render the upstream request and open it; a failure here (non-2xx, network) is raised as
   `UpstreamError` *before* anything was sent, so the client gets a plain JSON error;
5. feed ops to one `ResponseBuilder`; streamed and non-streamed replies run the very same event
   loop, so they cannot disagree;
6. write the `StoredResponse` once, awaited *before* the terminal event (or the JSON reply) leaves,
   so a follow-up chained on it immediately finds it (anchor-failures 1).

Stream terminator: we end every stream with `data: [DONE]`. OpenAI does not send it, but the
Open Responses spec requires it and both official SDKs stop cleanly on it (responses-api §7.1), so
it costs OpenAI clients nothing and makes the stream Open Responses conformant.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import quote

import anyio
import orjson

from turnout.engine.builder import ResponseBuilder, make_echo
from turnout.engine.canonical import CanonicalRequest, normalize
from turnout.engine.diagnostics import nearest
from turnout.engine.errors import RequestError, UpstreamError
from turnout.engine.ids import IdFactory
from turnout.server.background import BackgroundResponses, LiveResponse
from turnout.server.config import (
    Deployment,
    ModelAlias,
    ProviderSettings,
    Settings,
    key_variables,
)
from turnout.server.credentials import (
    GoogleTokens,
    api_key_credentials,
    declared_credentials,
    resolve_settings,
    static_credentials,
)
from turnout.server.pricing import Price, PriceBook, UsageCounts, usage_counts
from turnout.server.redaction import redact, secret_values
from turnout.server.router import (
    MAX_WAIT_S,
    DeploymentState,
    Router,
    affinity_of,
    is_context_window_error,
    is_retryable,
)
from turnout.server.stores.base import ChainError, ResponseStore, StoredResponse
from turnout.server.telemetry.hub import CURRENT, RequestContext, Telemetry
from turnout.server.upstream import Upstream, UpstreamCall, UpstreamStream

__all__ = [
    "DONE",
    "TERMINAL_EVENTS",
    "Gateway",
    "JsonReply",
    "MappingLike",
    "RegistryLike",
    "StreamReply",
    "Target",
    "encode_sse",
    "replay_sse",
]

log = logging.getLogger("turnout.gateway")

DONE = b"data: [DONE]\n\n"
TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})
# Statuses of a background response still at work: nothing can continue from it yet.
UNFINISHED = frozenset({"queued", "in_progress"})
_GENERIC_FAILURE = "The server had an error while processing your request."


class StreamDecoderLike(Protocol):
    def feed(self, chunk: bytes) -> list[dict[str, Any]]: ...
    def close(self) -> list[dict[str, Any]]: ...


class MappingLike(Protocol):
    """The slice of `engine.mapping.CompiledMapping` the gateway uses."""

    @property
    def provider(self) -> str: ...
    @property
    def defaults(self) -> Mapping[str, Any]: ...
    @property
    def finish_reasons(self) -> Mapping[str, str]: ...

    def build_request(
        self,
        req: CanonicalRequest,
        *,
        model: str,
        api_base: str,
        credentials: dict[str, str],
        settings: dict[str, Any],
    ) -> UpstreamCall: ...
    def parse_response(self, body: bytes) -> list[dict[str, Any]]: ...
    def stream_decoder(self) -> StreamDecoderLike: ...
    def parse_error(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError: ...


class RegistryLike(Protocol):
    """The slice of `engine.registry.MappingRegistry` the gateway uses."""

    def get(self, provider: str) -> MappingLike | None: ...
    @property
    def providers(self) -> list[str]: ...


def encode_sse(event: Mapping[str, Any]) -> bytes:
    """One event, one chunk: `event:` equals the JSON `type` (Open Responses requires it)."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def replay_sse(
    events: Sequence[Mapping[str, Any]], starting_after: int | None, *, done_marker: bool = True
) -> AsyncIterator[bytes]:
    """Stored events as SSE from `#0` (the SDK resume helpers need `response.created`), or only
    those with `sequence_number > starting_after`."""
    for event in events:
        if starting_after is not None and int(event.get("sequence_number", -1)) <= starting_after:
            continue
        yield encode_sse(event)
    if done_marker:
        yield DONE


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: the resolved provider, upstream model and credentials."""

    provider: str
    mapping: MappingLike
    model: str
    api_base: str
    credentials: dict[str, str] = field(repr=False)
    settings: dict[str, Any]
    timeout_s: float | None
    deployment: str | None
    # Credentials still to fetch per request (OAuth tokens), by name.
    pending: tuple[str, ...] = ()
    # The router's id of the alias deployment ("claude#0"); None for a direct provider/model.
    deployment_id: str | None = None


@dataclass(frozen=True, slots=True)
class JsonReply:
    response: dict[str, Any]
    # Response headers (x-turnout-deployment, x-turnout-attempts): no keys, no URLs.
    headers: dict[str, str] = field(default_factory=dict)
    # A background response: its work (and its telemetry record) outlives this reply.
    detached: bool = False


@dataclass(frozen=True, slots=True)
class StreamReply:
    chunks: AsyncIterator[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    detached: bool = False


_REPORTED_UNKNOWN: set[tuple[str, str]] = set()


def _report_unknown_events(mapping: MappingLike, unknown: dict[str, int]) -> None:
    """A stream event type the mapping does not know is logged once per type, not ignored:
    it is how a provider's new event types get noticed (the tests fail on them)."""
    provider = str(getattr(mapping, "provider", "?"))
    for name, count in unknown.items():
        if (provider, name) not in _REPORTED_UNKNOWN:
            _REPORTED_UNKNOWN.add((provider, name))
            log.warning("mapping %s has no rule for stream event %r (seen %d times)",
                        provider, name, count)  # fmt: skip


class _Source:
    """Upstream ops, from a whole (already parsed) body or an open stream; opened before the
    reply starts so that anything failing up to here is still a plain JSON error."""

    def __init__(
        self,
        mapping: MappingLike,
        ops: list[dict[str, Any]] | None,
        stream: UpstreamStream | None,
        secrets: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self._mapping = mapping
        self._ops = ops
        self._stream = stream
        self._secrets = secrets  # what to mask out of in-band error messages, on demand
        # Called once when the upstream reply is released (the router's in-flight count).
        self.on_close: Callable[[], Any] | None = None

    async def batches(self) -> AsyncGenerator[list[dict[str, Any]], None]:
        if self._stream is None:
            yield self._ops or []
            return
        decoder = self._mapping.stream_decoder()
        secrets = self._secrets
        try:
            async for chunk in self._stream.chunks():
                ops = decoder.feed(chunk)
                if ops:
                    yield _masked(ops, secrets)
            yield _masked(decoder.close(), secrets)
        except UpstreamError as exc:  # an exception frame, a cut stream: same masking
            _mask_error(exc, secrets())
            raise
        _report_unknown_events(self._mapping, getattr(decoder, "unknown_events", {}))

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
        if self.on_close is not None:
            self.on_close()


@dataclass(slots=True)
class _Opened:
    """The attempt that got a 2xx: where it went and the trail of attempts before it."""

    target: Target
    source: _Source
    status: int
    attempts: list[dict[str, Any]]
    state: DeploymentState | None


@dataclass(slots=True)
class _Run:
    """Everything one create call carries from start to the store write."""

    canon: CanonicalRequest
    target: Target
    builder: ResponseBuilder
    source: _Source | None  # None until the upstream answered (a queued background response)
    request: dict[str, Any]
    previous_response_id: str | None
    store: bool
    upstream_status: int
    events: list[dict[str, Any]] = field(default_factory=list)
    # One entry per upstream attempt: deployment, status, error code, latency (no secrets).
    attempts: list[dict[str, Any]] = field(default_factory=list)


class Gateway:
    """Turns a Responses create body into a JSON Response or an SSE byte stream."""

    def __init__(
        self,
        settings: Settings,
        registry: RegistryLike,
        store: ResponseStore,
        upstream: Upstream,
        *,
        ids: IdFactory | None = None,
        done_marker: bool = True,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.upstream = upstream
        self.ids = ids or IdFactory()
        self.done_marker = done_marker
        # Connection settings are fixed for the process: resolve each provider/deployment once.
        # Keys are bounded (registry providers, configured deployments), never client strings.
        self._conns: dict[object, ProviderSettings] = {}
        self.google_tokens = GoogleTokens()
        self.router = Router(settings.router, settings.models)
        # Cost of every response (server/pricing.py); the telemetry hub is wired in by the app
        # (server/app.py) and stays None for a bare Gateway (unit tests).
        self.prices = PriceBook(settings.pricing)
        self.telemetry: Telemetry | None = None
        self.background = BackgroundResponses()
        # Secret values known at start (secret-named environment variables): masked out of
        # upstream error messages along with each call's own credentials.
        self._secrets = secret_values(settings.env)

    # -- model resolution -------------------------------------------------------------------

    def pick_deployment(self, alias: str, spec: ModelAlias) -> Deployment:
        """The deployment the router would try first for `alias` (balancing, limits,
        cooldowns); the first one when none is usable."""
        state = self.router.pick(alias).state
        return state.deployment if state is not None else spec.deployments[0]

    def resolve(self, model: str) -> Target:
        """`model` as an alias from `settings.models`, or `provider/model` with a provider the
        registry knows; 400 `model_not_found` otherwise, 401 `missing_api_key` without a key.
        For an alias this is the router's first choice; `create` walks the attempts itself."""
        spec = self.settings.models.get(model)
        if spec is not None and spec.deployments:
            state = self.router.pick(model).state
            if state is None:
                state = self.router.groups[model][0]
            return self._deployment_target(state, model)
        provider, sep, upstream_model = model.partition("/")
        mapping = self._mapping(provider, upstream_model) if sep and upstream_model else None
        if mapping is None:
            raise self._unknown_model(model)
        conn = self._conns.get(provider)
        if conn is None:
            conn = self._conns[provider] = self.settings.provider(provider)
        return self._target(mapping, upstream_model, conn, None)

    def _deployment_target(self, state: DeploymentState, model: str) -> Target:
        """The target of one alias deployment: its own mapping (a Chat-Completions deployment
        gets the chat mapping even as a fallback of a Responses one: anchor-failures 11)."""
        dep = state.deployment
        mapping = self._mapping(dep.provider, dep.provider_model)
        if mapping is None:  # config names a provider with no mapping file
            raise self._unknown_model(model)
        conn = self._conns.get(id(dep))
        if conn is None:
            conn = self._conns[id(dep)] = self.settings.for_deployment(dep)
        return self._target(mapping, dep.provider_model, conn, dep.model, state.id)

    def _placeholder_target(self, alias: str) -> Target:
        """The alias's first deployment, without credentials: what a queued background
        response names until an attempt answers (`_bind` replaces it)."""
        dep = self.router.groups[alias][0].deployment
        mapping = self._mapping(dep.provider, dep.provider_model)
        if mapping is None:
            raise self._unknown_model(alias)
        return Target(
            provider=dep.provider, mapping=mapping, model=dep.provider_model, api_base="",
            credentials={}, settings={}, timeout_s=None, deployment=dep.model,
        )  # fmt: skip

    def _mapping(self, provider: str, model: str) -> MappingLike | None:
        # A provider may serve some models through a variant mapping (Claude on Vertex).
        resolve = getattr(self.registry, "resolve", None)
        return resolve(provider, model) if resolve is not None else self.registry.get(provider)

    def _unknown_model(self, model: str) -> RequestError:
        providers = ", ".join(self.registry.providers) or "(none loaded)"
        aliases = ", ".join(sorted(self.settings.models))
        hint = f"an alias ({aliases}) or " if aliases else ""
        # A misspelt provider or alias is the usual mistake: name the closest one first.
        prefix, sep, rest = model.partition("/")
        provider = nearest(prefix, self.registry.providers) if sep else None
        guess = f"{provider}/{rest}" if provider else nearest(model, list(self.settings.models))
        closest = f" Did you mean '{guess}'?" if guess else ""
        return RequestError(
            400,
            f"The model '{model}' does not exist.{closest} Use {hint}'provider/model' where "
            f"provider is one of: {providers}.",
            param="model",
            code="model_not_found",
        )

    def _target(
        self,
        mapping: MappingLike,
        model: str,
        conn: ProviderSettings,
        deployment: str | None,
        deployment_id: str | None = None,
    ) -> Target:
        defaults = mapping.defaults
        env = self.settings.env
        settings = resolve_settings(
            mapping.provider, defaults.get("settings") or {}, conn.settings, env
        )
        declared = declared_credentials(defaults)
        pending: list[str] = []
        if declared is None:
            credentials = self._credentials(mapping, conn)
        else:
            credentials, pending = static_credentials(
                mapping.provider, declared, conn.credentials, conn.api_key, env
            )
        return Target(
            provider=mapping.provider,
            mapping=mapping,
            model=model,
            api_base=conn.api_base or str(defaults.get("api_base") or ""),
            credentials=credentials,
            settings=settings,
            timeout_s=conn.timeout_s or self.settings.router.timeout_s,
            deployment=deployment,
            pending=tuple(pending),
            deployment_id=deployment_id,
        )

    async def _fetch_pending(self, target: Target) -> dict[str, str]:
        """Credentials that come from a token source (Vertex's OAuth2 access token)."""
        if not target.pending:
            return target.credentials
        credentials = dict(target.credentials)
        source = target.settings.get("credentials_file") or self.settings.env.get(
            "GOOGLE_APPLICATION_CREDENTIALS"
        )
        for name in target.pending:
            credentials[name] = await self.google_tokens.token(
                target.provider, str(source) if source else None
            )
        return credentials

    def _credentials(self, mapping: MappingLike, conn: ProviderSettings) -> dict[str, str]:
        pid = mapping.provider
        return api_key_credentials(
            pid, mapping.defaults, conn.api_key, self.settings.env, key_variables(pid)
        )

    # -- history ----------------------------------------------------------------------------

    async def history(self, previous_response_id: str | None) -> list[dict[str, Any]]:
        """Input + output items of the chain, oldest first (instructions are not carried)."""
        return _items(await self._chain(previous_response_id))

    async def _chain(self, previous_response_id: str | None) -> list[StoredResponse]:
        if previous_response_id is None:
            return []
        try:
            chain = await self.store.chain(previous_response_id)
        except ChainError as exc:
            # Name the link that broke: an ancestor deleted mid-chain is not the id the client
            # sent, which GET still finds.
            message = f"Previous response with id '{previous_response_id}' not found."
            if exc.at_id != previous_response_id:
                message = (
                    f"The conversation before '{previous_response_id}' cannot be rebuilt: "
                    + str(exc)
                )
            raise RequestError(
                404, message, param="previous_response_id", code="previous_response_not_found"
            ) from None
        if chain and chain[-1].status in UNFINISHED:
            raise RequestError(
                400,
                f"Previous response with id '{previous_response_id}' is still "
                f"{chain[-1].status}: wait until it has finished to continue from it.",
                param="previous_response_id",
                code="previous_response_not_finished",
            )
        return chain

    # -- create -----------------------------------------------------------------------------

    async def create(self, body: Any) -> JsonReply | StreamReply:
        if not isinstance(body, dict):
            raise RequestError(
                400, "The request body must be a JSON object.", param=None, code="invalid_type"
            )
        prev = body.get("previous_response_id")
        if prev is not None and not isinstance(prev, str):
            raise RequestError(
                400,
                "Invalid type for 'previous_response_id': expected a string.",
                param="previous_response_id",
                code="invalid_type",
            )
        chain = await self._chain(prev)
        canon = normalize(body, _items(chain))
        if body.get("background") is True:
            return await self._create_background(body, canon, chain, prev)
        opened = await self._attempt(canon, chain)
        run = self._new_run(body, canon, prev, opened.target)
        builder = run.builder
        self._bind(run, opened)
        headers = _reply_headers(run)
        if canon.stream:
            return StreamReply(self._sse(run), headers)
        async with aclosing(self._stored_groups(run)) as groups:
            async for _ in groups:
                pass
        return JsonReply(builder.response, headers)

    def _new_run(
        self, body: dict[str, Any], canon: CanonicalRequest, prev: str | None, target: Target
    ) -> _Run:
        builder = ResponseBuilder(
            self.ids.response(),
            int(time.time()),
            make_echo(body),
            target.mapping.finish_reasons,
            canon.model,
            ids=self.ids,
            provider=target.provider,
            max_image_bytes=self.settings.limits.max_image_bytes,
        )
        return _Run(
            canon=canon,
            target=target,
            builder=builder,
            source=None,
            # The body minus input (kept as input_items); it holds no credentials.
            request={k: v for k, v in body.items() if k != "input"},
            previous_response_id=prev,
            store=bool(canon.view.get("store", True)),
            upstream_status=0,
        )

    def _bind(self, run: _Run, opened: _Opened) -> None:
        """Attach the upstream reply that answered (and what it took to get it) to the run."""
        run.target = opened.target
        run.source = opened.source
        run.upstream_status = opened.status
        run.attempts = opened.attempts
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
                opened.source, _release, self.router, opened.state, run.builder
            )

    # -- background responses ---------------------------------------------------------------

    async def _create_background(
        self,
        body: dict[str, Any],
        canon: CanonicalRequest,
        chain: list[StoredResponse],
        prev: str | None,
    ) -> JsonReply | StreamReply:
        """Store the response as queued, start the work, answer at once (server/background.py).
        For a direct provider/model the request is built first, so an unknown model, a missing
        key or a parameter the provider cannot honour is still this call's own 4xx."""
        limit = self.settings.limits.max_background
        if self.background.running() >= limit:
            raise RequestError(
                429,
                f"Too many background responses at work ({limit}, limits.max_background): "
                "retry once some have finished.",
                param="background",
                code="rate_limit_exceeded",
                type="requests",
            )
        reply_stream = canon.stream
        # The upstream always streams, so GET shows the output as it grows and followers get
        # every delta, whether the create call itself asked for a stream or not.
        canon = CanonicalRequest({**canon.view, "stream": True}, canon.input_items, canon.body)
        spec = self.settings.models.get(canon.model)
        call = None
        if spec is None or not spec.deployments:
            target = self.resolve(canon.model)
            call = await self._call(canon, target)
        else:
            # The router picks (and fails over) when the work starts; a deployment without a key
            # must not fail the create call when another one would answer.
            target = self._placeholder_target(canon.model)
        run = self._new_run(body, canon, prev, target)
        builder = run.builder
        live = LiveResponse(builder)
        queued = builder.queue()
        run.events.extend(queued)
        live.publish(queued)
        self.background.reserve(live)  # counted against the cap before the first await
        try:
            await self.store.put(
                self._record(run, UsageCounts(), None, CURRENT.get(), _tags(body.get("metadata")))
            )
        except BaseException:
            self.background.release(live)
            raise
        self.background.launch(live, self._run_background(live, run, chain, call))
        # For an alias no deployment has been tried yet: no x-turnout-* headers that would
        # name a guess (the stored record and GET name the one that answered).
        headers = _reply_headers(run) if call is not None else {}
        if reply_stream:
            return StreamReply(self.follow_sse(live), headers, detached=True)
        return JsonReply(builder.response, headers, detached=True)

    async def _run_background(
        self,
        live: LiveResponse,
        run: _Run,
        chain: list[StoredResponse],
        call: UpstreamCall | None,
    ) -> None:
        live.started = True
        ctx = CURRENT.get()
        try:
            opening = run.builder.start()  # response.in_progress: the work has begun
            run.events.extend(opening)
            live.publish(opening)
            try:
                if call is not None:
                    target, started = run.target, time.monotonic()
                    source, status = await self._open(call, target)
                    entry = _entry(target, None, status, started)
                    opened = _Opened(target, source, status, [entry], None)
                else:
                    opened = await self._attempt(run.canon, chain, run.attempts)
            except (RequestError, UpstreamError) as exc:
                code = exc.code or ("invalid_request" if isinstance(exc, RequestError) else None)
                await self._end(live, run, run.builder.fail(code or "server_error", exc.message))
                return
            self._bind(run, opened)
            async with aclosing(self._stored_groups(run)) as groups:
                async for group in groups:
                    live.publish(group)
        except asyncio.CancelledError:
            # The cancel call, or the gateway shutting down (then it is a failure: the work was
            # not finished, and a poller must not wait on it forever).
            with anyio.CancelScope(shield=True):
                if self.background.stopping:
                    message = "The gateway shut down before this background response finished."
                    await self._end(live, run, run.builder.fail("server_error", message))
                else:
                    run.builder.cancel()
                    await self._end(live, run, [])
        except Exception:
            log.exception("background response %s failed", run.builder.response_id)
            with anyio.CancelScope(shield=True):
                await self._end(live, run, run.builder.fail("server_error", _GENERIC_FAILURE))
        finally:
            if self.telemetry is not None and ctx is not None:
                self.telemetry.finish(ctx)

    async def _end(self, live: LiveResponse, run: _Run, events: list[dict[str, Any]]) -> None:
        """Store the final record, then let the followers see the events they have not seen
        (a cancel can land between the store write and the terminal event's publication)."""
        run.events.extend(events)
        await self._store(run)
        live.publish(run.events[len(live.events) :])

    async def follow_sse(
        self, live: LiveResponse, starting_after: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """A running background response as SSE: its events so far, then the new ones."""
        async for group in live.follow(starting_after):
            yield b"".join([encode_sse(event) for event in group])
        if self.done_marker:
            yield DONE

    async def aclose(self) -> None:
        await self.background.aclose()

    async def recover(self) -> int:
        """At start-up: background responses a previous process left unfinished (it crashed,
        or was killed) end as failed, so pollers get an answer. Returns how many."""
        count = 0
        for response_id in await self.store.unfinished():
            if self.background.get(response_id) is not None:
                continue
            record = await self.store.get(response_id)
            if record is None or record.status not in UNFINISHED:
                continue
            response = {
                **record.response,
                "status": "failed",
                "error": {
                    "code": "server_error",
                    "message": "The gateway stopped before this background response finished.",
                },
            }
            events = list(record.events or [])
            seq = int(events[-1]["sequence_number"]) + 1 if events else 0
            events.append({"type": "response.failed", "sequence_number": seq, "response": response})
            await self.store.put(replace(record, status="failed", response=response, events=events))
            count += 1
        if count:
            log.warning(
                "%d background response(s) left unfinished by a previous run: failed", count
            )
        return count

    async def _call(self, canon: CanonicalRequest, target: Target) -> UpstreamCall:
        return target.mapping.build_request(
            canon,
            model=target.model,
            api_base=target.api_base,
            credentials=await self._fetch_pending(target),
            settings=target.settings,
        )

    async def _attempt(
        self,
        canon: CanonicalRequest,
        chain: list[StoredResponse],
        attempts: list[dict[str, Any]] | None = None,
    ) -> _Opened:
        """Open the upstream reply: one attempt for `provider/model`; for an alias, the router's
        attempts (retries, cooldowns, fallbacks, context-window fallbacks) until one answers
        2xx. Nothing has reached the client yet, so failing over here is always safe. The trail
        goes into `attempts` as it grows, so a caller still has it when every attempt failed."""
        spec = self.settings.models.get(canon.model)
        if spec is None or not spec.deployments:
            target = self.resolve(canon.model)
            started = time.monotonic()
            source, status = await self._open(await self._call(canon, target), target)
            return _Opened(target, source, status, [_entry(target, None, status, started)], None)

        router, rs = self.router, self.settings.router
        deadline = time.monotonic() + rs.timeout_s
        affinity = affinity_of(canon.view.get("entries") or [], chain)
        queue = router.plan(canon.model)
        attempts = [] if attempts is None else attempts
        last_upstream: UpstreamError | None = None
        first_refusal: RequestError | None = None
        limited: list[float] = []
        cooling: list[float] = []
        switched = False
        i = 0
        while i < len(queue):
            alias = queue[i]
            i += 1
            tried: dict[str, int] = {}
            excluded: set[str] = set()
            group = router.groups.get(alias, [])
            for _ in range(max(rs.retries + 1, len(group))):
                pick = router.pick(alias, tried=tried, affinity=affinity, exclude=excluded)
                state = pick.state
                if state is None:
                    if pick.retry_after is not None:
                        (limited if pick.reason == "limited" else cooling).append(pick.retry_after)
                    break
                remaining = deadline - time.monotonic()
                if pick.wait > MAX_WAIT_S or pick.wait >= remaining:
                    break  # not worth waiting for: on to the fallbacks
                if pick.wait > 0:
                    await anyio.sleep(pick.wait)
                    remaining = deadline - time.monotonic()
                started = time.monotonic()
                router.begin(state)
                try:
                    target = self._deployment_target(state, alias)
                    timeout = min(target.timeout_s or remaining, remaining)
                    target = replace(target, timeout_s=timeout)
                    source, status = await self._open(await self._call(canon, target), target)
                except RequestError as exc:
                    # This deployment cannot serve the request (a parameter its provider cannot
                    # honour, no key configured): another one may.
                    router.finished(state)
                    attempts.append(_entry(state, state, exc.status, started, exc.code))
                    excluded.add(state.id)
                    first_refusal = first_refusal or exc
                    continue
                except UpstreamError as exc:
                    router.failed(state, exc, time.monotonic() - started)
                    router.finished(state)
                    attempts.append(_entry(state, state, exc.status, started, exc.code))
                    log.info(
                        "attempt %d on %s failed: %s %s",
                        len(attempts), state.id, exc.status, exc.code,
                    )  # fmt: skip
                    if is_context_window_error(exc) and not switched:
                        switched = True
                        bigger = router.plan(alias, context_window=True) or router.plan(
                            canon.model, context_window=True
                        )
                        done = queue[:i]
                        queue = done + [a for a in bigger if a not in done]
                        if len(queue) > i:
                            last_upstream = exc
                            break
                    if not is_retryable(exc):
                        raise
                    tried[state.id] = tried.get(state.id, 0) + 1
                    last_upstream = exc
                    continue
                except BaseException:
                    router.finished(state)  # cancelled (client left) or a bug: release it
                    raise
                router.succeeded(state, time.monotonic() - started)
                attempts.append(_entry(state, state, status, started))
                return _Opened(target, source, status, attempts, state)
        if last_upstream is not None:
            raise last_upstream
        if first_refusal is not None:
            raise first_refusal
        if limited:
            raise UpstreamError(
                429,
                f"Every deployment of '{canon.model}' is at its rate limit (rpm/tpm); "
                f"retry after {math.ceil(min(limited))}s.",
                code="rate_limit_exceeded",
                type="requests",
                retry_after=min(limited),
            )
        raise UpstreamError(
            503,
            f"No deployment of '{canon.model}' is available: all are cooling down after "
            "repeated failures.",
            code="no_healthy_deployment",
            type="server_error",
            retry_after=min(cooling) if cooling else None,
        )

    async def _open(self, call: UpstreamCall, target: Target) -> tuple[_Source, int]:
        """Send the request; returns once a 2xx status arrived (the whole body when not
        streaming), raising `UpstreamError` before anything reached the client."""
        secrets = _CallSecrets(call, target, self._secrets)
        try:
            if call.stream:
                stream = await self.upstream.open_stream(
                    call, target.mapping, read_timeout_s=target.timeout_s
                )
                return _Source(target.mapping, None, stream, secrets), stream.status_code
            response = await self.upstream.send(
                call, target.mapping, read_timeout_s=target.timeout_s
            )
            ops = target.mapping.parse_response(response.content)
        except UpstreamError as exc:
            # Providers quote keys back ("Incorrect API key provided: sk-..."): the message
            # reaches the client, the store and the logs, so it is masked here, once.
            _mask_error(exc, secrets())
            raise
        return _Source(target.mapping, _masked(ops, secrets), None, secrets), response.status_code

    async def _event_groups(self, run: _Run) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The builder's events for the whole reply, one list per upstream batch (so a stream
        writes each batch's events with one send, never holding one back for the next batch);
        failures after the start become `response.failed` carrying the upstream code and
        message (anchor-failures 6)."""
        b = run.builder
        source = run.source
        assert source is not None, "the upstream is opened before the events are read"
        failure: tuple[str, str] | None = None
        last: list[dict[str, Any]] = []
        try:
            opening = b.start()
            if opening:  # empty when a background response already announced its start
                yield opening
            async with aclosing(source.batches()) as batches:
                async for ops in batches:
                    events = b.feed(ops)
                    if b.terminal:
                        # Held until the upstream is released below: once the terminal event
                        # is out, the client may act on it (the deployment must be free).
                        last = events
                        break
                    if events:
                        yield events
        except UpstreamError as exc:
            failure = (exc.code or "server_error", exc.message)
        except Exception:
            # A mapping or builder bug mid-reply: the client sees a generic failure, the log
            # gets the traceback.
            log.exception("failed while translating the reply from %s", run.target.provider)
            failure = ("server_error", _GENERIC_FAILURE)
        finally:
            # Shielded: on a client disconnect the task is cancelled, and an unshielded await
            # here would be cancelled too, leaking the upstream connection until GC.
            with anyio.CancelScope(shield=True):
                await source.aclose()
        tail = b.fail(*failure) if failure is not None else ([] if b.terminal else b.finish())
        if last or tail:
            yield last + tail

    async def _stored_groups(self, run: _Run) -> AsyncGenerator[list[dict[str, Any]], None]:
        """`_event_groups`, with the store write awaited just before the terminal event leaves
        (the events before it in its group go out first, without waiting for the write)."""
        # aclosing: `async for` does not close an inner generator when the outer one is closed
        # (client disconnect), and the upstream must be released now, not at GC time.
        async with aclosing(self._event_groups(run)) as groups:
            async for group in groups:
                run.events.extend(group)
                cut = next(
                    (i for i, e in enumerate(group) if e.get("type") in TERMINAL_EVENTS), None
                )
                if cut is None:
                    yield group
                    continue
                if cut:
                    yield group[:cut]
                await self._store(run)
                yield group[cut:]

    async def _sse(self, run: _Run) -> AsyncGenerator[bytes, None]:
        ended = False
        async with aclosing(self._stored_groups(run)) as groups:
            async for group in groups:
                data = b"".join([encode_sse(event) for event in group])
                if self.done_marker and group[-1].get("type") in TERMINAL_EVENTS:
                    data += DONE  # nothing follows a terminal event: one send for both
                    ended = True
                yield data
        if self.done_marker and not ended:
            yield DONE

    async def _store(self, run: _Run) -> None:
        """Price the response, hand the telemetry its facts, then write the record. With
        `store: false` nothing is written (the client's choice: spend queries do not see that
        response); its cost still reaches the logs and metrics."""
        response = run.builder.response
        created_at = int(response.get("created_at") or time.time())
        counts = usage_counts(response.get("usage"))
        price = self._cost(run, counts, created_at)
        usage = response.get("usage")
        if isinstance(usage, dict):
            # In the body as `usage.cost` (US dollars, null when unknown): an extra key that the
            # SDK's strict validation and OpenAI's schema accept. Set before the terminal event
            # leaves, so the stored Response, the terminal event and the JSON reply agree.
            usage["cost"] = None if price is None else price.cost
        tags = _tags(run.request.get("metadata"))
        ctx = CURRENT.get()
        self._notify(ctx, run, counts, price, tags)
        if not run.store:
            return
        await self.store.put(self._record(run, counts, price, ctx, tags))

    @staticmethod
    def _record(
        run: _Run,
        counts: UsageCounts,
        price: Price | None,
        ctx: RequestContext | None,
        tags: dict[str, str],
    ) -> StoredResponse:
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
            api_key_id=ctx.api_key_id if ctx is not None else None,
            tags=tags,
        )

    def _cost(self, run: _Run, counts: UsageCounts, created_at: int) -> Price | None:
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
        run: _Run,
        counts: UsageCounts,
        price: Price | None,
        tags: dict[str, str],
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
        ctx.metadata = tags
        error = response.get("error")
        if isinstance(error, dict):
            ctx.error = {**error, "type": "response.failed"}
        telemetry = self.telemetry
        if telemetry is not None and telemetry.capture_prompts:
            ctx.captured["instructions"] = response.get("instructions")
            ctx.captured["input"] = run.canon.input_items
        if telemetry is not None and telemetry.capture_outputs:
            ctx.captured["output"] = response.get("output")


def _tags(metadata: Any) -> dict[str, str]:
    """The request's `metadata` as spend tags (OpenAI allows 16 string pairs; anything else
    is not a tag)."""
    if not isinstance(metadata, dict):
        return {}
    return {str(k): str(v) for k, v in list(metadata.items())[:16] if isinstance(v, str | int)}


def _items(chain: Sequence[StoredResponse]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for record in chain:
        items.extend(record.input_items)
        items.extend(record.response.get("output") or [])
    return items


_AUTH_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key"})


class _CallSecrets:
    """What to mask for one upstream call: worked out only when an error message needs it,
    never on the path of a reply that succeeds."""

    __slots__ = ("_call", "_known", "_target", "_values")

    def __init__(self, call: UpstreamCall, target: Target, known: Sequence[str]) -> None:
        self._call, self._target, self._known = call, target, known
        self._values: tuple[str, ...] | None = None

    def __call__(self) -> tuple[str, ...]:
        if self._values is None:
            self._values = (*_call_secrets(self._call, self._target), *self._known)
        return self._values


def _call_secrets(call: UpstreamCall, target: Target) -> tuple[str, ...]:
    """The credentials this call carries: the target's, and what its auth headers hold
    (tokens fetched for this request only exist there). Short values would mask words."""
    values = {v for v in target.credentials.values() if isinstance(v, str)}
    for name, value in call.headers.items():
        if name.lower() in _AUTH_HEADERS:
            values.add(value.partition(" ")[2] if value.lower().startswith("bearer ") else value)
    return tuple(sorted((v for v in values if len(v) >= 8), key=len, reverse=True))


def _masked(
    ops: list[dict[str, Any]], secrets: Callable[[], Sequence[str]]
) -> list[dict[str, Any]]:
    """In-band error ops with their message and code masked (the builder prints both; every
    other op passes untouched)."""
    for op in ops:
        if op.get("op") == "error":
            for key in ("message", "code", "type"):
                value = op.get(key)
                if value is not None:
                    text = value if isinstance(value, str) else str(value)
                    op[key] = redact(text, secrets())
    return ops


def _mask_error(exc: UpstreamError, secrets: Sequence[str]) -> None:
    exc.message = redact(exc.message, secrets)
    if exc.code is not None:
        exc.code = redact(exc.code, secrets)
    exc.args = (exc.message,)


@lru_cache(maxsize=1024)
def _header_text(text: str) -> str:
    return quote(text, safe="/:._-@+=~!$&'()*,;")


def _reply_headers(run: _Run) -> dict[str, str]:
    # The model string is the client's own text: percent-encode what a header cannot carry
    # (non-ASCII, control characters) rather than fail the reply after it was stored.
    return {
        "x-turnout-deployment": _header_text(run.target.deployment or run.canon.model),
        "x-turnout-attempts": str(len(run.attempts)),
    }


def _entry(
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


def _release(router: Router, state: DeploymentState, builder: ResponseBuilder) -> None:
    """The upstream reply of `state` is over: count it out of in-flight, its tokens in tpm."""
    try:
        usage = builder._usage_obj()  # usage as fed so far (finish() may not have run yet)
        tokens = int(usage.get("total_tokens") or 0)
    except Exception:  # never let accounting break a reply
        tokens = 0
    router.finished(state, tokens)
