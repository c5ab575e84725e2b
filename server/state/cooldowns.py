"""Deployment cooldowns and rpm/tpm windows shared by replicas (`state: redis://…`).

A pick must cost nothing, so the router keeps deciding from its own in-process state; this
mirror connects that state to Redis:

* when a replica puts a deployment into cooldown (`Router.on_cooldown`), it writes
  `cool:<alias>#<i>` with the cooldown's length as its expiry (fire-and-forget);
* every `every_s` (250 ms) each replica reads every deployment's remaining cooldown (one
  pipelined round trip of PTTLs, off the request path) and applies the longer of its own and
  the shared one.

So a deployment cooled down on replica A is skipped by replica B within `every_s` (plus one
round trip).

The `rpm`/`tpm` windows of deployments that set them ride on the same round trip, so a pick
still makes no Redis call. Each refresh first adds what this replica counted since the last one
(`DeploymentState.requests_total`/`tokens_total`) to the current bucket keys
`dep:<alias>#<i>:req|tok:<unix time // BUCKET_S>` (INCRBY + EXPIRE), then reads the buckets of
the last 60 s (MGET), all in one pipeline; the sum minus this replica's own additions is what
the others sent, and the router adds it (`shared_requests`/`shared_tokens`) when deciding
`limited` and headroom. Bound: a request is seen by the other replicas within two refreshes
(~2 x `every_s` + a round trip); meanwhile each replica may admit up to the deployment's rpm
minus what it already sees, so the replicas together can overshoot by what they admit in that
time. The window is 55-60 s of buckets (BUCKET_S granularity) rather than exactly 60 s.
Deployments without rpm/tpm write nothing.

Failure counts stay per replica: each replica trips a deployment on the failures
it saw itself (`allowed_fails`), and the cooldown it decides then applies everywhere.
Redis unreachable: the router goes on with its own state (cooldowns and windows are then per
replica again: the shared counts drop to 0, and the counts of the outage are not written
later) and a warning is logged once per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from turnout.server.router import DeploymentState, Router
from turnout.server.state.redis import RedisState

__all__ = ["CooldownMirror"]

log = logging.getLogger("turnout.state")

BUCKET_S = 5  # seconds per shared window bucket
BUCKETS = 12  # buckets read: the current one and the 11 before (55-60 s)
BUCKET_TTL_S = BUCKET_S * (BUCKETS + 2)


class CooldownMirror:
    def __init__(
        self,
        state: RedisState,
        router: Router,
        *,
        every_s: float = 0.25,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._router = router
        self.every_s = every_s
        self._wall = wall  # bucket numbers: unix time, the same on every replica
        self.reachable = True
        self._task: asyncio.Task[None] | None = None
        self._states = [s for group in router.groups.values() for s in group]
        self._keys = [state.key("cool", s.id) for s in self._states]
        # (deployment, "req" | "tok") for each window a deployment's rpm/tpm asks for.
        self._windows: list[tuple[DeploymentState, str]] = []
        for s in self._states:
            if s.deployment.rpm is not None:
                self._windows.append((s, "req"))
            if s.deployment.tpm is not None:
                self._windows.append((s, "tok"))
        # What this replica has written per window: {bucket: count}, and its running total
        # (requests_total / tokens_total) at the last successful write.
        self._mine: list[dict[int, int]] = [{} for _ in self._windows]
        self._written: list[int] = [_total(s, kind) for s, kind in self._windows]
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
        """Apply the cooldowns other replicas set, write this replica's window counts and read
        everyone's (one pipelined round trip)."""
        bucket = int(self._wall()) // BUCKET_S
        totals = [_total(s, kind) for s, kind in self._windows]
        try:
            pipe = self._state.client.pipeline(transaction=False)
            for key in self._keys:
                pipe.pttl(key)
            window_keys: list[str] = []
            for i, (dep, kind) in enumerate(self._windows):
                keys = [self._state.key("dep", dep.id, kind, b) for b in _span(bucket)]
                window_keys += keys
                added = totals[i] - self._written[i]
                if added > 0:
                    pipe.incrby(keys[-1], added)
                    pipe.expire(keys[-1], BUCKET_TTL_S)
            if window_keys:
                pipe.mget(window_keys)
            replies = await pipe.execute()
        except Exception as exc:  # any failure: keep routing on local state
            if self.reachable:
                log.warning(
                    "shared state unreachable, cooldowns and deployment rpm/tpm are per "
                    "replica: %r",
                    exc,
                )
            self.reachable = False
            # Not knowing whether the writes landed, count them as written (never twice).
            self._written = totals
            for dep, _kind in self._windows:
                dep.shared_requests = dep.shared_tokens = 0
            return
        ttls = replies[: len(self._keys)]
        if window_keys:
            self._apply_windows(bucket, totals, replies[-1])
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

    def _apply_windows(self, bucket: int, totals: list[int], values: list[str | None]) -> None:
        span = _span(bucket)
        for i, (dep, kind) in enumerate(self._windows):
            mine = self._mine[i]
            added = totals[i] - self._written[i]
            if added > 0:
                mine[bucket] = mine.get(bucket, 0) + added
            self._written[i] = totals[i]
            for old in [b for b in mine if b < span[0]]:
                del mine[old]
            raw = values[i * BUCKETS : (i + 1) * BUCKETS]
            everyone = sum(int(v) for v in raw if v)
            others = max(0, everyone - sum(mine.values()))
            if kind == "req":
                dep.shared_requests = others
            else:
                dep.shared_tokens = others

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _total(dep: DeploymentState, kind: str) -> int:
    return dep.requests_total if kind == "req" else dep.tokens_total


def _span(bucket: int) -> list[int]:
    """The buckets of the window ending in `bucket`, oldest first."""
    return list(range(bucket - BUCKETS + 1, bucket + 1))
