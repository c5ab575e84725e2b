"""The Redis connection of `state: redis://…`: one client (a pool) per process, short timeouts,
the scripts registered once, and fire-and-forget writes that are logged when they fail.

redis-py is imported here only, and this module only when a `state:` is configured: the
default install does not need it (`pip install 'turnout[redis]'`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from turnout.server.state.base import STATE_TIMEOUT_S, parse_state_url
from turnout.server.state.scripts import ADMIT, SETTLE

__all__ = ["RedisState"]

log = logging.getLogger("turnout.state")


class RedisState:
    def __init__(self, url: str, *, timeout_s: float = STATE_TIMEOUT_S) -> None:
        import redis.asyncio as aioredis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        parsed = parse_state_url(url)
        self.prefix = parsed.prefix
        # No retries: a request would wait for each; the caller answers 503 at once instead.
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            parsed.url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self.admit_script = self.client.register_script(ADMIT)
        self.settle_script = self.client.register_script(SETTLE)
        self._pending: set[asyncio.Task[Any]] = set()
        self.failed_writes = 0  # fire-and-forget writes that failed (logged each time)

    def key(self, *parts: str | int) -> str:
        return self.prefix + ":".join(str(p) for p in parts)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    def spawn(self, work: Awaitable[Any], what: str) -> None:
        """Run `work` without awaiting it on the response path; a failure is logged and
        counted, never silent."""
        task = asyncio.ensure_future(work)
        self._pending.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._pending.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self.failed_writes += 1
                log.warning("shared state: %s failed: %r", what, task.exception())

        task.add_done_callback(done)

    async def drain(self) -> None:
        """Wait for the fire-and-forget writes still running (tests, shutdown)."""
        while self._pending:
            await asyncio.wait(list(self._pending))

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=2.0)
        await self.client.aclose()
