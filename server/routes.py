"""HTTP routes: `/v1/responses*`, `/v1/conversations*` (optionally behind the master key) and
`/health`.

Handlers stay thin: parse what HTTP carries (raw body, query strings), call the `Gateway` or the
store, and shape the reply. Query parameters are read by hand so that both `include=` and the
`include[]=` form the Python SDK sends are accepted, and bad values get OpenAI-shaped 400s.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, cast

import anyio
import orjson
from litestar import Request, Router, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import MultiDict
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from litestar.types import ASGIApp

from turnout.engine.errors import RequestError
from turnout.engine.nesting import MAX_DEPTH
from turnout.server.access.auth import OPEN, Authenticator, Identity
from turnout.server.access.isolation import spend_scope
from turnout.server.config import ModelAlias
from turnout.server.conversations import item_page_json
from turnout.server.gateway import Gateway
from turnout.server.history import UNFINISHED
from turnout.server.replies import (
    BodyReply,
    EventStream,
    JsonReply,
    StreamReply,
    json_reply,
    replay_sse,
)
from turnout.server.request_context import Caller
from turnout.server.stores.base import Order, SpendQuery, StoredResponse, UnknownCursorError
from turnout.server.telemetry import CONTENT_TYPE_LATEST, CURRENT, RequestContext, Telemetry

__all__ = [
    "SSE_HEADERS",
    "authenticate",
    "count_input_tokens",
    "format_cost",
    "health",
    "health_deployments",
    "metrics",
    "v1_router",
]

SSE_HEADERS = {
    "cache-control": "no-cache",
    # Reverse proxies (nginx) would otherwise buffer the whole stream.
    "x-accel-buffering": "no",
}
_INVALID_JSON = (
    "We could not parse the JSON body of your request. The body must be valid JSON "
    "(Content-Type: application/json)."
)

_TOO_DEEP = (
    f"The JSON body is nested too deeply (at most {MAX_DEPTH} levels of objects and arrays)."
)


def _gateway(request: Request[Any, Any, Any]) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> BodyReply:
    return json_reply(data, status, headers)


def _not_found(response_id: str) -> RequestError:
    return RequestError(404, f"Response with id '{response_id}' not found.", code="not_found")


# Where the guard leaves the bearer's identity for the handler (one lookup per request).
IDENTITY = "turnout.identity"


def authenticate(app: ASGIApp) -> ASGIApp:
    """Middleware for `/v1`: who the bearer is (server/access/auth.py), or a 401, before any
    handler runs. A middleware, not a guard: Litestar copies the route handler for every guard
    call (~17 µs a request, bench/README.md); a middleware is built once per route."""

    async def identified(scope: Any, receive: Any, send: Any) -> None:
        auth: Authenticator = scope["litestar_app"].state.auth
        scope[IDENTITY] = await auth.identify(_authorization(scope))
        await app(scope, receive, send)

    return identified


async def require_master_key(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard for operator endpoints: with `master_key` configured, only the master key may
    call them (a virtual key is a 403)."""
    auth: Authenticator = connection.app.state.auth
    identity = await auth.identify(_authorization(connection.scope))
    if identity.role == "key":
        raise RequestError(403, "This endpoint needs the master key.", code="master_key_required")


