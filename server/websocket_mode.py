"""WebSocket mode on `GET /v1/responses` (Open Responses 2026-04-24, `x-openresponses-websocket`).

A client opens a WebSocket on `/v1/responses` (the same `Authorization: Bearer` as HTTP when a
master key is configured: without it the upgrade is refused with the HTTP 401 JSON error, never
accepted) and sends `{"type": "response.create", ...create body...}` messages, the create fields
at the top level (`WebSocketResponseCreateEvent`; `stream_options` and `background` must not be
sent, nor `stream` other than `true`: OpenAI's Agents SDK puts `"stream": true` in every
`response.create`, and the socket streams anyway). Each one runs a turn through the very same
`Gateway.create` as a streamed `POST /v1/responses`, and each of its events leaves as one text
message: the same events in the same order with the same sequence numbers as the SSE stream (no
`[DONE]`). The SSE chunks are cut back into events at their `data:` lines, so the two cannot
disagree.

* `previous_response_id` chains as over HTTP, and also onto the socket's own `store: false`
  responses, kept in memory while the socket lives (server/socket_memory.py).
* A failure before the turn's stream starts (a bad message, a 400 from validation, an upstream
  error, a full store) is one `{"type": "error", "status", "error": {...}}` message
  (`WebSocketErrorEvent`), and the socket stays open for the next message.
* One turn at a time: a `response.create` while a turn runs is an error (409
  `turn_in_progress`); the running turn goes on.
* A client that leaves cancels the turn in flight exactly like an SSE client that leaves: the
  upstream is released at once and nothing is stored.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any, Protocol, cast

import anyio
import anyio.abc
import anyio.lowlevel
import orjson
from litestar import WebSocket, websocket

from turnout.engine.errors import RequestError, UpstreamError, error_body, type_for_status
from turnout.engine.nesting import MAX_DEPTH
from turnout.engine.sse import SSEDecoder
from turnout.server.access.auth import Authenticator
from turnout.server.pump import TERMINAL_EVENTS
from turnout.server.replies import JsonReply, StreamReply
from turnout.server.request_context import Caller
from turnout.server.socket_memory import SocketMemory
from turnout.server.store_health import StoreUnavailable
from turnout.server.telemetry import Telemetry

__all__ = [
    "DISALLOWED",
    "Creator",
    "Session",
    "error_message",
    "parse",
    "refuse",
    "responses_socket",
]

log = logging.getLogger("turnout.websocket")

# HTTP streaming fields a WebSocket `response.create` must not carry (WebSocketResponseCreateEvent).
DISALLOWED = ("stream", "stream_options", "background")
_INVALID_JSON = "The message could not be parsed: each message must be one JSON object."
_TOO_DEEP = f"The message is nested too deeply (at most {MAX_DEPTH} levels of objects and arrays)."


# Plain ASGI callables (what the session needs of Litestar's WebSocket, and what tests fake).
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]


class Creator(Protocol):
    """What a session needs of the gateway: `Gateway.create` with the socket's memory."""

    async def create(
        self, body: Any, caller: Caller = ..., *, memory: SocketMemory | None = None
    ) -> JsonReply | StreamReply: ...


def error_message(exc: Exception) -> dict[str, Any]:
    """`WebSocketErrorEvent`: the HTTP status the request would have had, OpenAI's error body."""
    if isinstance(exc, RequestError | UpstreamError | StoreUnavailable):
        status, message, code = exc.status, exc.message, exc.code
        type_ = exc.type or type_for_status(status)
        param = exc.param if isinstance(exc, RequestError) else None
    else:
        status, message, code = 500, "The server had an error while processing your request.", None
        type_, param = "server_error", None
    # The spec requires a code: the type stands in for errors that carry none.
    return {"type": "error", "status": status, **error_body(message, type_, param, code or type_)}


