"""uvicorn's own refusals (before the app runs) in OpenAI's JSON shape, with both parsers.

The end-to-end gateway runs httptools when it is installed (tests/test_wrong_shapes.py checks
it there); here each protocol class serves a bare app in-process, h11 included.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import uvicorn

from tests import oas
from tests.conftest import free_port
from turnout.server.http_protocol import MAX_HEAD_BYTES, MAX_URL_BYTES, protocol_class


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@contextmanager
def _serving(parser: str) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        _app,
        host="127.0.0.1",
        port=port,
        http=protocol_class(parser),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        log_config=None,
        log_level="error",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield port
    server.should_exit = True
    thread.join(10)


@pytest.fixture(params=["httptools", "h11"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    with _serving(request.param) as port:
        yield port


def _send(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _json_error(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers["content-type"] == "application/json"
    error = orjson.loads(body)
    oas.validate_error_body(error)
    return dict(error["error"])


@pytest.mark.parametrize("size", [MAX_URL_BYTES + 10, 1_000_000])
def test_a_url_over_the_limit_is_a_json_414(size: int) -> None:
    url = "/v1/responses/" + "a" * size
    with _serving("httptools") as port:
        status, headers, body = _send(port, f"GET {url} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    assert status == 414
    assert _json_error(headers, body)["code"] == "url_too_long"


def test_h11_refuses_a_request_line_over_its_buffer_with_a_json_414() -> None:
    # h11 measures what it holds unparsed, so the request line is sent unfinished: all of it is
    # read before the refusal (closing on unread bytes would reset the connection).
    head = b"GET /" + b"a" * (MAX_HEAD_BYTES + 1000)
    with _serving("h11") as port:
        status, headers, body = _send(port, head)
    assert status == 414
    assert _json_error(headers, body)["code"] == "url_too_long"


def test_a_url_within_the_limit_reaches_the_app(port: int) -> None:
    url = "/" + "a" * (MAX_URL_BYTES - 1000)
    status, _, _ = _send(
        port, f"GET {url} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
    )
    assert status == 204


def test_garbage_is_a_json_400(port: int) -> None:
    status, headers, body = _send(port, b"NOT HTTP AT ALL\x00\r\n\r\n")
    assert status == 400
    assert _json_error(headers, body)["code"] == "invalid_http_request"