def _flag(query: MultiDict[str], name: str) -> bool:
    value = query.get(name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0", ""):
        return False
    raise RequestError(
        400, f"Invalid value for '{name}': expected a boolean.", param=name, code="invalid_value"
    )


def _int(query: MultiDict[str], name: str, default: int | None, low: int, high: int) -> int | None:
    value = query.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise RequestError(
            400,
            f"Invalid value for '{name}': expected an integer between {low} and {high}.",
            param=name,
            code="invalid_value",
        )
    return number


def _caller(scope: Any, deadline_s: float | None = None) -> Caller:
    """Who is calling: the identity the `authenticate` middleware found, and the request's own
    `x-request-id`; `deadline_s` from now bounds the upstream attempts."""
    identity: Identity = scope.get(IDENTITY, OPEN)
    request_id = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            request_id = bytes(value).decode("latin-1")
            break
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    return identity.caller(request_id, deadline)


async def _record(gateway: Gateway, response_id: str, caller: Caller) -> StoredResponse:
    record = await gateway.retrieve(response_id, caller)
    if record is None:
        raise _not_found(response_id)
    return record


async def _body(request: Request[Any, Any, Any], *, optional: bool = False) -> Any:
    """The raw body parsed with orjson: faster than Litestar's decoding, and malformed JSON
    gets OpenAI's 400 instead of a framework error. `optional`: an empty body is None."""
    raw = await request.body()
    if optional and not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("depth limit"):  # valid JSON, past orjson's 1024 levels
            raise RequestError(400, _TOO_DEEP, code="nesting_too_deep") from None
        raise RequestError(400, _INVALID_JSON, code="invalid_json") from None


@post("/responses/input_tokens", status_code=200)
async def count_input_tokens(request: Request[Any, Any, Any]) -> ASGIApp:
    """The input tokens a create body would cost, counted by its provider
    (server/count_tokens.py). A static path: it is matched before `/responses/{response_id}`."""
    gateway = _gateway(request)
    counted = await gateway.count_tokens(await _body(request), _caller(request.scope))
    return _json(counted)


@post("/responses", status_code=200)
async def create_response(request: Request[Any, Any, Any]) -> ASGIApp:
    gateway = _gateway(request)
    return await _answer(request, await _body(request), gateway.create)


@post("/responses/compact", status_code=200)
async def compact_response(request: Request[Any, Any, Any]) -> ASGIApp:
    """A fixed path, matched before `/responses/{response_id}` (server/compaction.py)."""
    gateway = _gateway(request)
    return await _answer(request, await _body(request), gateway.compactor.compact)


async def _answer(
    request: Request[Any, Any, Any],
    body: Any,
    create: Callable[[Any, Caller], Awaitable[JsonReply | StreamReply]],
) -> ASGIApp:
    """Run a create-like call inside the request's telemetry record and shape its reply."""
    gateway = _gateway(request)
    caller = _caller(request.scope, gateway.settings.router.timeout_s)
    telemetry: Telemetry | None = getattr(request.app.state, "telemetry", None)
    if telemetry is None:
        reply = await create(body, caller)
    else:
        # One telemetry record per request, emitted once the reply is over (or failed).
        ctx = telemetry.begin(
            stream=isinstance(body, dict) and body.get("stream") is True,
            model=str(body.get("model")) if isinstance(body, dict) else None,
            api_key_id=caller.key_id,
        )
        try:
            reply = await create(body, caller)
        except Exception as exc:
            telemetry.finish(ctx, error=exc)
            raise
        except BaseException:
            telemetry.finish(ctx)
            raise
    if isinstance(reply, JsonReply):
        headers = reply.headers
        if telemetry is not None and not reply.detached:
            if ctx.cost is not None:
                headers = {**headers, "x-turnout-cost": format_cost(ctx.cost)}
            telemetry.finish(ctx)
        return _json(reply.response, headers=headers)
    chunks = reply.chunks
    if telemetry is not None and not reply.detached:
        # A background response's record is closed by its task, not by this stream.
        chunks = _watched(telemetry, ctx, chunks)
    return EventStream(chunks, {**SSE_HEADERS, **reply.headers})


def _authorization(scope: Any) -> str:
    """The Authorization header straight from the ASGI scope: building Litestar's Headers
    object for one lookup was the largest single cost on the request path."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value).decode("latin-1")
    return ""


def format_cost(cost: float) -> str:
    """US dollars, plain decimal notation (never 1e-05), trailing zeros dropped."""
    return f"{cost:.10f}".rstrip("0").rstrip(".") or "0"


async def _watched(
    telemetry: Telemetry, ctx: RequestContext, chunks: AsyncIterator[bytes]
) -> AsyncGenerator[bytes, None]:
    """The SSE chunks, timing the first byte and closing the request's telemetry after the
    last one (or when the client goes away). The cost of a stream is only known at its end,
    so it is not a header: it is in the terminal event's `usage.cost`, the store and the logs."""
    CURRENT.set(ctx)  # the stream may run in another task than the handler did
    try:
        async for chunk in chunks:
            telemetry.mark_first_byte(ctx)
            yield chunk
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await close()
        telemetry.finish(ctx)


@get("/responses/{response_id:str}")
async def get_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> ASGIApp:
    # `include` / `include[]` are accepted and ignored: every stored field is always returned.
    query = request.query_params
    stream = _flag(query, "stream")
    starting_after = _int(query, "starting_after", None, -1, 2**62)
    gateway = _gateway(request)
    caller = _caller(request.scope)
    live = gateway.live(response_id, caller)
    if live is not None:  # a background response at work: its live state, its live events
        if not stream:
            return _json(live.response)
        return EventStream(gateway.follow_sse(live, starting_after, caller), SSE_HEADERS)
    record = await _record(gateway, response_id, caller)
    if not stream:
        return _json(record.response)
    if record.status in UNFINISHED and record.events is not None:
        # At work in another process: its progress is followed through the store.
        return EventStream(gateway.follow_stored(record, starting_after), SSE_HEADERS)
    if record.events is None:
        raise RequestError(
            400, f"Response '{response_id}' has no stored events to replay.", param="stream"
        )
    return EventStream(
        replay_sse(record.events, starting_after, done_marker=gateway.done_marker), SSE_HEADERS
    )


@delete("/responses/{response_id:str}", status_code=200)
async def delete_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> ASGIApp:
    if not await _gateway(request).delete(response_id, _caller(request.scope)):
        raise _not_found(response_id)
    return _json({"id": response_id, "object": "response", "deleted": True})


@post("/responses/{response_id:str}/cancel", status_code=200)
async def cancel_response(request: Request[Any, Any, Any], response_id: FromPath[str]) -> ASGIApp:
    # Only background responses can be cancelled (OpenAI's rule). One still at work stops and
    # is stored "cancelled"; a finished one is returned as it is (cancel is idempotent).
    gateway = _gateway(request)
    caller = _caller(request.scope)
    cancelled = await gateway.cancel(response_id, caller)
    if cancelled is not None:
        return _json(cancelled)
    record = await _record(gateway, response_id, caller)
    if record.response.get("background") is True:
        return _json(record.response)
    raise RequestError(
        400,
        "Only responses created with background: true can be cancelled.",
        param=None,
        code="invalid_request",
    )


def _paging(query: MultiDict[str]) -> tuple[int, Order, str | None]:
    """`limit` (1-100, default 20), `order` (default desc) and `after` of a list call."""
    limit = _int(query, "limit", 20, 1, 100) or 20
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise RequestError(
            400, "Invalid value for 'order': expected 'asc' or 'desc'.", param="order",
            code="invalid_value",
        )  # fmt: skip
    return limit, "asc" if order == "asc" else "desc", query.get("after") or None


@get("/responses/{response_id:str}/input_items")
async def list_input_items(request: Request[Any, Any, Any], response_id: FromPath[str]) -> ASGIApp:
    limit, order, after = _paging(request.query_params)
    try:
        page = await _gateway(request).input_items(
            response_id, _caller(request.scope), limit=limit, order=order, after=after
        )
    except UnknownCursorError as exc:
        raise RequestError(400, str(exc), param="after", code="invalid_value") from None
    if page is None:
        raise _not_found(response_id)
    return _json(item_page_json(page))


# -- /v1/conversations: the concern is server/conversations.py; `include` is accepted and
# ignored (every stored field of an item is always returned).


@post("/conversations", status_code=200)
async def create_conversation(request: Request[Any, Any, Any]) -> ASGIApp:
    body = await _body(request, optional=True)
    gateway = _gateway(request)
    return _json(await gateway.conversations.create(body, _caller(request.scope)))


@get("/conversations/{conversation_id:str}")
async def retrieve_conversation(
    request: Request[Any, Any, Any], conversation_id: FromPath[str]
) -> ASGIApp:
    conversations = _gateway(request).conversations
    return _json(await conversations.retrieve(conversation_id, _caller(request.scope)))


@post("/conversations/{conversation_id:str}", status_code=200)
async def update_conversation(
    request: Request[Any, Any, Any], conversation_id: FromPath[str]
) -> ASGIApp:
    body = await _body(request, optional=True)
    conversations = _gateway(request).conversations
    return _json(await conversations.update(conversation_id, body, _caller(request.scope)))


@delete("/conversations/{conversation_id:str}", status_code=200)
async def delete_conversation(
    request: Request[Any, Any, Any], conversation_id: FromPath[str]
) -> ASGIApp:
    conversations = _gateway(request).conversations
    return _json(await conversations.delete(conversation_id, _caller(request.scope)))


@post("/conversations/{conversation_id:str}/items", status_code=200)
async def create_conversation_items(
    request: Request[Any, Any, Any], conversation_id: FromPath[str]
) -> ASGIApp:
    body = await _body(request, optional=True)
    conversations = _gateway(request).conversations
    return _json(await conversations.add_items(conversation_id, body, _caller(request.scope)))


@get("/conversations/{conversation_id:str}/items")
async def list_conversation_items(
    request: Request[Any, Any, Any], conversation_id: FromPath[str]
) -> ASGIApp:
    limit, order, after = _paging(request.query_params)
    conversations = _gateway(request).conversations
    try:
        page = await conversations.list_items(
            conversation_id, _caller(request.scope), limit=limit, order=order, after=after
        )
    except UnknownCursorError as exc:
        raise RequestError(400, str(exc), param="after", code="invalid_value") from None
    return _json(item_page_json(page))


@get("/conversations/{conversation_id:str}/items/{item_id:str}")
async def retrieve_conversation_item(
    request: Request[Any, Any, Any], conversation_id: FromPath[str], item_id: FromPath[str]
) -> ASGIApp:
    conversations = _gateway(request).conversations
    return _json(await conversations.item(conversation_id, item_id, _caller(request.scope)))


@delete("/conversations/{conversation_id:str}/items/{item_id:str}", status_code=200)
async def delete_conversation_item(
    request: Request[Any, Any, Any], conversation_id: FromPath[str], item_id: FromPath[str]
) -> ASGIApp:
    conversations = _gateway(request).conversations
    caller = _caller(request.scope)
    return _json(await conversations.delete_item(conversation_id, item_id, caller))


def _model(model_id: str, owned_by: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def _alias_owner(alias: ModelAlias) -> str:
    """The providers behind an alias, in deployment order: what a model picker shows."""
    return ", ".join(dict.fromkeys(d.provider for d in alias.deployments))


def _owner(gateway: Gateway, name: str) -> str:
    """Who serves a listed name: the provider(s) behind an alias, else the name's provider
    part (`turnout` for a pattern whose provider part is itself a glob)."""
    alias = gateway.settings.models.get(name)
    if alias is not None:
        return _alias_owner(alias)
    provider = name.partition("/")[0]
    return provider if provider in gateway.registry.providers else "turnout"


async def _models(gateway: Gateway, caller: Caller) -> list[dict[str, Any]]:
    """The names a model picker should offer the caller (server/access/models.py): the
    config's aliases, each owned by the provider(s) behind it, or with no alias one
    `provider/*` pattern per mapping, and the patterns the gateway or the caller's key allows;
    only those the caller may use."""
    created = gateway.router.created
    names = await gateway.model_access.listing(caller, gateway.registry.providers)
    return [_model(name, _owner(gateway, name), created) for name in names]


@get("/models")
async def list_models(request: Request[Any, Any, Any]) -> ASGIApp:
    """OpenAI's model list: what the caller may use."""
    gateway = _gateway(request)
    return _json({"object": "list", "data": await _models(gateway, _caller(request.scope))})


@get("/models/{model_id:path}")
async def retrieve_model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> ASGIApp:
    gateway = _gateway(request)
    name = model_id.lstrip("/")
    created = gateway.router.created
    provider, sep, rest = name.partition("/")
    exists = name in gateway.settings.models or bool(
        sep and rest and provider in gateway.registry.providers
    )
    # OpenAI's 404 for a model the caller may not use says no more than for an unknown one.
    if exists and await gateway.model_access.allows(_caller(request.scope), name):
        return _json(_model(name, _owner(gateway, name), created))
    raise RequestError(
        404,
        f"The model '{name}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


@get("/health/deployments", guards=[require_master_key])
async def health_deployments(request: Request[Any, Any, Any]) -> ASGIApp:
    """Each alias deployment's live state: healthy or cooling down, in flight, latency, usage."""
    gateway = _gateway(request)
    return _json(
        {"strategy": gateway.settings.router.strategy, "deployments": gateway.router.snapshot()}
    )


@get("/spend")
async def spend(request: Request[Any, Any, Any]) -> ASGIApp:
    """Totals from the store: `group_by=model|deployment|provider|api_key|team|metadata:<key>`,
    `start`/`end` (unix seconds, `[start, end)`), optional `model`, `api_key_id` and `team`
    filters. A virtual key sees its own spend, or its team's (server/access/isolation.py)."""
    query = request.query_params
    group_by = query.get("group_by") or "model"
    start = _int(query, "start", None, 0, 2**62)
    end = _int(query, "end", None, 0, 2**62)
    api_key_id, team = spend_scope(
        _caller(request.scope), query.get("api_key_id") or None, query.get("team") or None
    )
    try:
        spec = SpendQuery(
            group_by=group_by, start=start, end=end, model=query.get("model"),
            api_key_id=api_key_id, team=team,
        )  # fmt: skip
    except ValueError as exc:
        raise RequestError(400, str(exc), param="group_by", code="invalid_value") from None
    report = await _gateway(request).store.spend(spec)
    return _json(report.as_json())


@get("/metrics", guards=[require_master_key])
async def metrics(request: Request[Any, Any, Any]) -> ASGIApp:
    """Prometheus text exposition; on when `logging:` lists `{type: prometheus}`."""
    telemetry: Telemetry | None = getattr(request.app.state, "telemetry", None)
    if telemetry is None or not telemetry.metrics_enabled:
        raise RequestError(
            404, "Metrics are off: add {type: prometheus} to `logging` in the config.",
            code="not_found",
        )  # fmt: skip
    # CONTENT_TYPE_LATEST carries its charset already (Litestar's Response added a second one).
    return BodyReply(telemetry.metrics.render(), content_type=CONTENT_TYPE_LATEST.encode())


@get("/health")
async def health(request: Request[Any, Any, Any]) -> ASGIApp:
    """Liveness plus the store: reachable (a lookup of an id that never exists) and taking
    writes (failing since a write failed, until a probe write succeeds: store_health.py), and
    with `state:` configured whether Redis answers a PING (`"state": "ok"|"unreachable"`)."""
    gateway = _gateway(request)
    # With `state: redis://…`: whether Redis answers (keys with limits get 503s when not).
    state: dict[str, str] = {}
    if gateway.state is not None:
        state["state"] = "ok" if await gateway.state.ping() else "unreachable"
    try:
        await gateway.store.get("resp_health_probe")
    except Exception:
        return _json({"status": "degraded", "store": "unreachable", **state}, status=503)
    if await gateway.store_health.check(gateway.store) is not None:
        return _json({"status": "degraded", "store": "failing", **state}, status=503)
    if state.get("state") == "unreachable":
        return _json({"status": "degraded", "store": "ok", **state}, status=503)
    # Which process answered: with `turnout serve --workers N`, each worker its own.
    worker = {"x-turnout-worker": str(os.getpid())}
    return _json({"status": "ok", "store": "ok", **state}, headers=worker)


def v1_router() -> Router:
    return Router(
        path="/v1",
        route_handlers=[
            create_response,
            count_input_tokens,
            compact_response,
            get_response,
            delete_response,
            cancel_response,
            list_input_items,
            create_conversation,
            retrieve_conversation,
            update_conversation,
            delete_conversation,
            create_conversation_items,
            list_conversation_items,
            retrieve_conversation_item,
            delete_conversation_item,
            list_models,
            retrieve_model,
            spend,
        ],
        middleware=[authenticate],
    )