def parse(data: str | bytes) -> dict[str, Any]:
    """A client message as a create body (`type` dropped, `stream: true` added), or the
    RequestError the client is told."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if exc.msg.startswith("depth limit"):  # valid JSON past orjson's 1024 levels (routes.py)
            raise RequestError(400, _TOO_DEEP, code="nesting_too_deep") from None
        raise RequestError(400, _INVALID_JSON, code="invalid_json") from None
    if not isinstance(message, dict):
        raise RequestError(400, _INVALID_JSON, code="invalid_json")
    kind = message.get("type")
    if kind != "response.create":
        raise RequestError(
            400,
            f"Unknown message type {kind!r}: the only client message is 'response.create'."
            if kind is not None
            else 'The message has no \'type\': send {"type": "response.create", ...}.',
            param="type",
            code="unknown_message_type",
        )
    for name in DISALLOWED:
        # OpenAI's own Agents SDK sends `"stream": true` in every message (its WebSocket
        # transport, `OpenAIResponsesWSModel`): the value the socket implies is let through.
        if name in message and not (name == "stream" and message[name] is True):
            raise RequestError(
                400,
                f"'{name}' must not be sent in WebSocket mode"
                + (" (other than true)" if name == "stream" else "")
                + ": every turn is streamed as messages on the socket.",
                param=name,
                code="unsupported_parameter",
            )
    body = {k: v for k, v in message.items() if k != "type"}
    body["stream"] = True
    return body


class Session:
    """One socket: its messages in, one turn at a time, its events and errors out."""

    def __init__(
        self,
        gateway: Creator,
        send: Send,
        caller: Callable[[], Awaitable[Caller]],
        telemetry: Telemetry | None = None,
    ) -> None:
        # `caller` makes one Caller per turn (its own deadline).
        self.gateway = gateway
        self._send = send
        self.caller = caller
        self.telemetry = telemetry
        self.memory = SocketMemory()
        self.turning: object | None = None  # the running turn's token
        self.gone = False
        self._lock = anyio.Lock()
        self._group: anyio.abc.TaskGroup | None = None

    async def run(self, receive: Receive) -> None:
        """Read messages until the client leaves (then the turn in flight is cancelled)."""
        async with anyio.create_task_group() as group:
            self._group = group
            while not self.gone:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    break
                if kind == "websocket.receive":
                    text, raw = message.get("text"), message.get("bytes")
                    await self.handle(text if isinstance(text, str) else bytes(raw or b""))
            self.gone = True
            group.cancel_scope.cancel()

    async def handle(self, data: str | bytes) -> None:
        try:
            body = parse(data)
        except RequestError as exc:
            await self.send(error_message(exc))
            return
        if self.turning is not None:
            await self.send(error_message(_busy()))
            return
        assert self._group is not None, "handle runs inside run()"
        self.turning = token = object()
        self._group.start_soon(self.turn, body, token)

    @property
    def busy(self) -> bool:
        return self.turning is not None

    def _free(self, token: object) -> None:
        """The socket takes the next turn. Called before the turn's last message (terminal event
        or error) is sent, so a client answering it at once is never told a turn is running;
        the token keeps a finished turn from freeing the next one."""
        if self.turning is token:
            self.turning = None

    async def turn(self, body: dict[str, Any], token: object) -> None:
        try:
            await self._turn(body, token)
        except (RequestError, UpstreamError, StoreUnavailable) as exc:
            if isinstance(exc, UpstreamError):
                # Like errors.py: no headers or bodies in the log, they may echo credentials.
                log.warning("upstream error from %s: %s %s", exc.provider, exc.status, exc.code)
            self._free(token)
            await self.send(error_message(exc))
        except Exception as exc:
            log.exception("websocket turn failed")
            self._free(token)
            await self.send(error_message(exc))
        finally:
            self._free(token)

    async def _turn(self, body: dict[str, Any], token: object) -> None:
        telemetry, caller = self.telemetry, await self.caller()
        ctx = None
        if telemetry is not None:
            # One telemetry record per turn, as per HTTP request.
            model = body.get("model")
            ctx = telemetry.begin(
                stream=True, model=None if model is None else str(model), api_key_id=caller.key_id
            )
        try:
            reply = await self.gateway.create(body, caller, memory=self.memory)
        except Exception as exc:
            if telemetry is not None and ctx is not None:
                telemetry.finish(ctx, error=exc)
            raise
        except BaseException:
            if telemetry is not None and ctx is not None:
                telemetry.finish(ctx)
            raise
        if isinstance(reply, JsonReply):  # never: every socket turn is streamed
            raise RuntimeError("a WebSocket turn was answered without a stream")
        decoder = SSEDecoder()
        try:
            async with aclosing(cast(AsyncGenerator[bytes, None], reply.chunks)) as chunks:
                async for chunk in chunks:
                    if telemetry is not None and ctx is not None:
                        telemetry.mark_first_byte(ctx)
                    for event in decoder.feed(chunk):
                        if event.data == "[DONE]":
                            continue
                        if event.event in TERMINAL_EVENTS:
                            # Stored (and kept in memory) before it leaves (pump.stored_groups),
                            # and the upstream is released: the turn is over for the client.
                            self._free(token)
                        await self.send_text(event.data)
        finally:
            if telemetry is not None and ctx is not None:
                telemetry.finish(ctx)

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.send_text(orjson.dumps(message).decode())

    async def send_text(self, text: str) -> None:
        """One text message; a socket that is gone stops the session (the turn is cancelled,
        its upstream released)."""
        async with self._lock:
            if not self.gone:
                try:
                    await self._send({"type": "websocket.send", "text": text})
                    return
                except Exception:
                    self.gone = True
        if self._group is not None:
            self._group.cancel_scope.cancel()
        await anyio.lowlevel.checkpoint()  # raises the cancellation just asked for


def _busy() -> RequestError:
    return RequestError(
        409,
        "A response is already in progress on this socket: wait for its terminal event "
        "before sending the next 'response.create'.",
        param=None,
        code="turn_in_progress",
    )


def _header(scope: Mapping[str, Any], wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


async def refuse(scope: Mapping[str, Any], send: Send, exc: RequestError) -> None:
    """The upgrade answered with the HTTP error as JSON (the ASGI denial response), or, for a
    server without that extension, closed with 1008 (policy violation) before acceptance."""
    if "websocket.http.response" not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
        return
    body = orjson.dumps(
        error_body(exc.message, exc.type or type_for_status(exc.status), exc.param, exc.code)
    )
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "websocket.http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


@websocket("/v1/responses")
async def responses_socket(socket: WebSocket[Any, Any, Any]) -> None:
    """WebSocket mode; registered outside the guarded `/v1` router so a refused key is an HTTP
    401 on the upgrade (a guard's exception would close an unaccepted socket with a bare 4500).
    The key is checked again at each turn: one revoked or blocked meanwhile gets an error
    message for that turn, like an HTTP request would."""
    auth: Authenticator = socket.app.state.auth
    authorization = _header(socket.scope, b"authorization") or ""
    try:
        await auth.identify(authorization)
    except RequestError as exc:
        await refuse(socket.scope, cast(Send, socket.send), exc)
        return
    await socket.accept()
    state = socket.app.state
    gateway = state.gateway
    timeout_s = gateway.settings.router.timeout_s
    request_id = _header(socket.scope, b"x-request-id")

    async def caller() -> Caller:
        identity = await auth.identify(authorization)
        # Per turn: the deadline bounds that turn's upstream attempts from its own start.
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        return identity.caller(request_id, deadline)

    send, receive = cast(Send, socket.send), cast(Receive, socket.receive)
    session = Session(gateway, send, caller, getattr(state, "telemetry", None))
    await session.run(receive)
    if socket.connection_state != "disconnect":
        # Ended by a send that failed: the socket is most likely gone already.
        with contextlib.suppress(Exception):
            await socket.close()
