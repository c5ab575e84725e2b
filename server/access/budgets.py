"""Budgets: a key's and its team's spend in the current period against `max_budget_usd`.

Once the spend of the current period reaches the budget (`spend >= max_budget_usd`), the
key's requests are refused with OpenAI's 429 `insufficient_quota` (its `type` is
`insufficient_quota` too), naming the budget (key id or team name, amount, period) and when it
resets, with a `Retry-After` until then; a lifetime budget (`budget_period: null`) never
resets, so its 429 has no `Retry-After`. Periods: `periods.py` (anchored at the key's or the
team's `created_at`).

Where the spend comes from: every priced response of the key (streamed or not, `store: false`
too) is added by `settle` to an in-memory running total per (key | team, period). The total is
read from the store once, the first time a period needs it (`store.spend(...)` filtered by key
or team from the period's start: one read per key per period per process), then kept up to
date by `settle`, so the way in costs two dictionary lookups and no store access.

Other workers and replicas spend too, and only the store sees it: while a key is in use its
total is re-read in the background (no request waits on it) at most every `refresh_s` (5 s)
once the total is at least half the budget, and at most every `refresh_far_s` (60 s) before.
A re-read never lowers the total: it becomes `max(total, stored + settled here since the
read began)`, so this process's own `store: false` spend (which the store never sees) is not
forgotten, and a response written while the read ran is counted at worst twice, never missed.

The bound on overshoot: a request is admitted when its budget is not yet spent; its cost is
known only when it ends. So the spend can pass the budget by at most the cost of the requests
already in flight when the budget ran out (in this process, plus, with several workers, what
the others admitted before their next re-read, at most `refresh_s` later). Nothing is reserved
up front: a response's price cannot be known before it is generated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from turnout.engine.errors import RequestError
from turnout.server.access.periods import Period, parse_period
from turnout.server.access.teams import Teams
from turnout.server.pricing import UsageCounts
from turnout.server.request_context import Caller
from turnout.server.stores.base import ResponseStore, SpendQuery

__all__ = ["Budgets"]

log = logging.getLogger("turnout.budgets")

NEAR = 0.5  # from half the budget on, the store is re-read every `refresh_s`

Owner = tuple[str, str]  # ("key", key id) | ("team", team name)


@dataclass(slots=True)
class _Tally:
    """One owner's spend in one period."""

    period: Period
    spent: float = 0.0  # the best estimate of the period's spend
    settled: float = 0.0  # what `settle` added here (to tell what a store read may lack)
    read_at: float = 0.0  # monotonic start of the last store read
    reading: asyncio.Task[None] | None = field(default=None, repr=False)


