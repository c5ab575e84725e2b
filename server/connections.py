"""Connection limits: slow clients (`server.read_timeout_s`), too many (`limits.max_connections`).

uvicorn bounds an idle keep-alive connection (`timeout_keep_alive`) but nothing else: a client
that connects and never sends, or sends its headers or body a byte at a time (slowloris), holds a
connection forever; and its `limit_concurrency` answers plain text and counts tasks too. So the
HTTP protocol is uvicorn's httptools one with three additions, all at the connection layer:

* **read deadline**: a request must arrive in full (headers and body) within `read_timeout_s` of
  its first byte (the first request of a connection: of the connection's opening). One
  `call_at` timer per connection, armed only while a request is incomplete after a read, so a
  request that arrives in one read (the usual case) costs no timer at all. When it fires:
  headers not complete → the connection is closed, nothing sent; headers complete and no reply
  started → a 408 OpenAI error body (`code: request_timeout`) with `connection: close`, and the
  app sees the client leave (errors.py records it as that 408); a reply already started → closed.
* **connection cap**: past `max_connections` open connections a new one is answered, once its
  headers are in, with a 503 OpenAI error body (`code: too_many_connections`), `Retry-After`,
  `connection: close`, and never reaches the app. Refused connections do not count.
* **header size**: a request line and headers over 64 KiB get a 431 OpenAI error body and the
  close (uvicorn would keep growing them in memory).
* **lingering close**: a 408, 431 or 503 is followed by a half-close, and what the client still
  sends is read and dropped for a moment: closing with unread bytes would send a reset that can
  destroy the reply before the client reads it.
* **WebSocket upgrades** (server/websocket_mode.py): uvicorn hands the connection to its
  WebSocket protocol (`ws_protocol_class`) once a request's headers ask for the upgrade. The
  read deadline is disarmed then (the socket's own ping/pong keeps it honest), and the
  connection keeps counting against `max_connections` until the WebSocket closes: the upgraded
  protocol (`ws_protocol_class(limits)`) takes the count over.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from turnout.server.errors import READ_TIMED_OUT, error_bytes
from turnout.server.http_protocol import refuse_httptools

__all__ = [
    "ConnectionLimits",
    "CountedWebSocketProtocol",
    "LimitedProtocol",
    "protocol_class",
    "raise_file_limit",
    "ws_protocol_class",
]

log = logging.getLogger("turnout.connections")

# How long a refused or timed-out connection is drained before it is closed regardless.
LINGER_S = 2.0
# A request line and headers larger than this get a 431 (a refused connection's: its 503).
MAX_HEAD_BYTES = 64 * 1024
# Open connections turn over within milliseconds to seconds: a short wait is the right hint.
CONNECTIONS_RETRY_AFTER_S = 1
WARN_EVERY_S = 10.0


@dataclass
class ConnectionLimits:
    """The limits and the count of admitted connections, shared by every connection."""

    read_timeout_s: float
    max_connections: int | None = None
    open: int = 0
    refused: int = 0  # since the last warning
    warned_at: float = float("-inf")

    def admit(self) -> bool:
        if self.max_connections is not None and self.open >= self.max_connections:
            return False
        self.open += 1
        return True

    def refusal_warning(self, now: float) -> str | None:
        """A warning for the log at most every `WARN_EVERY_S`: a flood is one line, not one
        per connection."""
        self.refused += 1
        if now - self.warned_at < WARN_EVERY_S:
            return None
        count, self.refused, self.warned_at = self.refused, 0, now
        return (
            f"refused {count} connection{'s' if count != 1 else ''}: "
            f"limits.max_connections ({self.max_connections}) open"
        )


def _reply(
    status: int, body: bytes, default_headers: list[tuple[bytes, bytes]], extra: bytes
) -> bytes:
    head = [STATUS_LINE[status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/json\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\n",
        extra,
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(head)


def _timeout_body(read_timeout_s: float) -> bytes:
    return error_bytes(
        f"The request was not received in full within {read_timeout_s:g} s "
        "(server.read_timeout_s).",
        type_="invalid_request_error",
        code="request_timeout",
    )


def _refusal(max_connections: int | None) -> bytes:
    return error_bytes(
        f"Too many open connections ({max_connections}, limits.max_connections): retry shortly.",
        type_="server_error",
        code="too_many_connections",
    )


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the read deadline, the cap and the lingering close."""

    limits: ConnectionLimits  # set on the subclass protocol_class makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0  # loop time the incomplete request (or the connection) began
        self._incomplete = True  # a connection starts waiting for its first request
        self._headers_done = False
        self._head_bytes = 0  # bytes received while the current request's headers are incomplete
        self._admitted = False
        self._refused_head: bytearray | None = None  # a refused connection's bytes so far
        self._draining = False
        self._upgraded = False  # handed over to the WebSocket protocol

    def send_400_response(self, msg: str) -> None:
        # A request uvicorn's parser refuses (a URL over its limit): OpenAI JSON, not text.
        refuse_httptools(self)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._admitted = self.limits.admit()
        if not self._admitted:
            self._refused_head = bytearray()
        self._started = self.loop.time()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted:
            self._admitted = False
            self.limits.open -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return
        if self._refused_head is not None:
            self._refuse(data)
            return
        super().data_received(data)
        if not self._incomplete or self._upgraded or self.transport.is_closing():
            return
        if not self._headers_done:
            # uvicorn keeps the URL and headers in memory with no size limit of its own.
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._too_large()
                return
        if self._timer is None:
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._timer is None:  # else the connection's own deadline still runs
            self._started = self.loop.time()
        self._incomplete = True
        self._headers_done = False
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._headers_done = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._incomplete = False
        self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # The request is complete (a WebSocket handshake has no body): no read deadline, and
        # the connection's count passes to the WebSocket protocol, whose connection_lost is
        # the one the transport calls from now on.
        self._upgraded = True
        self._disarm()
        if self._admitted:
            self._admitted = False
            self.limits.open -= 1
        super().handle_websocket_upgrade()

    def _arm(self) -> None:
        self._timer = self.loop.call_at(
            self._started + self.limits.read_timeout_s, self._read_timed_out
        )

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _read_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # closed meanwhile, or handed over (an upgrade)
        cycle = self.cycle
        answerable = (
            self._headers_done
            and cycle is not None
            and not cycle.response_started
            and not self.pipeline  # a queued request: an earlier reply may still be going out
        )
        if not answerable:
            self.transport.close()
            return
        body = _timeout_body(self.limits.read_timeout_s)
        self.transport.write(_reply(408, body, self.server_state.default_headers, b""))
        scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
        scope[READ_TIMED_OUT] = body  # errors.py records the app's view as this same 408
        # The app, waiting for the rest of the body, gets http.disconnect; its reply is dropped.
        cycle.disconnected = True
        cycle.message_event.set()
        self._drain()

    def _refuse(self, data: bytes) -> None:
        head = self._refused_head
        assert head is not None
        head += data
        if b"\r\n\r\n" not in head and len(head) <= MAX_HEAD_BYTES:
            return
        self._refused_head = None
        self._disarm()
        warning = self.limits.refusal_warning(self.loop.time())
        if warning:
            log.warning("%s", warning)
        retry = (
            f"retry-after: {CONNECTIONS_RETRY_AFTER_S}\r\n"
            f"retry-after-ms: {CONNECTIONS_RETRY_AFTER_S * 1000}\r\n"
        ).encode()
        body = _refusal(self.limits.max_connections)
        self.transport.write(_reply(503, body, self.server_state.default_headers, retry))
        self._drain()

    def _too_large(self) -> None:
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an earlier reply is still going out: no room for ours
            return
        body = error_bytes(
            f"The request line and headers are larger than {MAX_HEAD_BYTES} bytes.",
            type_="invalid_request_error",
            code="request_header_fields_too_large",
        )
        self.transport.write(_reply(431, body, self.server_state.default_headers, b""))
        self._drain()

    def _drain(self) -> None:
        """Half-close after the reply; read and drop the rest until the client closes, or
        `LINGER_S` passes (eof_received returning None then closes the transport)."""
        self._draining = True
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._timer = self.loop.call_later(LINGER_S, self.transport.close)


