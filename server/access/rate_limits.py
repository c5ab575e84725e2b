"""Requests and tokens per minute of a key, and of its team when the team sets them (`rpm`,
`tpm`): a 429 `rate_limit_exceeded` past them, and OpenAI's `x-ratelimit-*` headers on every
reply of a key that has any.

The algorithm is GCRA, the "generic cell rate algorithm": a token bucket of one minute's quota
that refills continuously, kept as a single number per bucket, the *theoretical arrival time*
`tat` (the moment the bucket would be full again). Why this and not a window:

* O(1) time and memory per request (one float per bucket, no log of timestamps like the
  router's per-deployment sliding window, which is fine for a handful of deployments but not
  for thousands of keys), no lock (one event loop), no store access;
* exact, with no edge: a fixed window lets twice `rpm` through around its boundary, and a
  sliding window counter only estimates the previous window's share; here `rpm: 60` is one
  request per second, with a burst of up to 60 after a quiet minute, which is how OpenAI
  describes its own limits;
* the headers fall out of it exactly: *remaining* is the bucket's content, *reset* is the time
  until it is full again (OpenAI: "the time until the rate limit resets to its initial
  state"), `Retry-After` the time until one more unit fits;
* one number per bucket moves as is to a shared counter later (issue 15: a Redis key per
  bucket, updated by one script).

Requests are counted when admitted (a request refused here does not count; one refused later,
by a budget or the upstream, does, as OpenAI counts them). Tokens (input + output) are only
known once the response is priced (`settle`), so a request is admitted while any token of the
minute is left and its tokens are then taken in full, possibly past the limit: the bucket goes
into debt and the key waits until it is paid back (a reply of twice the `tpm` keeps the key out
for about a minute more), so over time the key never gets more than its `tpm`.

Headers, per family (requests, tokens), of the tighter of the key's and the team's buckets:
`x-ratelimit-limit-*`, `x-ratelimit-remaining-*` (after this request), `x-ratelimit-reset-*`
(Go's duration format, as OpenAI sends it: "1s", "6m0s", "20ms").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from turnout.engine.errors import RequestError
from turnout.server.access.teams import Teams
from turnout.server.pricing import UsageCounts
from turnout.server.request_context import Caller

__all__ = ["WINDOW_S", "Bucket", "RateLimits", "duration"]

WINDOW_S = 60.0  # rpm and tpm: a minute's quota
_EPS = 1e-9  # float slack: `rpm: 7` must admit 7, though 7 * (60 / 7) > 60 in floats
_SWEEP_AT = 10_000  # buckets kept before the full (forgettable) ones are dropped


def duration(seconds: float) -> str:
    """Go's `time.Duration` text, to the millisecond: "0s", "20ms", "1.5s", "6m0s", "1h0m0s"."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass(slots=True)
class Bucket:
    """A minute's quota of `limit` units, refilled continuously (GCRA)."""

    limit: int
    tat: float = 0.0  # when the bucket is full again; <= now: it is full

    def used(self, now: float) -> float:
        """Seconds of the minute in use: 0 when full, WINDOW_S when empty (more: in debt)."""
        return max(0.0, self.tat - now)

    def remaining(self, now: float) -> int:
        if self.limit <= 0:
            return 0
        return max(0, math.floor((WINDOW_S - self.used(now)) * self.limit / WINDOW_S + _EPS))

    def wait(self, now: float, units: int = 1) -> float:
        """Seconds until `units` fit; 0 when they fit now."""
        if self.limit <= 0:
            return WINDOW_S
        return max(0.0, self.used(now) + units * WINDOW_S / self.limit - WINDOW_S - _EPS)

    def take(self, now: float, units: int) -> None:
        """Take `units` whether they fit or not (tokens: the bucket may go into debt)."""
        if self.limit > 0:
            self.tat = max(self.tat, now) + units * WINDOW_S / self.limit


@dataclass(slots=True)
class _Limits:
    """The buckets of one key or one team; None where that limit is not set."""

    requests: Bucket | None = None
    tokens: Bucket | None = None


Scope = tuple[str, str, _Limits]  # ("key", key id, its buckets) | ("team", team name, ...)


def _sync(bucket: Bucket | None, limit: int | None, now: float) -> Bucket | None:
    """The bucket for `limit`. Settings change at runtime (the authenticator re-reads a key
    every second): what was used is kept in units, so 2 used of 2 is 2 used of 4."""
    if limit is None:
        return None
    if bucket is None:
        return Bucket(limit)
    if bucket.limit != limit:
        if bucket.limit > 0 and limit > 0 and bucket.tat > now:
            bucket.tat = now + (bucket.tat - now) * bucket.limit / limit
        bucket.limit = limit
    return bucket


