"""An opt-in access log: one line per HTTP request, once its reply is over.

`turnout serve --access-log` (or config `server.access_log: true`) wraps the app in `AccessLog`;
off, nothing wraps it and the request path pays nothing.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from turnout.server.telemetry import CURRENT

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog"]

# The response id in the first body chunk: a Response object's `"id"` (JSON) or the one of
# `response.created` (SSE). orjson writes no spaces.
_RESPONSE_ID = re.compile(rb'"id":"(resp_[A-Za-z0-9_-]{1,200})"')


class AccessLog:
    """ASGI wrapper logging one line per HTTP request, once its reply is over:

        POST /v1/responses 200 model=claude deployment=anthropic/claude-sonnet-4-5
        duration_ms=412 response_id=resp_…

    (one line; `-` for what is unknown). The status and the deployment come from the reply's
    start message (`x-turnout-deployment`); the model the client asked for and the response id
    from the request's telemetry context (`telemetry.CURRENT`, filled by the gateway), else the
    id from `/v1/responses/{id}…` paths or the first body chunk (a background create's reply).
    The time is from the request's arrival to the reply's end (the last SSE chunk).

    Only `turnout serve` installs it, and only when asked: off, nothing wraps the app."""

    LOGGER = "turnout.access"

    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.log = logger or logging.getLogger(self.LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind: str = scope["type"]
        if kind != "http":  # lifespan, websocket: passed through untouched
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen: dict[str, Any] = {"status": None, "deployment": None, "id": None, "body": False}

        async def watched(message: Message) -> None:
            event: Any = message
            kind = event["type"]
            if kind == "http.response.start":
                seen["status"] = event["status"]
                for name, value in event.get("headers") or ():
                    if name == b"x-turnout-deployment":
                        seen["deployment"] = bytes(value).decode("latin-1")
            elif kind == "http.response.body" and not seen["body"]:
                body = event.get("body") or b""
                if body:
                    seen["body"] = True
                    found = _RESPONSE_ID.search(body)
                    if found is not None:
                        seen["id"] = found.group(1).decode("ascii")
            await send(message)

        token = CURRENT.set(None)  # this request's context only, never a previous one's
        try:
            await self.app(scope, receive, watched)
        except Exception:
            if seen["status"] is None:
                seen["status"] = 500  # the server answers 500 for an app that raised
            raise
        finally:
            ctx = CURRENT.get()
            CURRENT.reset(token)
            self._line(scope, seen, ctx, time.perf_counter() - started)

    def _line(self, scope: Scope, seen: dict[str, Any], ctx: Any, elapsed: float) -> None:
        path = str(scope.get("path") or "")
        response_id = (ctx.response_id if ctx is not None else None) or seen["id"]
        if response_id is None and path.startswith("/v1/responses/"):
            response_id = path.split("/")[3] or None
        deployment = seen["deployment"] or (ctx.deployment if ctx is not None else None)
        self.log.info(
            "%s %s %s model=%s deployment=%s duration_ms=%d response_id=%s",
            scope.get("method", "-"),
            _safe(path),
            seen["status"] if seen["status"] is not None else "-",
            _safe(ctx.model) if ctx is not None and ctx.model else "-",
            _safe(deployment) if deployment else "-",
            round(elapsed * 1000),
            _safe(response_id) if response_id else "-",
        )


def _safe(text: str) -> str:
    """Client text as one log token: no spaces, control characters or non-ASCII."""
    return quote(text, safe="/:._-@+=~!$&'()*,;%")
