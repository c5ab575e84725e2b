"""HTTP routes: `/v1/responses*` (optionally behind the master key) and `/health`.

Handlers stay thin: parse what HTTP carries (raw body, query strings), call the `Gateway` or the
store, and shape the reply. Query parameters are read by hand so that both `include=` and the
`include[]=` form the Python SDK sends are accepted, and bad values get OpenAI-shaped 400s.
"""

from __future__ import annotations

import hmac
from typing import Any, cast

import orjson
from litestar import Request, Response, Router, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import MultiDict
from litestar.enums import MediaType
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from litestar.response import Stream

from engine.errors import RequestError
from server.gateway import Gateway, JsonReply, replay_sse
from server.stores.base import StoredResponse, UnknownCursorError

__all__ = ["SSE_HEADERS", "health", "v1_router"]

SSE_HEADERS = {
    "cache-control": "no-cache",
    # Reverse proxies (nginx) would otherwise buffer the whole stream.
    "x-accel-buffering": "no",
}
_INVALID_JSON = (
    "We could not parse the JSON body of your request. The body must be valid JSON "
    "(Content-Type: application/json)."
)


def _gateway(request: Request[Any, Any, Any]) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


def _json(data: Any, status: int = 200) -> Response[bytes]:
    return Response(content=orjson.dumps(data), status_code=status, media_type=MediaType.JSON)


def _not_found(response_id: str) -> RequestError:
    return RequestError(404, f"Response with id '{response_id}' not found.", code="not_found")


async def require_master_key(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard for `/v1`: with `master_key` configured, `Authorization: Bearer <key>` is required."""
    expected: bytes | None = connection.app.state.master_key
    if expected is None:
        return
    scheme, _sep, token = connection.headers.get("authorization", "").partition(" ")
    # Constant-time compare so the key cannot be guessed byte by byte from timings.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise RequestError(
            401,
            "Incorrect API key provided. Send 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )


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


async def _record(request: Request[Any, Any, Any], response_id: str) -> StoredResponse:
    record = await _gateway(request).store.get(response_id)
    if record is None or record.deleted:
        raise _not_found(response_id)
    return record


@post("/responses", status_code=200)
async def create_response(request: Request[Any, Any, Any]) -> Response[Any]:
    # The raw body parsed with orjson: faster than Litestar's decoding, and malformed JSON gets
    # OpenAI's 400 instead of a framework error.
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError(400, _INVALID_JSON, code="invalid_json") from None
    reply = await _gateway(request).create(body)
    if isinstance(reply, JsonReply):
        return _json(reply.response)
    return Stream(reply.chunks, media_type="text/event-stream", headers=SSE_HEADERS)


@get("/responses/{response_id:str}")
async def get_response(
    request: Request[Any, Any, Any], response_id: FromPath[str]
) -> Response[Any]:
    # `include` / `include[]` are accepted and ignored: every stored field is always returned.
    query = request.query_params
    stream = _flag(query, "stream")
    starting_after = _int(query, "starting_after", None, -1, 2**62)
    record = await _record(request, response_id)
    if not stream:
        return _json(record.response)
    if record.events is None:
        raise RequestError(
            400, f"Response '{response_id}' has no stored events to replay.", param="stream"
        )
    gateway = _gateway(request)
    return Stream(
        replay_sse(record.events, starting_after, done_marker=gateway.done_marker),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


@delete("/responses/{response_id:str}", status_code=200)
async def delete_response(
    request: Request[Any, Any, Any], response_id: FromPath[str]
) -> Response[bytes]:
    if not await _gateway(request).store.delete(response_id):
        raise _not_found(response_id)
    return _json({"id": response_id, "object": "response", "deleted": True})


@post("/responses/{response_id:str}/cancel", status_code=200)
async def cancel_response(
    request: Request[Any, Any, Any], response_id: FromPath[str]
) -> Response[bytes]:
    # Only background responses can be cancelled (OpenAI's rule), and Turnout answers every
    # response before its create call returns: a known id is a 400, an unknown one a 404.
    if await _gateway(request).store.get(response_id) is None:
        raise _not_found(response_id)
    raise RequestError(
        400,
        "Only responses created with background: true can be cancelled.",
        param=None,
        code="invalid_request",
    )


@get("/responses/{response_id:str}/input_items")
async def list_input_items(
    request: Request[Any, Any, Any], response_id: FromPath[str]
) -> Response[bytes]:
    query = request.query_params
    limit = _int(query, "limit", 20, 1, 100) or 20
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise RequestError(
            400, "Invalid value for 'order': expected 'asc' or 'desc'.", param="order",
            code="invalid_value",
        )  # fmt: skip
    after = query.get("after") or None
    try:
        page = await _gateway(request).store.list_input_items(
            response_id, limit=limit, order="asc" if order == "asc" else "desc", after=after
        )
    except UnknownCursorError as exc:
        raise RequestError(400, str(exc), param="after", code="invalid_value") from None
    if page is None:
        raise _not_found(response_id)
    return _json(
        {
            "object": "list",
            "data": page.data,
            "first_id": page.first_id,
            "last_id": page.last_id,
            "has_more": page.has_more,
        }
    )


@get("/health")
async def health(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Liveness plus store reachability (a lookup of an id that never exists)."""
    try:
        await _gateway(request).store.get("resp_health_probe")
    except Exception:
        return _json({"status": "degraded", "store": "unreachable"}, status=503)
    return _json({"status": "ok", "store": "ok"})


def v1_router(*, guarded: bool = True) -> Router:
    # Without a master key there is nothing to check: no guard, no per-request call at all.
    return Router(
        path="/v1",
        route_handlers=[
            create_response,
            get_response,
            delete_response,
            cancel_response,
            list_input_items,
        ],
        guards=[require_master_key] if guarded else [],
    )