def protocol_class(limits: ConnectionLimits) -> type[LimitedProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` bound to ``limits`` (uvicorn builds one
    instance per connection and passes only its own arguments)."""
    return type("TurnoutHttpProtocol", (LimitedProtocol,), {"limits": limits})


class CountedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (websockets, sans-I/O) counting its connection as open
    against `limits.max_connections` while it lives (an upgraded HTTP connection)."""

    limits: ConnectionLimits  # set on the subclass ws_protocol_class makes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.limits.open += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.limits.open -= 1
        super().connection_lost(exc)


def ws_protocol_class(limits: ConnectionLimits) -> type[CountedWebSocketProtocol]:
    """A WebSocket protocol class for `uvicorn.Config(ws=...)` sharing ``limits`` with
    `protocol_class`."""
    return type("TurnoutWebSocketProtocol", (CountedWebSocketProtocol,), {"limits": limits})


def raise_file_limit(max_connections: int | None) -> str | None:
    """Raise the soft open-file limit towards what ``max_connections`` needs (each in-flight
    request holds a client and an upstream connection, plus the store and logs); a warning
    when the hard limit is lower. Many systems start processes at a soft limit of 1024, which
    would make accept() fail long before the cap answers its clear 503."""
    if max_connections is None:
        return None
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise
        return None
    need = 2 * max_connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft >= need:
        return None
    return (
        f"limits.max_connections: {max_connections} connections may need {need} open files, "
        f"but this process may open {soft} (raise `ulimit -n`, or lower the cap)"
    )
