"""Rate limits and budgets of keys and teams in Redis (`state: redis://…`): the same rules as
`server/access/rate_limits.py` and `server/access/budgets.py`, shared by every replica.

One round trip per admitted request: a single EVALSHA (`scripts.ADMIT`) checks and takes the
key's and the team's rpm buckets, checks their tpm buckets and reads the key's and the team's
spend counters. A key with no limits and no budget (and the master key) makes no Redis call.
`settle` is fire-and-forget (`scripts.SETTLE`: tokens into the tpm buckets, the cost into the
spend counters), logged when it fails; the settles that queue up while one write is in flight
go together in the next pipelined round trip.

Spend: the store stays the source of truth. A counter `spend:<key|team>:<name>:<period start>`
is seeded once per period, by the first replica that needs it, with the stored total of the
period (`SET NX`: a replica that comes second keeps the first one's counter, which may already
hold later spend); every settle then adds to it with INCRBYFLOAT, on every replica. A counter
lost (Redis restarted without persistence) is seeded again from the store at its next use.
The one gap: a response that ends on another replica between a seeding replica's store read
and its `SET NX` is in neither (a handful of responses once per period at most).

Redis unreachable (or slower than `STATE_TIMEOUT_S`): the request is refused with a 503
`state_unavailable` (README, "Running several replicas", says why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from turnout.server.access.budgets import _exhausted
from turnout.server.access.periods import Period, parse_period
from turnout.server.access.rate_limits import Bucket, Scope, _Limits, _refusal, headers
from turnout.server.access.teams import Teams
from turnout.server.pricing import UsageCounts
from turnout.server.request_context import Caller
from turnout.server.state.base import state_unavailable
from turnout.server.state.redis import RedisState
from turnout.server.state.scripts import SETTLE
from turnout.server.stores.base import ResponseStore, SpendQuery

__all__ = ["SharedLimits"]

Owner = tuple[str, str]  # ("key", key id) | ("team", team name)
# (scope kind, scope name, family, limit): one GCRA bucket
_BucketSpec = tuple[str, str, str, int]
# (owner, budget, period text, period)
_BudgetSpec = tuple[Owner, float, str | None, Period]


class SharedLimits:
    """The `rpm`/`tpm` and `max_budget_usd` checks of `server/access/admission.py`, in Redis."""

    def __init__(
        self,
        state: RedisState,
        store: ResponseStore,
        teams: Teams,
        *,
        clock: Callable[[], float] = time.time,
        now: Callable[[], float] | None = None,
    ) -> None:
        self._state = state
        self._store = store
        self._teams = teams
        self._clock = clock  # wall clock: budget periods are anchored at unix times
        self._now = now  # rate limits' clock for tests; None: Redis's own
        self._seeds: dict[tuple[Owner, Period], asyncio.Task[None]] = {}
        self._periods: dict[str | None, int | None] = {}
        self._pending: list[tuple[Caller, float, int]] = []  # settles not yet written
        self._flushing = False

    # -- the way in ----------------------------------------------------------------------------

    async def admit(self, caller: Caller, model: str) -> Mapping[str, str] | None:
        key = caller.key
        if key is None:
            return None
        team = await self._teams.get(caller.team) if caller.team is not None else None
        buckets: list[_BucketSpec] = []
        budgets: list[_BudgetSpec] = []
        wall = self._clock()
        _limits(buckets, "key", key.id, key.rpm, key.tpm)
        if key.max_budget_usd is not None:
            budgets.append(self._budget(("key", key.id), key.max_budget_usd,
                                        key.budget_period, key.created_at, wall))  # fmt: skip
        if team is not None:
            _limits(buckets, "team", team.name, team.rpm, team.tpm)
            if team.max_budget_usd is not None:
                budgets.append(self._budget(("team", team.name), team.max_budget_usd,
                                            team.budget_period, team.created_at, wall))  # fmt: skip
        if not buckets and not budgets:
            return None
        for owner, _budget, _text, period in budgets:
            await self._seed(owner, period, wall)
        keys = [self._bucket_key(b) for b in buckets]
        keys += [self._spend_key(owner, period) for owner, _b, _t, period in budgets]
        args: list[Any] = [len(buckets), len(budgets)]
        args += [limit for _k, _n, _f, limit in buckets]
        args += [1 if family == "requests" else 0 for _k, _n, family, _l in buckets]
        args.append(self._test_now())
        reply = await self._call(self._state.admit_script, keys, args)
        status, now = reply[0], float(reply[1])
        scopes = _scopes(buckets, [float(t) for t in reply[2 : 2 + len(buckets)]])
        out = headers(scopes, now) if scopes else {}
        if status == "limited":
            refusal = _refusal(scopes, now)
            if refusal is not None:  # always: the script saw a full bucket
                refusal.headers = out
                raise refusal
            return out or None  # (unreachable: the same arithmetic on both sides)
        for (owner, budget, text, period), raw in zip(
            budgets, reply[2 + len(buckets) :], strict=True
        ):
            spent = float(raw) if raw != "" else await self._reseed(owner, period, wall)
            if spent >= budget:
                refusal = _exhausted(owner, spent, budget, text, period, wall)
                refusal.headers = out or None
                raise refusal
        return out or None

    # -- once priced ---------------------------------------------------------------------------

    def settle(self, caller: Caller, cost: float | None, counts: UsageCounts) -> None:
        key = caller.key
        if caller.role != "key" or key is None:
            return
        tokens = counts.input_tokens + counts.output_tokens
        if tokens <= 0 and not cost:
            return
        self._pending.append((caller, cost or 0.0, tokens))
        if not self._flushing:
            self._flushing = True
            self._state.spawn(self._flush(), "settling responses")

    async def _flush(self) -> None:
        """Write the settles queued so far in one pipelined round trip; those that queue up
        meanwhile go in the next one (under load many responses share a round trip)."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                calls = [await self._settle_call(*settled) for settled in batch]
                await self._write([call for call in calls if call is not None])
        finally:
            self._flushing = False

    async def _write(self, calls: list[tuple[list[str], list[Any]]]) -> None:
        if len(calls) == 1:
            keys, args = calls[0]
            await self._state.settle_script(keys=keys, args=args)
        elif calls:
            try:
                await self._pipeline(calls)
            except NoScriptError:  # Redis restarted and forgot it: load it, then once more
                self._state.settle_script.sha = await self._state.client.script_load(SETTLE)
                await self._pipeline(calls)

    async def _pipeline(self, calls: list[tuple[list[str], list[Any]]]) -> None:
        # evalsha by hand: redis-py's Script in a pipeline asks SCRIPT EXISTS first, a second
        # round trip per write.
        pipe = self._state.client.pipeline(transaction=False)
        sha = self._state.settle_script.sha
        for keys, args in calls:
            pipe.evalsha(sha, len(keys), *keys, *args)
        await pipe.execute()

    async def _settle_call(
        self, caller: Caller, cost: float, tokens: int
    ) -> tuple[list[str], list[Any]] | None:
        key = caller.key
        assert key is not None
        team = await self._teams.get(caller.team) if caller.team is not None else None
        wall = self._clock()
        buckets: list[_BucketSpec] = []
        spends: list[str] = []
        if key.tpm is not None:
            buckets.append(("key", key.id, "tokens", key.tpm))
        if key.max_budget_usd is not None:
            period = self._period(key.budget_period, key.created_at, wall)
            spends.append(self._spend_key(("key", key.id), period))
        if team is not None:
            if team.tpm is not None:
                buckets.append(("team", team.name, "tokens", team.tpm))
            if team.max_budget_usd is not None:
                period = self._period(team.budget_period, team.created_at, wall)
                spends.append(self._spend_key(("team", team.name), period))
        if not buckets and not spends:
            return None
        keys = [self._bucket_key(b) for b in buckets] + spends
        args: list[Any] = [len(buckets), tokens, repr(cost)]
        args += [limit for _k, _n, _f, limit in buckets]
        args.append(self._test_now())
        return keys, args

    async def aclose(self) -> None:
        for task in self._seeds.values():
            task.cancel()

    # -- spend counters ------------------------------------------------------------------------

    async def _seed(self, owner: Owner, period: Period, wall: float) -> None:
        """Seed the period's counter once per process (every request of the owner waits for
        the same seeding; a failed one is tried again by the next request)."""
        task = self._seeds.get((owner, period))
        if task is not None and task.done() and task.exception() is None:
            return
        if task is None or task.done():
            if len(self._seeds) > 10_000:
                self._seeds = {k: t for k, t in self._seeds.items() if not t.done()}
            task = self._seeds[(owner, period)] = asyncio.ensure_future(
                self._write_seed(owner, period, wall)
            )
        await asyncio.shield(task)

    async def _reseed(self, owner: Owner, period: Period, wall: float) -> float:
        """The counter vanished (Redis restarted, flushed): seed it again, read it back."""
        self._seeds.pop((owner, period), None)
        await self._seed(owner, period, wall)
        raw = await self._call(self._state.client.get, self._spend_key(owner, period))
        return float(raw) if raw else 0.0

    async def _write_seed(self, owner: Owner, period: Period, wall: float) -> None:
        kind, name = owner
        query = SpendQuery(
            group_by="api_key" if kind == "key" else "team",
            start=period.start if period.end is not None else None,
            api_key_id=name if kind == "key" else None,
            team=name if kind == "team" else None,
        )
        stored = (await self._store.spend(query)).total.cost or 0.0
        # Kept an hour past the period's end (a late settle finds it), forever for lifetime.
        ttl = None if period.end is None else int((period.end - wall + 3600) * 1000)
        await self._call(
            self._state.client.set, self._spend_key(owner, period), repr(stored), nx=True, px=ttl
        )

    # -- names ---------------------------------------------------------------------------------

    def _budget(
        self, owner: Owner, budget: float, text: str | None, anchor: int, wall: float
    ) -> _BudgetSpec:
        return (owner, budget, text, self._period(text, anchor, wall))

    def _period(self, text: str | None, anchor: int, wall: float) -> Period:
        try:
            length = self._periods[text]
        except KeyError:
            length = self._periods[text] = parse_period(text)
        return Period.at(wall, anchor, length)

    def _bucket_key(self, bucket: _BucketSpec) -> str:
        kind, name, family, _limit = bucket
        return self._state.key("rl", kind, name, "r" if family == "requests" else "t")

    def _spend_key(self, owner: Owner, period: Period) -> str:
        return self._state.key("spend", owner[0], owner[1], period.start)

    def _test_now(self) -> str:
        return "" if self._now is None else repr(self._now())

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except (TimeoutError, RedisError, OSError) as exc:
            raise state_unavailable(exc) from None


def _limits(out: list[_BucketSpec], kind: str, name: str, rpm: int | None, tpm: int | None) -> None:
    if rpm is not None:
        out.append((kind, name, "requests", rpm))
    if tpm is not None:
        out.append((kind, name, "tokens", tpm))


def _scopes(buckets: list[_BucketSpec], tats: list[float]) -> list[Scope]:
    """The buckets as the in-process module's scopes, so its refusal and headers are reused
    word for word."""
    by_scope: dict[tuple[str, str], _Limits] = {}
    for (kind, name, family, limit), tat in zip(buckets, tats, strict=True):
        limits = by_scope.setdefault((kind, name), _Limits())
        if family == "requests":
            limits.requests = Bucket(limit, tat)
        else:
            limits.tokens = Bucket(limit, tat)
    return [(kind, name, limits) for (kind, name), limits in by_scope.items()]
