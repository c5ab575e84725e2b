"""A minimal HTTP/1.1 server on raw asyncio streams.

Why not a framework: the simulators must control the wire exactly — flush every chunk as its
own `Transfer-Encoding: chunked` frame, cut a connection in the middle of a body, or never
answer at all. Raw asyncio gives that with no start-up cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["HttpRequest", "HttpResponse", "HttpServer"]

_MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str  # percent-decoded path, without the query
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    target: str = ""  # the raw request-target as sent (percent-encoding kept): SigV4 signs it


@dataclass
class HttpResponse:
    """What a handler answers.

    `body` bytes are sent with Content-Length; `chunks` (an async iterator) are sent with chunked
    encoding, one frame and one flush per item. `cut` closes the socket right after the chunks
    without the terminating zero-length chunk (a dropped upstream connection). `content_length`
    overrides the announced length (to cut a fixed-length body short).
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None
    cut: bool = False
    content_length: int | None = None


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class _BadRequest(Exception):
    pass


def _reason(status: int) -> str:
    if status == 529:  # Anthropic's non-standard "overloaded"
        return "Site Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class HttpServer:
    """Serves `handler` on a loopback socket; tracks connections so `close()` ends them all."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.connections = 0  # accepted so far: lets tests prove keep-alive reuse

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._on_connection, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        sock = writer.get_extra_info("socket")
        if sock is not None:  # each SSE frame must leave at once, not wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Handle one request; False when the connection must end."""
        try:
            request, keep_alive = await _read_request(reader)
        except _BadRequest as exc:
            body = str(exc).encode()
            await _write_head(writer, 400, [("content-type", "text/plain")], len(body), False)
            writer.write(body)
            await writer.drain()
            return False
        if request is None:
            return False
        try:
            response = await self._handler(request)
        except Exception:
            # A simulator bug must surface in the test, not as a silently dropped connection.
            body = traceback.format_exc().encode()
            response = HttpResponse(500, [("content-type", "text/plain")], body)
        return await _write_response(writer, response, keep_alive)


async def _read_request(reader: asyncio.StreamReader) -> tuple[HttpRequest | None, bool]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _BadRequest("truncated request head") from exc
        return None, False
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest("request head too large") from exc
    if len(head) > _MAX_HEAD:
        raise _BadRequest("request head too large")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError as exc:
        raise _BadRequest("malformed request line") from exc
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest("malformed header line")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    split = urlsplit(target)
    request = HttpRequest(
        method=method.upper(),
        path=unquote(split.path),
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers=headers,
        body=body,
        target=target,
    )
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
    return request, keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _write_head(
    writer: asyncio.StreamWriter,
    status: int,
    headers: list[tuple[str, str]],
    length: int | None,
    keep_alive: bool,
) -> None:
    out = [f"HTTP/1.1 {status} {_reason(status)}"]
    out += [f"{k}: {v}" for k, v in headers]
    out.append("transfer-encoding: chunked" if length is None else f"content-length: {length}")
    out.append("connection: keep-alive" if keep_alive else "connection: close")
    writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


async def _write_response(
    writer: asyncio.StreamWriter, response: HttpResponse, keep_alive: bool
) -> bool:
    keep_alive = keep_alive and not response.cut
    headers = _without_framing(response.headers)
    if response.chunks is None:
        length = len(response.body) if response.content_length is None else response.content_length
        await _write_head(writer, response.status, headers, length, keep_alive)
        writer.write(response.body)
        await writer.drain()
        return keep_alive
    await _write_head(writer, response.status, headers, None, keep_alive)
    async for chunk in response.chunks:
        if chunk:  # a zero-length frame would end the body early
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
    if response.cut:
        return False
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return keep_alive


def _without_framing(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # Framing headers are ours to set: a replayed recording must not announce its old length.
    banned = {"content-length", "transfer-encoding", "connection", "content-encoding"}
    return [(k, v) for k, v in headers if k.lower() not in banned]
