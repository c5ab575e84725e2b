"""Slow and greedy clients against a real `turnout serve` (server/connections.py).

Raw sockets, because the point is what a misbehaving client does on the wire: headers or a body
sent too slowly (`server.read_timeout_s`), more connections than `limits.max_connections`, and
the `limits.max_background` 429's `Retry-After`.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import Gateway, gateway_env, start_gateway, stop_gateway
from tests.simulators import Hang, Simulator
from turnout.engine.errors import ConfigError
from turnout.server.config import load_config

READ_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 3


def _start(folder: Path, sim: Simulator, yaml: str) -> Gateway:
    config = folder / "turnout.yaml"
    config.write_text(f"store: sqlite:///{folder / 'store.db'}\n{yaml}", encoding="utf-8")
    return start_gateway(config, gateway_env(sim), folder / "gateway.log")


@pytest.fixture(scope="module")
def slow_gw(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = _start(
        tmp_path_factory.mktemp("slow"),
        provider_sim_session,
        f"server: {{read_timeout_s: {READ_TIMEOUT_S}, access_log: true}}\n"
        "limits: {max_background: 1}\n",
    )
    yield gw
    stop_gateway(gw)


def _connect(gw: Gateway) -> socket.socket:
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (5 s at most)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _reply(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 reply with a content-length, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a reply: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


HEALTH = b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n"


def test_a_connection_that_sends_nothing_is_closed_after_the_read_timeout(
    slow_gw: Gateway,
) -> None:
    with _connect(slow_gw) as sock:
        started = time.monotonic()
        assert _until_closed(sock) == b""
        assert READ_TIMEOUT_S * 0.8 <= time.monotonic() - started < READ_TIMEOUT_S + 2


def test_half_sent_headers_are_closed_while_other_requests_are_served(slow_gw: Gateway) -> None:
    with _connect(slow_gw) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/responses HTTP/1.1\r\nhost: t\r\ncontent-type: app")
        # Meanwhile the gateway serves everybody else.
        assert httpx.get(f"{slow_gw.url}/health").json()["status"] == "ok"
        assert _until_closed(sock) == b""  # closed, nothing said: there was no request
        assert READ_TIMEOUT_S * 0.8 <= time.monotonic() - started < READ_TIMEOUT_S + 2


def test_headers_trickled_a_byte_at_a_time_do_not_extend_the_deadline(slow_gw: Gateway) -> None:
    """Slowloris: each byte arrives well within the timeout, the whole never does."""
    request = b"GET /health HTTP/1.1\r\nhost: t\r\nx-padding: " + b"a" * 100
    with _connect(slow_gw) as sock:
        started = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for byte in request:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)  # 100 bytes: 5 s if nothing cut it
        assert time.monotonic() - started < READ_TIMEOUT_S + 2


def test_a_body_slower_than_the_read_timeout_gets_a_408_json_then_the_close(
    slow_gw: Gateway,
) -> None:
    with _connect(slow_gw) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /v1/responses HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"model": "anthropic/claude-sonnet-4-5", '
        )
        assert httpx.get(f"{slow_gw.url}/health").status_code == 200
        status, headers, body = _parse(_until_closed(sock))
        elapsed = time.monotonic() - started
    assert READ_TIMEOUT_S * 0.8 <= elapsed < READ_TIMEOUT_S + 2
    assert status == 408
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = orjson.loads(body)["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
    assert "server.read_timeout_s" in error["message"] and set(error) == {
        "message",
        "type",
        "param",
        "code",
    }
    # The app saw the same 408 (the access log), and no server error was logged for it.
    deadline = time.monotonic() + 5
    while "POST /v1/responses 408" not in slow_gw.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    logs = slow_gw.logs()
    assert "POST /v1/responses 408" in logs
    assert "internal HTTP error" not in logs and "ERROR" not in logs


def test_a_body_sent_in_pieces_within_the_timeout_is_read_whole(slow_gw: Gateway) -> None:
    body = b'{"model": "anthropic/claude-sonnet-4-5", "input": "hi"'  # invalid JSON: a 400
    with _connect(slow_gw) as sock:
        sock.sendall(
            b"POST /v1/responses HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body)
        )
        for piece in (body[:10], body[10:30], body[30:]):
            time.sleep(READ_TIMEOUT_S / 5)
            sock.sendall(piece)
        status, _, reply = _reply(sock)
    assert status == 400 and orjson.loads(reply)["error"]["code"] == "invalid_json"


def test_each_request_on_a_kept_alive_connection_has_its_own_deadline(slow_gw: Gateway) -> None:
    with _connect(slow_gw) as sock:
        for _ in range(3):  # together longer than one timeout: each request is on time
            time.sleep(READ_TIMEOUT_S * 0.6)
            sock.sendall(HEALTH)
            assert _reply(sock)[0] == 200
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # the next one stalls
        started = time.monotonic()
        assert _until_closed(sock) == b""
        assert READ_TIMEOUT_S * 0.8 <= time.monotonic() - started < READ_TIMEOUT_S + 2


def test_headers_over_64_kib_get_a_431_json_and_smaller_ones_are_served(
    slow_gw: Gateway,
) -> None:
    with _connect(slow_gw) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 32 * 1024 + b"\r\n\r\n")
        assert _reply(sock)[0] == 200
    with _connect(slow_gw) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):  # cut off mid-send
            sock.sendall(b"GET /health HTTP/1.1\r\nhost: t\r\nx-big: " + b"a" * 80 * 1024)
        status, headers, body = _parse(_until_closed(sock))
    assert status == 431 and headers["connection"] == "close"
    assert orjson.loads(body)["error"]["code"] == "request_header_fields_too_large"


def test_the_background_cap_429_carries_retry_after(slow_gw: Gateway, sim: Simulator) -> None:
    sim.script("anthropic", Hang())
    body = {"model": "anthropic/claude-sonnet-4-5", "input": "hi", "background": True}
    first = httpx.post(f"{slow_gw.url}/v1/responses", json=body)
    assert first.status_code == 200 and first.json()["status"] == "queued"
    try:
        refused = httpx.post(f"{slow_gw.url}/v1/responses", json=body)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "5"
        assert refused.headers["retry-after-ms"] == "5000"
        error = refused.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["param"] == "background"
    finally:
        httpx.post(f"{slow_gw.url}/v1/responses/{first.json()['id']}/cancel")


def test_connections_past_the_cap_get_a_json_503_and_the_open_ones_keep_working(
    provider_sim_session: Simulator, tmp_path: Path
) -> None:
    gw = _start(
        tmp_path,
        provider_sim_session,
        f"server: {{read_timeout_s: 5}}\nlimits: {{max_connections: {MAX_CONNECTIONS}}}\n",
    )
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):  # kept alive after their first request
            sock = _connect(gw)
            sock.sendall(HEALTH)
            assert _reply(sock)[0] == 200
            held.append(sock)
        for _ in range(3):  # every one past the cap is refused, clearly
            with _connect(gw) as extra:
                extra.sendall(HEALTH)
                status, headers, body = _parse(_until_closed(extra))
            assert status == 503
            assert headers["retry-after"] == "1" and headers["connection"] == "close"
            assert headers["content-type"] == "application/json"
            error = orjson.loads(body)["error"]
            assert error["code"] == "too_many_connections"
            assert "limits.max_connections" in error["message"]
        for sock in held:  # the admitted ones are still served
            sock.sendall(HEALTH)
            assert _reply(sock)[0] == 200
        held.pop().close()
        # A freed place is taken by the next connection (once the server saw the close).
        deadline = time.monotonic() + 5
        while True:
            with _connect(gw) as sock:
                sock.sendall(HEALTH)
                status = _reply(sock)[0]  # a 503 too has its content-length
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 200
        # One warning for the burst of refusals, not one per connection.
        assert gw.logs().count("limits.max_connections (3) open") == 1
    finally:
        for sock in held:
            sock.close()
        stop_gateway(gw)


def test_the_limits_are_config_keys_with_defaults(tmp_path: Path) -> None:
    defaults = load_config(None, {})
    assert defaults.server.read_timeout_s == 30.0
    assert defaults.limits.max_connections == 4096
    config = tmp_path / "turnout.yaml"
    config.write_text("server: {read_timeout_s: 2.5}\nlimits: {max_connections: null}\n")
    settings = load_config(str(config), {})
    assert settings.server.read_timeout_s == 2.5
    assert settings.limits.max_connections is None  # no cap


@pytest.mark.parametrize(
    ("yaml", "problem"),
    [
        ("server:\n  read_timeout_s: 0\n", ":3:3: server.read_timeout_s: min value is 0.1"),
        (
            "server:\n  read_timeout_s: soon\n",
            ":3:3: server.read_timeout_s: must be of number type, got string",
        ),
        ("limits:\n  max_connections: 0\n", ":3:3: limits.max_connections: min value is 1"),
        (
            "limits:\n  max_connections: 1.5\n",
            ":3:3: limits.max_connections: must be of integer type, got number",
        ),
    ],
)
def test_a_bad_limit_names_file_line_and_key(yaml: str, problem: str, tmp_path: Path) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text(f"store: memory://\n{yaml}")
    with pytest.raises(ConfigError) as raised:
        load_config(str(config), {})
    assert [str(p) for p in raised.value.problems] == [f"{config}{problem}"]