class Budgets:
    """The `max_budget_usd` check of `server/access/admission.py`."""

    def __init__(
        self,
        store: ResponseStore,
        teams: Teams,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        refresh_s: float = 5.0,
        refresh_far_s: float = 60.0,
    ) -> None:
        self._store = store
        self._teams = teams
        self._clock = clock  # wall clock: periods are anchored at unix times
        self._monotonic = monotonic
        self.refresh_s = refresh_s
        self.refresh_far_s = refresh_far_s
        self._tallies: dict[Owner, _Tally] = {}
        self._periods: dict[str | None, int | None] = {}  # "30d" -> seconds, parsed once
        self._background: set[asyncio.Task[None]] = set()

    async def admit(self, caller: Caller, model: str) -> Mapping[str, str] | None:
        key = caller.key
        if key is None:
            return None
        if key.max_budget_usd is not None:
            await self._check(
                ("key", key.id), key.max_budget_usd, key.budget_period, key.created_at
            )
        if caller.team is not None:
            team = await self._teams.get(caller.team)
            if team is not None and team.max_budget_usd is not None:
                await self._check(
                    ("team", team.name), team.max_budget_usd, team.budget_period, team.created_at
                )
        return None

    def settle(self, caller: Caller, cost: float | None, counts: UsageCounts) -> None:
        if caller.role != "key" or not cost:
            return
        now = self._clock()
        if caller.key_id is not None:
            self._add(("key", caller.key_id), cost, now)
        if caller.team is not None:
            self._add(("team", caller.team), cost, now)

    def _add(self, owner: Owner, cost: float, now: float) -> None:
        tally = self._tallies.get(owner)
        # A response that ends after its period did is that period's (the store files it by
        # its creation time too): the new period's total is read afresh.
        if tally is not None and (tally.period.end is None or now < tally.period.end):
            tally.spent += cost
            tally.settled += cost

    def spent(self, kind: str, name: str) -> float | None:
        """The running total of the current tally (tests, admin views); None before any."""
        tally = self._tallies.get((kind, name))
        return None if tally is None else tally.spent

    async def aclose(self) -> None:
        """Stop the background re-reads (the store is about to close)."""
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background)

    # -- the check ---------------------------------------------------------------------------

    async def _check(
        self, owner: Owner, budget: float, period_text: str | None, anchor: int
    ) -> None:
        now = self._clock()
        period = Period.at(now, anchor, self._length(period_text))
        tally = self._tallies.get(owner)
        if tally is None or tally.period != period:
            tally = self._tallies[owner] = _Tally(period)
            self._start_read(owner, tally)
        if tally.reading is not None and not tally.read_at:
            # The period's first read: every request of the owner waits for the same one.
            await asyncio.shield(tally.reading)
        if tally.spent >= budget:
            raise _exhausted(owner, tally.spent, budget, period_text, period, now)
        self._maybe_refresh(owner, tally, budget)

    def _length(self, text: str | None) -> int | None:
        try:
            return self._periods[text]
        except KeyError:
            length = self._periods[text] = parse_period(text)
            return length

    def _maybe_refresh(self, owner: Owner, tally: _Tally, budget: float) -> None:
        if tally.reading is not None:
            return
        every = self.refresh_s if tally.spent >= budget * NEAR else self.refresh_far_s
        if self._monotonic() - tally.read_at < every:
            return
        self._start_read(owner, tally)

    def _start_read(self, owner: Owner, tally: _Tally) -> None:
        task = tally.reading = asyncio.ensure_future(self._read(owner, tally))
        self._background.add(task)
        task.add_done_callback(self._read_done)

    def _read_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A failed re-read keeps the running total; a failed first read fails the requests
            # that waited for it, and the next request reads again.
            log.warning("reading a budget's spend failed: %r", task.exception())

    async def _read(self, owner: Owner, tally: _Tally) -> None:
        """Read the period's stored spend into the tally (see the module's docstring)."""
        kind, name = owner
        started, before = self._monotonic(), tally.settled
        try:
            query = SpendQuery(
                group_by="api_key" if kind == "key" else "team",
                start=tally.period.start if tally.period.end is not None else None,
                api_key_id=name if kind == "key" else None,
                team=name if kind == "team" else None,
            )
            stored = (await self._store.spend(query)).total.cost or 0.0
        except BaseException:
            tally.reading = None
            if not tally.read_at and self._tallies.get(owner) is tally:
                del self._tallies[owner]  # never read: the next request reads again
            raise
        tally.spent = max(tally.spent, stored + tally.settled - before)
        tally.read_at = max(started, 1e-9)  # nonzero: the first read is done
        tally.reading = None


def _usd(amount: float) -> str:
    return "$" + (f"{amount:.6f}".rstrip("0").rstrip(".") or "0")


def _exhausted(
    owner: Owner, spent: float, budget: float, period_text: str | None, period: Period, now: float
) -> RequestError:
    """OpenAI's 429 `insufficient_quota`, saying which budget and when it resets."""
    kind, name = owner
    which = f"{kind} '{name}'"
    if period.end is None:
        message = (
            f"You exceeded the lifetime budget of {which}: {_usd(spent)} spent of "
            f"{_usd(budget)}. A lifetime budget does not reset; its max_budget_usd can be raised."
        )
        retry_after = None
    else:
        reset = datetime.fromtimestamp(period.end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = (
            f"You exceeded the budget of {which}: {_usd(spent)} spent of {_usd(budget)} in its "
            f"current {period_text} period, which resets at {reset} (unix {period.end})."
        )
        retry_after = max(0.0, period.end - now)
    return RequestError(
        429, message, code="insufficient_quota", type="insufficient_quota",
        retry_after=retry_after,
    )  # fmt: skip
