"""Budgets in-process (server/access/budgets.py) with a fake clock: a key's or a team's spend in
the current period against `max_budget_usd`, seeded from the store once per period, kept by
`settle`, re-read for the spend of other workers; the 429 `insufficient_quota` that says which
budget ran out and when it resets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.test_server_unit import Env
from turnout.engine.errors import RequestError
from turnout.server.access.admission import Admission
from turnout.server.access.budgets import Budgets
from turnout.server.access.rate_limits import RateLimits
from turnout.server.access.teams import Teams
from turnout.server.gateway import JsonReply
from turnout.server.pricing import UsageCounts
from turnout.server.request_context import Caller
from turnout.server.stores import MemoryStore, StoredResponse
from turnout.server.stores.base import SpendQuery, SpendReport
from turnout.server.stores.keys import AuditEntry, StoredKey, StoredTeam

pytestmark = pytest.mark.anyio

T0 = 1_790_000_000  # the keys' creation time
DAY = 86_400
NO_USAGE = UsageCounts()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingStore(MemoryStore):
    """A memory store that counts its spend reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[SpendQuery] = []

    async def spend(self, query: SpendQuery) -> SpendReport:
        self.reads.append(query)
        return await super().spend(query)


def key(key_id: str = "key_a", **settings: Any) -> StoredKey:
    settings.setdefault("created_at", T0)
    return StoredKey(id=key_id, secret_hash="0" * 64, prefix="sk-tnt-x", **settings)


def caller(stored: StoredKey) -> Caller:
    return Caller(key_id=stored.id, team=stored.team, role="key", key=stored)


def record(response_id: str, cost: float, created_at: int, **owner: Any) -> StoredResponse:
    return StoredResponse(
        id=response_id, created_at=created_at, model="m", provider="p", status="completed",
        response={}, input_items=[], events=None, request={}, previous_response_id=None,
        deployment=None, attempts=[], cost=cost, **owner,
    )  # fmt: skip


async def add_team(store: MemoryStore, name: str, **settings: Any) -> None:
    team = StoredTeam(name=name, created_at=T0, **settings)
    await store.put_team(team, AuditEntry("test", "team.create", name, None, None, T0))


def budgets(store: MemoryStore, clock: Clock, **kw: Any) -> Budgets:
    return Budgets(store, Teams(store), clock=clock, monotonic=clock, **kw)


async def refused(check: Budgets, who: Caller) -> RequestError:
    with pytest.raises(RequestError) as info:
        await check.admit(who, "m")
    return info.value


