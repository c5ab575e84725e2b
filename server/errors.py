"""Every failure leaves the gateway as an OpenAI error body.

Shape (OpenAI `ErrorResponse`, all four keys always present, `param`/`code` nullable)::

    {"error": {"message": "...", "type": "invalid_request_error", "param": null, "code": null}}

Exception → status:

    RequestError                → its own status (client mistake, 4xx), its `headers` added
                                  (a virtual key's `x-ratelimit-*`), `Retry-After` for 429
    UpstreamError               → its own status; `Retry-After` passed on for 429/503
    InternalError               → 500 `server_error` naming what failed (Turnout's own defect)
    litestar HTTPException      → its status (404 route, 405 method, 413 body, 400 validation);
                                  a body cut off by `server.read_timeout_s`: the 408 already sent
    anything else               → 500 with a generic message; traceback logged server-side only

The SDKs turn `error.code/param/type` into exception attributes, so the body never carries a
stack trace, a header or a key: messages come from our own exceptions or fixed strings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from turnout.engine.errors import (
    InternalError,
    RequestError,
    UpstreamError,
    error_body,
    type_for_status,
)
from turnout.server.store_health import StoreUnavailable
from turnout.server.trail import error_trail_headers

__all__ = [
    "READ_TIMED_OUT",
    "error_body",
    "error_bytes",
    "error_response",
    "exception_handlers",
    "type_for_status",
]

log = logging.getLogger("turnout.errors")

# Litestar's own HTTP exceptions carry no OpenAI `code`; give the common ones a stable one so
# clients can branch on it.
_CODE_BY_STATUS: dict[int, str] = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}

_GENERIC_500 = "The server had an error while processing your request."

# Scope key: the 408 body server/connections.py sent when this request's body was too slow.
READ_TIMED_OUT = "turnout.read_timed_out"


def error_bytes(
    message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    return orjson.dumps(error_body(message, type_, param, code))


def error_response(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    body = error_bytes(message, type_=type_ or type_for_status(status), param=param, code=code)
    return Response(
        content=body,
        status_code=status,
        media_type=MediaType.JSON,
        headers=dict(headers) if headers else None,
    )


def _retry_headers(status: int, retry_after: float | None) -> dict[str, str]:
    # Only 429/503 mean "come back later"; the SDKs honour both headers (ms is more precise).
    if retry_after is None or status not in (429, 503) or retry_after < 0:
        return {}
    return {
        "retry-after": str(math.ceil(retry_after)),
        "retry-after-ms": str(int(retry_after * 1000)),
    }


def _on_request_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, RequestError)
    headers = _retry_headers(exc.status, exc.retry_after)
    if exc.headers:
        headers = {**exc.headers, **headers}
    return error_response(
        exc.status,
        exc.message,
        type_=exc.type or None,
        param=exc.param,
        code=exc.code,
        headers=headers,
    )


def _on_upstream_error(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, UpstreamError)
    # Upstream failures are logged without headers or bodies: both may echo credentials.
    log.warning("upstream error from %s: %s %s", exc.provider, exc.status, exc.code)
    headers = {**_retry_headers(exc.status, exc.retry_after), **error_trail_headers(exc.attempts)}
    return error_response(
        exc.status, exc.message, type_=exc.type or None, code=exc.code, headers=headers
    )


def _on_store_unavailable(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, StoreUnavailable)
    # The upstream answered (and was paid): the store failed. Logged once by StoreHealth.
    return error_response(exc.status, exc.message, type_=exc.type, code=exc.code)


def _on_validation(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, ValidationException)
    param: str | None = None
    message = str(exc.detail)
    extra = exc.extra
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        first = extra[0]
        param = str(first["key"]) if first.get("key") is not None else None
        if first.get("message"):
            message = f"Invalid value for '{param}': {first['message']}" if param else message
    return error_response(400, message, param=param, code="invalid_value" if param else None)


def _on_http(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    timed_out = request.scope.get(READ_TIMED_OUT)
    if isinstance(timed_out, bytes):
        # Litestar's "client disconnected" after the read deadline: not a server error. This
        # reply is never sent (the connection already has its 408); the access log and the
        # telemetry record see the same 408.
        return Response(content=timed_out, status_code=408, media_type=MediaType.JSON)
    if status >= 500:
        # Litestar 5xx details can describe internals; keep them in the log.
        log.error("internal HTTP error %s: %s", status, exc.detail)
        return error_response(status, _GENERIC_500)
    if isinstance(exc, MethodNotAllowedException):
        message = "Method not allowed for this path."
    elif isinstance(exc, NotFoundException):
        message = "Not found."
    elif isinstance(exc, RequestEntityTooLarge):
        message = "Request body is too large."
    else:
        message = str(exc.detail)
    headers = {"allow": exc.headers["allow"]} if exc.headers and "allow" in exc.headers else None
    return error_response(status, message, code=_CODE_BY_STATUS.get(status), headers=headers)


def _on_internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, InternalError)
    # Our own defect: the cause goes to the server log, the client gets what failed (its
    # message names the mapping, never a value).
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, exc.message, type_=exc.type, code=exc.code)


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    # The traceback goes to the server log (redacted by the logging filter); the client only
    # learns that something failed.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, _GENERIC_500)


Handler = Callable[[Request[Any, Any, Any], Exception], Response[bytes]]


def exception_handlers() -> dict[type[Exception] | int, Handler]:
    """Handlers for `Litestar(exception_handlers=...)`; Litestar picks the most specific class."""
    return {
        RequestError: _on_request_error,
        UpstreamError: _on_upstream_error,
        InternalError: _on_internal_error,
        StoreUnavailable: _on_store_unavailable,
        ValidationException: _on_validation,
        HTTPException: _on_http,
        Exception: _on_unexpected,
    }