class RateLimits:
    """The `rpm`/`tpm` check of `server/access/admission.py`."""

    def __init__(self, teams: Teams, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._teams = teams
        self._clock = clock  # monotonic: a minute is a minute, whatever the wall clock does
        self._keys: dict[str, _Limits] = {}
        self._team_limits: dict[str, _Limits] = {}

    async def admit(self, caller: Caller, model: str) -> Mapping[str, str] | None:
        key = caller.key
        if key is None:
            return None
        team = await self._teams.get(caller.team) if caller.team is not None else None
        scopes: list[Scope] = []
        now = self._clock()
        if key.rpm is not None or key.tpm is not None:
            limits = self._limits(self._keys, key.id, key.rpm, key.tpm, now)
            scopes.append(("key", key.id, limits))
        if team is not None and (team.rpm is not None or team.tpm is not None):
            limits = self._limits(self._team_limits, team.name, team.rpm, team.tpm, now)
            scopes.append(("team", team.name, limits))
        if not scopes:
            return None
        refusal = _refusal(scopes, now)
        if refusal is not None:
            refusal.headers = headers(scopes, now)
            raise refusal
        for _kind, _name, limits in scopes:
            if limits.requests is not None:
                limits.requests.take(now, 1)
        return headers(scopes, now)

    def settle(self, caller: Caller, cost: float | None, counts: UsageCounts) -> None:
        if caller.role != "key":
            return
        tokens = counts.input_tokens + counts.output_tokens
        if tokens <= 0:
            return
        now = self._clock()
        for table, name in ((self._keys, caller.key_id), (self._team_limits, caller.team)):
            limits = table.get(name) if name is not None else None
            if limits is not None and limits.tokens is not None:
                limits.tokens.take(now, tokens)

    def _limits(
        self, table: dict[str, _Limits], name: str, rpm: int | None, tpm: int | None, now: float
    ) -> _Limits:
        limits = table.get(name)
        if limits is None:
            if len(table) >= _SWEEP_AT:
                _sweep(table, now)
            limits = table[name] = _Limits()
        limits.requests = _sync(limits.requests, rpm, now)
        limits.tokens = _sync(limits.tokens, tpm, now)
        return limits


def _refusal(scopes: list[Scope], now: float) -> RequestError | None:
    """The 429 for the bucket this request does not fit in (the longest wait wins the
    Retry-After when several are full); None when it fits everywhere."""
    worst: tuple[float, str, str, Bucket] | None = None
    for kind, name, limits in scopes:
        for family, bucket in (("requests", limits.requests), ("tokens", limits.tokens)):
            if bucket is None:
                continue
            wait = bucket.wait(now)
            if wait > 0 and (worst is None or wait > worst[0]):
                worst = (wait, f"{kind} '{name}'", family, bucket)
    if worst is None:
        return None
    wait, scope, family, bucket = worst
    used = round(bucket.used(now) * bucket.limit / WINDOW_S)
    if family == "requests":
        what = f"requests per min (RPM): Limit {bucket.limit}, Used {used}, Requested 1"
    else:  # a response's tokens are only known at its end: none are requested up front
        what = f"tokens per min (TPM): Limit {bucket.limit}, Used {used}"
    return RequestError(
        429,
        f"Rate limit reached for {scope} on {what}. Please try again in {duration(wait)}.",
        code="rate_limit_exceeded",
        type=family,  # OpenAI's type for a rate limit: "requests" or "tokens"
        retry_after=wait,
    )


_NAMES = {
    family: tuple(f"x-ratelimit-{what}-{family}" for what in ("limit", "remaining", "reset"))
    for family in ("requests", "tokens")
}


def headers(scopes: list[Scope], now: float) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers of the tightest bucket of each family: the fewest
    remaining, then the longest to refill."""
    out: dict[str, str] = {}
    requests = [lim.requests for _k, _n, lim in scopes if lim.requests is not None]
    tokens = [lim.tokens for _k, _n, lim in scopes if lim.tokens is not None]
    for family, buckets in (("requests", requests), ("tokens", tokens)):
        if not buckets:
            continue
        bucket = buckets[0]
        if len(buckets) > 1:
            bucket = min(buckets, key=lambda b: (b.remaining(now), -b.used(now)))
        limit, remaining, reset = _NAMES[family]
        out[limit] = str(bucket.limit)
        out[remaining] = str(bucket.remaining(now))
        out[reset] = duration(bucket.used(now))
    return out


def _sweep(table: dict[str, _Limits], now: float) -> None:
    """Forget the buckets that are full again: a fresh one is the same."""
    for name in [n for n, lim in table.items() if _full(lim.requests, now) and
                 _full(lim.tokens, now)]:  # fmt: skip
        del table[name]


def _full(bucket: Bucket | None, now: float) -> bool:
    return bucket is None or bucket.tat <= now