async def test_a_key_budget_runs_out_mid_period_and_says_which_and_when_it_resets() -> None:
    clock = Clock(T0 + 3 * DAY + 100)  # the fourth 1d period of the key
    check = budgets(MemoryStore(), clock)
    who = caller(key(max_budget_usd=1.0, budget_period="1d"))
    assert await check.admit(who, "m") is None
    check.settle(who, 0.6, NO_USAGE)
    clock.now += 3600
    await check.admit(who, "m")  # 0.6 of 1.0: still admitted
    check.settle(who, 0.5, NO_USAGE)  # admitted before the budget ran out: may overshoot

    error = await refused(check, who)
    reset = T0 + 4 * DAY
    assert error.status == 429
    assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
    iso = datetime.fromtimestamp(reset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "key 'key_a'" in error.message and "$1.1 spent of $1" in error.message
    assert "1d period" in error.message and iso in error.message and str(reset) in error.message
    assert error.retry_after == pytest.approx(reset - clock.now)

    clock.now = reset - 1
    await refused(check, who)
    clock.now = reset  # the next period: nothing spent in it yet
    assert await check.admit(who, "m") is None
    assert check.spent("key", "key_a") == 0.0


async def test_spend_equal_to_the_budget_is_spent() -> None:
    clock = Clock(T0 + 10)
    check = budgets(MemoryStore(), clock)
    who = caller(key(max_budget_usd=0.5, budget_period="1h"))
    await check.admit(who, "m")
    check.settle(who, 0.5, NO_USAGE)
    assert (await refused(check, who)).retry_after == pytest.approx(3600 - 10)


async def test_a_team_budget_is_shared_by_its_keys_and_names_the_team() -> None:
    store = MemoryStore()
    await add_team(store, "research", max_budget_usd=1.0, budget_period="30d")
    clock = Clock(T0 + 50)
    check = budgets(store, clock)
    ada = caller(key("key_ada", team="research"))
    bob = caller(key("key_bob", team="research", max_budget_usd=5.0))
    await check.admit(ada, "m")
    await check.admit(bob, "m")
    check.settle(ada, 0.7, NO_USAGE)
    check.settle(bob, 0.4, NO_USAGE)
    for who in (ada, bob):
        error = await refused(check, who)
        assert "team 'research'" in error.message and "30d period" in error.message
        assert error.retry_after == pytest.approx(T0 + 30 * DAY - clock.now)
    assert check.spent("key", "key_bob") == pytest.approx(0.4)  # its own budget: not spent
    other = caller(key("key_eve", team="elsewhere"))
    assert await check.admit(other, "m") is None


async def test_a_lifetime_budget_never_resets_and_has_no_retry_after() -> None:
    clock = Clock(T0 + 10)
    check = budgets(MemoryStore(), clock)
    who = caller(key(max_budget_usd=0.25))
    await check.admit(who, "m")
    check.settle(who, 0.3, NO_USAGE)
    error = await refused(check, who)
    assert "lifetime budget of key 'key_a'" in error.message and error.retry_after is None
    clock.now += 400 * DAY
    assert (await refused(check, who)).retry_after is None


async def test_the_total_is_seeded_from_the_store_once_per_period() -> None:
    store = CountingStore()
    start = T0 + DAY  # the current 1d period
    await store.put(record("resp_old", 5.0, start - 10, api_key_id="key_a"))  # last period
    await store.put(record("resp_1", 0.5, start + 5, api_key_id="key_a"))
    await store.put(record("resp_2", 0.4, start + 6, api_key_id="key_a"))
    await store.put(record("resp_3", 9.0, start + 7, api_key_id="key_other"))
    clock = Clock(start + 100)
    check = budgets(store, clock)
    who = caller(key(max_budget_usd=1.0, budget_period="1d"))
    await asyncio.gather(*(check.admit(who, "m") for _ in range(5)))  # one read for all five
    assert len(store.reads) == 1
    query = store.reads[0]
    assert query.api_key_id == "key_a" and query.start == start and query.group_by == "api_key"
    assert check.spent("key", "key_a") == pytest.approx(0.9)
    check.settle(who, 0.2, NO_USAGE)
    assert "$1.1 spent" in (await refused(check, who)).message
    assert len(store.reads) == 1  # the running total, not the store
    clock.now = start + DAY + 1
    await check.admit(who, "m")  # a new period: read again
    assert len(store.reads) == 2 and store.reads[1].start == start + DAY


async def test_the_team_total_is_seeded_with_the_team_filter() -> None:
    store = CountingStore()
    await add_team(store, "ops", max_budget_usd=1.0, budget_period="1d")
    await store.put(record("resp_1", 0.6, T0 + 5, api_key_id="key_x", team="ops"))
    await store.put(record("resp_2", 0.6, T0 + 6, api_key_id="key_y", team="ops"))
    check = budgets(store, Clock(T0 + 100))
    error = await refused(check, caller(key("key_z", team="ops")))
    assert "team 'ops'" in error.message and "$1.2 spent" in error.message
    assert store.reads[0].team == "ops" and store.reads[0].api_key_id is None


async def test_other_workers_spend_is_read_again_in_the_background() -> None:
    """Near the budget the store is re-read at most every refresh_s, off the request path;
    the total never goes down (this process's store: false spend is kept)."""
    store = CountingStore()
    clock = Clock(T0 + 100)
    check = budgets(store, clock, refresh_s=5.0, refresh_far_s=60.0)
    who = caller(key(max_budget_usd=1.0, budget_period="1d"))
    await check.admit(who, "m")
    check.settle(who, 0.3, NO_USAGE)  # a store: false response: never in the store
    clock.now += 30
    await check.admit(who, "m")  # far from the budget: no re-read before 60 s
    assert len(store.reads) == 1
    await store.put(record("resp_w2", 0.3, T0 + 120, api_key_id="key_a"))  # another worker
    clock.now += 31
    await check.admit(who, "m")  # 61 s since the read: one in the background
    await asyncio.sleep(0.01)
    assert len(store.reads) == 2
    # max(0.3 here, 0.3 stored + 0 settled since): the other worker's 0.3 is hidden behind
    # this one's unstored 0.3 until the store says more than this process knows.
    assert check.spent("key", "key_a") == pytest.approx(0.3)
    await store.put(record("resp_w3", 0.4, T0 + 130, api_key_id="key_a"))
    check.settle(who, 0.1, NO_USAGE)
    clock.now += 61
    await check.admit(who, "m")
    await asyncio.sleep(0.01)
    assert check.spent("key", "key_a") == pytest.approx(0.7)  # max(0.4, 0.7 stored)
    await store.put(record("resp_w4", 0.5, T0 + 140, api_key_id="key_a"))
    clock.now += 4
    await check.admit(who, "m")  # near the budget now, but read 4 s ago: not yet
    assert len(store.reads) == 3
    clock.now += 1
    await check.admit(who, "m")
    await asyncio.sleep(0.01)
    assert len(store.reads) == 4
    assert "$1.2 spent" in (await refused(check, who)).message
    await check.aclose()


async def test_a_failed_first_read_fails_the_request_and_the_next_one_reads_again() -> None:
    class Failing(MemoryStore):
        fail = True

        async def spend(self, query: SpendQuery) -> SpendReport:
            if self.fail:
                raise OSError("disk gone")
            return await super().spend(query)

    store = Failing()
    check = budgets(store, Clock(T0 + 1))
    who = caller(key(max_budget_usd=1.0))
    with pytest.raises(OSError):
        await check.admit(who, "m")
    store.fail = False
    assert await check.admit(who, "m") is None


async def test_callers_without_budgets_cost_nothing() -> None:
    store = CountingStore()
    check = budgets(store, Clock(T0))
    for who in (Caller(), Caller(role="master", key_id="key_m"), caller(key())):
        assert await check.admit(who, "m") is None
        check.settle(who, 1.0, NO_USAGE)
    assert store.reads == []


async def test_a_budget_refusal_carries_the_rate_limit_headers() -> None:
    store = MemoryStore()
    clock = Clock(T0 + 1)
    teams = Teams(store)
    admission = Admission([RateLimits(teams, clock=clock), Budgets(store, teams, clock=clock)])
    who = caller(key(max_budget_usd=0.1, rpm=10))
    assert (await admission.admit(who, "m"))["x-ratelimit-remaining-requests"] == "9"
    admission.settle(who, 0.2, NO_USAGE)
    with pytest.raises(RequestError) as info:
        await admission.admit(who, "m")
    assert info.value.code == "insufficient_quota"
    assert info.value.headers is not None
    assert info.value.headers["x-ratelimit-remaining-requests"] == "8"


# -- through the gateway ------------------------------------------------------------------------

PRICED = {"fake/*": {"input_per_mtok": 100_000, "output_per_mtok": 100_000}}  # $0.5 a reply


async def test_the_gateway_settles_json_and_streamed_replies_and_refuses_the_spent_key() -> None:
    env = Env(pricing=PRICED)
    stored = key(max_budget_usd=1.0, budget_period="1d", created_at=0)
    gw = env.gateway()
    who = caller(stored)
    reply = await gw.create({"model": "fake/x", "input": "hi"}, who)
    assert isinstance(reply, JsonReply) and reply.response["usage"]["cost"] == pytest.approx(0.5)
    streamed = await gw.create({"model": "fake/x", "input": "hi", "stream": True}, who)
    async for _ in streamed.chunks:  # type: ignore[union-attr]
        pass
    with pytest.raises(RequestError) as info:
        await gw.create({"model": "fake/x", "input": "again"}, who)
    assert info.value.code == "insufficient_quota"
    assert len(env.upstream.requests) == 2  # refused before any upstream call
    await gw.aclose()
