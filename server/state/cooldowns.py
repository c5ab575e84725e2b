"""Deployment cooldowns shared by replicas (`state: redis://…`).

A pick must cost nothing, so the router keeps deciding from its own in-process state; this
mirror connects that state to Redis:

* when a replica puts a deployment into cooldown (`Router.on_cooldown`), it writes
  `cool:<alias>#<i>` with the cooldown's length as its expiry (fire-and-forget);
* every `every_s` (250 ms) each replica reads every deployment's remaining cooldown (one
  pipelined round trip of PTTLs, off the request path) and applies the longer of its own and
  the shared one.

So a deployment cooled down on replica A is skipped by replica B within `every_s` (plus one
round trip). Failure counts stay per replica: each replica trips a deployment on the failures
it saw itself (`allowed_fails`), and the cooldown it decides then applies everywhere.
Redis unreachable: the router goes on with its own state (cooldowns are then per replica
again) and a warning is logged once per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from turnout.server.router import DeploymentState, Router
from turnout.server.state.redis import RedisState

__all__ = ["CooldownMirror"]

log = logging.getLogger("turnout.state")


class CooldownMirror:
    def __init__(self, state: RedisState, router: Router, *, every_s: float = 0.25) -> None:
        self._state = state
        self._router = router
        self.every_s = every_s
        self.reachable = True
        self._task: asyncio.Task[None] | None = None
        self._states = [s for group in router.groups.values() for s in group]
        self._keys = [state.key("cool", s.id) for s in self._states]
        router.on_cooldown = self.publish

    def publish(self, dep: DeploymentState) -> None:
        remaining_ms = int((dep.cooldown_until - self._router.clock()) * 1000)
        if remaining_ms > 0:
            work = self._state.client.set(self._state.key("cool", dep.id), "1", px=remaining_ms)
            self._state.spawn(work, f"sharing the cooldown of {dep.id}")

    def start(self) -> None:
        if self._task is None and self._states:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.every_s)

    async def refresh(self) -> None:
        """Apply the cooldowns other replicas set (one pipelined round trip)."""
        try:
            pipe = self._state.client.pipeline(transaction=False)
            for key in self._keys:
                pipe.pttl(key)
            ttls = await pipe.execute()
        except Exception as exc:  # any failure: keep routing on local state
            if self.reachable:
                log.warning("shared state unreachable, cooldowns are per replica: %r", exc)
            self.reachable = False
            return
        if not self.reachable:
            log.warning("shared state reachable again: cooldowns are shared")
        self.reachable = True
        now = self._router.clock()
        for dep, ttl in zip(self._states, ttls, strict=True):
            if isinstance(ttl, int) and ttl > 0:
                until = now + ttl / 1000
                if until > dep.cooldown_until + 0.05:  # ours is shorter (or none): take it
                    dep.cooldown_until = until
                    dep.failures.clear()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
