"""The Redis the shared-state tests run against (TURNOUT_TEST_REDIS_URL, default
redis://127.0.0.1:6379/0, as .ci/services checks): each test gets its own key prefix
(`turnout-test:<hex>:`, passed in the state URL as `?prefix=`) and its keys are deleted
afterwards, so tests never see each other's state and may share one database. A Redis that
does not answer fails the test with a message saying how to start one (never a skip)."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import urllib.parse
from collections.abc import Iterator

import pytest

__all__ = ["REDIS_URL", "closed_redis_url", "redis_prefix", "require_redis", "state_url"]

REDIS_URL = os.environ.get("TURNOUT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        parts = urllib.parse.urlsplit(REDIS_URL)
        pytest.fail(
            f"Redis does not answer at {parts.hostname}:{parts.port or 6379} ({exc!r}): start "
            "it (`service redis-server start` or `redis-server --daemonize yes`) or point "
            "TURNOUT_TEST_REDIS_URL at one",
            pytrace=False,
        )
    finally:
        client.close()


def state_url(prefix: str) -> str:
    sep = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{sep}prefix={prefix}"


def cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    require_redis()
    prefix = f"turnout-test:{secrets.token_hex(6)}:"
    yield prefix
    cleanup(prefix)


def closed_redis_url() -> str:
    """A redis:// URL where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


class RedisProxy:
    """A TCP relay in front of the test Redis, in a thread: `stop()` closes the listener and
    every relayed connection, so a gateway pointed at it sees Redis go away."""

    def __init__(self) -> None:
        import threading

        parts = urllib.parse.urlsplit(REDIS_URL)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._db = parts.path or "/0"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, prefix: str) -> str:
        return f"redis://127.0.0.1:{self.port}{self._db}?prefix={prefix}"

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                if self._stopped:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            sockets, self._sockets = self._sockets, []
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
