"""`turnout serve --workers N`: N processes serving one port.

The supervisor (the process `turnout serve` started) loads the config and the mappings once,
checks the port, then forks the workers: each inherits the loaded mappings (shared pages, no
second parse) and runs its own event loop, store connection, gateway and background leases
(its own owner id: server/leases.py). Each worker listens on its own socket bound to the same
address with `SO_REUSEPORT`, so the kernel spreads new connections evenly over the workers (one
shared listening socket lets whichever worker wakes first take most of them). The supervisor
keeps a bound, never-listening socket on the port: `--port 0` gets one real port for all, and a
port taken by another program fails before any worker starts.

The ready line is logged once, by the supervisor, when every worker listens. SIGTERM or SIGINT
to the supervisor is passed on to each worker as SIGTERM (uvicorn's graceful shutdown: open
connections drain, background responses are recorded as failed), and the supervisor exits when
they have. A worker that dies on its own is replaced (its background responses are failed by
another worker once their lease runs out); one that fails before it ever listened stops the
whole server instead, since its replacement would fail the same way.

Linux and macOS (fork, SO_REUSEPORT); the workers share nothing in memory: limits and cooldowns
are per worker unless the shared state says otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["Supervisor", "listen_socket"]

log = logging.getLogger("turnout")

# A worker that died this soon after it listened is restarted only after a pause.
RESTART_PAUSE_S = 1.0


def _address(host: str, port: int) -> tuple[int, tuple[object, ...]]:
    family, _type, _proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, address


def listen_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (listening unless `listen` is False)."""
    family, address = _address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(2048)
            sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# What a worker runs: given its listening socket and a callback to call once it listens;
# returns the process's exit status.
Serve = Callable[[socket.socket, Callable[[], None]], int]


class Supervisor:
    """Forks, watches and stops the workers (see the module docstring)."""

    def __init__(self, workers: int, host: str, port: int, serve: Serve) -> None:
        self.workers = workers
        self.host = host
        self.serve = serve
        # Holds the port (a real one for port 0) without taking connections.
        self._placeholder = listen_socket(host, port, listen=False)
        self.port: int = self._placeholder.getsockname()[1]
        self._children: dict[int, int] = {}  # pid -> its ready pipe (read end), -1 once ready
        self._supervisor = os.getpid()
        self._stopping = False

    def run(self, on_ready: Callable[[int], None]) -> int:
        """Start the workers, call `on_ready(port)` once all listen, supervise until a signal;
        the exit status."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for _ in range(self.workers):
                self._spawn()
            if not self._wait_ready():
                self._stop_all()
                return 3
            on_ready(self.port)
            return self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._placeholder.close()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._stopping = True
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _spawn(self) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read)
            code = 1
            try:
                code = self._worker(write)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(write)
        self._children[pid] = read

    def _worker(self, ready_pipe: int) -> int:
        _die_with(self._supervisor)
        self._placeholder.close()
        for fd in self._children.values():  # the other workers' pipes
            if fd >= 0:
                os.close(fd)
        self._children = {}
        # uvicorn re-raises the signal it handled once shut down: let that be a no-op here.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, f: None)
        sock = listen_socket(self.host, self.port)

        def ready() -> None:
            os.write(ready_pipe, b"1")
            os.close(ready_pipe)

        return self.serve(sock, ready)

    def _wait_ready(self) -> bool:
        """True once every worker said it listens; False when one exited first (or a signal
        came)."""
        while not self._stopping:
            waiting = [fd for fd in self._children.values() if fd >= 0]
            if not waiting:
                return True
            readable, _, _ = _select(waiting, 0.2)
            for fd in readable:
                pid = next(p for p, f in self._children.items() if f == fd)
                said = os.read(fd, 1)  # b"": the worker exited without listening
                os.close(fd)
                self._children[pid] = -1
                if not said:
                    return False
            if self._reap(restart=False):
                return False
        return False

    def _reap(self, *, restart: bool) -> bool:
        """Collect exited workers; True when one exited (replaced when `restart`)."""
        exited = False
        for pid in list(self._children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                continue
            exited = True
            fd = self._children.pop(pid)
            if fd >= 0:
                os.close(fd)
            if restart and not self._stopping:
                log.warning(
                    "worker %d exited (status %d): starting another",
                    pid,
                    os.waitstatus_to_exitcode(status),
                )
                time.sleep(RESTART_PAUSE_S)
                self._spawn()
        return exited

    def _supervise(self) -> int:
        while not self._stopping:
            time.sleep(0.2)
            self._reap(restart=True)
            # A replacement's ready pipe: nothing to wait for, it serves when it listens.
            for pid, fd in list(self._children.items()):
                if fd >= 0 and _select([fd], 0)[0]:
                    os.close(fd)
                    self._children[pid] = -1
        return self._stop_all()

    def _stop_all(self) -> int:
        self._on_signal(signal.SIGTERM, None)
        code = 0
        for pid, fd in list(self._children.items()):
            _, status = os.waitpid(pid, 0)
            if fd >= 0:
                os.close(fd)
            if os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM):
                code = 1
        self._children.clear()
        return code


def _die_with(supervisor: int) -> None:
    """Linux: the worker gets SIGTERM when the supervisor dies (even by kill -9), so no worker
    is left serving the port on its own."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != supervisor:  # it died before that took effect
        os._exit(1)


def _select(fds: list[int], timeout: float) -> tuple[list[int], list[int], list[int]]:
    try:
        return select.select(fds, [], [], timeout)
    except InterruptedError:  # a signal: the caller looks at its flags again
        return [], [], []
