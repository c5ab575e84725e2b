"""uvicorn's HTTP protocols, refusing what they cannot parse with OpenAI's JSON error body.

uvicorn answers a request it cannot parse itself, before the app sees it, with a plain-text
`400 Invalid HTTP request received.`: the SDKs then fail to read the error. The commonest cause
is a URL over the parser's limit (`MAX_URL_BYTES` with httptools, whose URL parser keeps 16-bit
offsets; the request line and headers together within `MAX_HEAD_BYTES` with h11). These
subclasses send the same refusal as JSON, 414 for a URL too long, 431 for headers too large.
"""

from __future__ import annotations

import asyncio
import importlib.util
from http import HTTPStatus
from typing import Any

import orjson

from turnout.engine.errors import error_body, type_for_status

__all__ = ["MAX_HEAD_BYTES", "MAX_URL_BYTES", "protocol_class", "refusal", "refuse_httptools"]

# httptools.parse_url fails at 65536 bytes and more (offsets are uint16).
MAX_URL_BYTES = 65535
# h11's buffer for the request line plus headers (uvicorn's default is 16 KiB): the same order
# of URL as httptools takes, so the limit does not depend on which parser is installed.
MAX_HEAD_BYTES = 64 * 1024


def refusal(
    status: int, message: str, code: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A whole HTTP/1.1 response closing the connection, with OpenAI's error body."""
    body = orjson.dumps(error_body(message, type_for_status(status), None, code))
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode("ascii")]
    head.extend(name + b": " + value + b"\r\n" for name, value in default_headers)
    head.append(b"content-type: application/json\r\n")
    head.append(b"content-length: " + str(len(body)).encode("ascii") + b"\r\n")
    head.append(b"connection: close\r\n\r\n")
    return b"".join(head) + body


def _classify(url_too_long: bool, head_too_large: bool) -> tuple[int, str, str]:
    if url_too_long:
        return (
            414,
            f"The request URL is too long (at most {MAX_URL_BYTES} bytes).",
            "url_too_long",
        )
    if head_too_large:
        return (
            431,
            f"The request headers are too large (at most {MAX_HEAD_BYTES} bytes).",
            "headers_too_large",
        )
    return 400, "Invalid HTTP request received.", "invalid_http_request"


def _httptools() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class JsonHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            refuse_httptools(self)

    return JsonHttpToolsProtocol


def refuse_httptools(protocol: Any) -> None:
    """What uvicorn's httptools protocol sends for a request it cannot parse, as JSON (also
    used by the connection-limiting protocol, server/connections.py)."""
    status, message, code = _classify(len(protocol.url) > MAX_URL_BYTES, False)
    headers = list(protocol.server_state.default_headers)
    protocol.transport.write(refusal(status, message, code, headers))
    protocol.transport.close()


def _h11() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            pending: bytes = self.conn.trailing_data[0]
            too_large = len(pending) > MAX_HEAD_BYTES
            status, message, code = _classify(too_large and b"\n" not in pending, too_large)
            headers = list(self.server_state.default_headers)
            self.transport.write(refusal(status, message, code, headers))
            self.transport.close()

    return JsonH11Protocol


def protocol_class(name: str | None = None) -> type[asyncio.Protocol]:
    """The protocol for `name` (`httptools` or `h11`); by default httptools when installed."""
    if name is None:
        name = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return _httptools() if name == "httptools" else _h11()
