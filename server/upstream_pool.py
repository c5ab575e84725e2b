"""How many upstream connections may be open at once, and how long a request waits for one.

Every upstream call holds one connection of the shared pool for as long as its reply lasts: a
stream holds it for the whole answer, tens of seconds for a real model. The HTTP client's default
(100 connections in all) queued the 101st concurrent request silently behind the others. Here the
pool is sized for thousands of concurrent streams (`limits.upstream_connections` in total,
`limits.upstream_connections_per_host` to any one host), and waiting for a free connection is
bounded (`limits.upstream_wait_s`) and visible: past the bound the client gets a 503
`upstream_busy` with `Retry-After`, and `/metrics` counts waits and time-outs and shows the
connections in use.

The slots are counted here rather than left to the HTTP client's own pool so that waiting is
measured and bounded apart from connecting (aiohttp counts both in one timeout); the client's pool
is given the same limits, so it never queues on its own. A free slot costs two semaphore acquires
that do not suspend.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from turnout.engine.errors import UpstreamError

__all__ = ["UPSTREAM_BUSY", "PoolLimits", "Slot", "UpstreamSlots"]

UPSTREAM_BUSY = "upstream_busy"


@dataclass(frozen=True)
class PoolLimits:
    total: int = 4096
    per_host: int = 1024
    wait_s: float = 10.0


class Slot:
    """One held connection slot; `release()` is idempotent (called when the reply closes, and
    again by a finalizer should a reply never be closed)."""

    __slots__ = ("_host", "_pool")

    def __init__(self, pool: UpstreamSlots | None, host: asyncio.Semaphore | None) -> None:
        self._pool = pool
        self._host = host

    def release(self) -> None:
        pool, host = self._pool, self._host
        if pool is None or host is None:
            return
        self._pool = self._host = None
        host.release()
        pool.release_total()


class UpstreamSlots:
    """The process's upstream connection slots (see the module docstring)."""

    def __init__(self, limits: PoolLimits | None = None) -> None:
        self.limits = limits or PoolLimits()
        self._total = asyncio.Semaphore(self.limits.total)
        # One per upstream host:port; the hosts come from the mappings and the config.
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self.in_use = 0
        self.waits = 0  # requests that found no free slot at once
        self.timeouts = 0  # ... and gave up after `wait_s`
        self.wait_seconds = 0.0

    def release_total(self) -> None:
        self.in_use -= 1
        self._total.release()

    async def acquire(self, host: str, provider: str) -> Slot:
        per_host = self._hosts.get(host)
        if per_host is None:
            per_host = self._hosts[host] = asyncio.Semaphore(self.limits.per_host)
        if not per_host.locked() and not self._total.locked():
            await per_host.acquire()  # neither suspends: both have a free slot
            await self._total.acquire()
        else:
            await self._wait(per_host, host, provider)
        self.in_use += 1
        return Slot(self, per_host)

    async def _wait(self, per_host: asyncio.Semaphore, host: str, provider: str) -> None:
        self.waits += 1
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.limits.wait_s):
                await per_host.acquire()
                try:
                    await self._total.acquire()
                except BaseException:
                    per_host.release()
                    raise
        except TimeoutError:
            self.timeouts += 1
            raise self._busy(host, provider) from None
        finally:
            self.wait_seconds += time.monotonic() - started

    def _busy(self, host: str, provider: str) -> UpstreamError:
        limits = self.limits
        per_host = self._hosts[host]
        where = f"{limits.per_host} to {host}" if per_host.locked() else f"{limits.total} in all"
        return UpstreamError(
            503,
            f"{provider}: every upstream connection the gateway may open ({where}) stayed busy "
            f"for {limits.wait_s:g} s; retry shortly, or raise limits.upstream_connections.",
            code=UPSTREAM_BUSY,
            type="server_error",
            retry_after=1.0,
            provider=provider,
        )
