"""Shared state in a real Redis (`state: redis://…`, server/state/): the URL, the rate limits
and budgets (the same decisions as the in-process checks for the same calls, shared by two
"replicas" in one process), the cooldown mirror, and what a request gets when Redis is down.
Each test has its own key prefix (tests/redis_state.py), removed afterwards."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.redis_state import closed_redis_url, redis_prefix, require_redis, state_url
from turnout.engine.errors import ConfigError, RequestError, UpstreamError
from turnout.server.access.rate_limits import RateLimits
from turnout.server.access.teams import Teams
from turnout.server.cli import ready_line
from turnout.server.config import Deployment, ModelAlias, RouterSettings, load_config
from turnout.server.pricing import UsageCounts
from turnout.server.request_context import Caller
from turnout.server.router import Router
from turnout.server.state import parse_state_url
from turnout.server.state.cooldowns import CooldownMirror
from turnout.server.state.limits import SharedLimits
from turnout.server.state.redis import RedisState
from turnout.server.stores import MemoryStore, StoredResponse
from turnout.server.stores.keys import AuditEntry, StoredKey, StoredTeam

__all__ = ["redis_prefix"]  # the fixture, used by name

pytestmark = pytest.mark.anyio

T0 = 1_790_000_000
DAY = 86_400


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(key_id: str = "key_a", **settings: Any) -> StoredKey:
    settings.setdefault("created_at", T0)
    return StoredKey(id=key_id, secret_hash="0" * 64, prefix="sk-tnt-x", **settings)


def caller(stored: StoredKey) -> Caller:
    return Caller(key_id=stored.id, team=stored.team, role="key", key=stored)


async def add_team(store: MemoryStore, name: str, **settings: Any) -> None:
    team = StoredTeam(name=name, created_at=T0, **settings)
    await store.put_team(team, AuditEntry("test", "team.create", name, None, None, T0))


def record(response_id: str, cost: float, created_at: int, **owner: Any) -> StoredResponse:
    return StoredResponse(
        id=response_id, created_at=created_at, model="m", provider="p", status="completed",
        response={}, input_items=[], events=None, request={}, previous_response_id=None,
        deployment=None, attempts=[], cost=cost, **owner,
    )  # fmt: skip


@pytest.fixture
async def state(redis_prefix: str) -> AsyncIterator[RedisState]:
    shared = RedisState(state_url(redis_prefix))
    yield shared
    await shared.aclose()


async def outcome(check: Any, who: Caller) -> tuple[Any, ...]:
    """What a client sees of one admission: the headers, or the refusal's fields."""
    try:
        headers = await check.admit(who, "m")
    except RequestError as exc:
        return ("refused", exc.status, exc.code, exc.type, exc.message,
                round(exc.retry_after or 0, 6), exc.headers)  # fmt: skip
    return ("admitted", headers)


# -- the URL -------------------------------------------------------------------------------------


def test_the_state_url_takes_a_prefix_and_names_what_is_wrong() -> None:
    parsed = parse_state_url("rediss://user:pw@cache.internal:6380/3?prefix=app1:")
    assert parsed.prefix == "app1:" and parsed.url == "rediss://user:pw@cache.internal:6380/3"
    assert parse_state_url("redis://localhost").prefix == "turnout:"
    for bad, words in [
        ("http://localhost:6379", "redis:// or rediss://"),
        ("redis://:secret@/0", "no host"),
        ("redis://h:99999/0", "port"),
        ("redis://h:6379/zero", "not a number"),
    ]:
        with pytest.raises(ValueError, match=words) as info:
            parse_state_url(bad)
        assert "secret" not in str(info.value)


def test_the_config_takes_state_checks_it_and_never_shows_its_password(tmp_path: Path) -> None:
    config = tmp_path / "turnout.yaml"
    config.write_text("state: 'rediss://app:sekrit@cache:6380/2?prefix=t1:'\n")
    settings_ = load_config(str(config), {})
    assert settings_.state == "rediss://app:sekrit@cache:6380/2?prefix=t1:"
    assert "sekrit" not in repr(settings_)
    line = ready_line("http://x", "sqlite:///t.db", 1, 0, False, state=settings_.state)
    assert "state rediss://app:***@cache:6380/2" in line and "sekrit" not in line
    assert load_config(None, {}).state is None  # no state: everything in-process
    for text, words in [
        ("state: 'http://u:sekrit@h/0'", "does not match"),
        ("state: 'redis://u:sekrit@h/x'", "the database 'x' is not a number"),
    ]:
        config.write_text(text + "\n")
        with pytest.raises(ConfigError) as info:
            load_config(str(config), {})
        (problem,) = info.value.problems
        assert str(problem).startswith(f"{config}:1:1: state: ") and words in str(problem)
        assert "sekrit" not in str(problem)


# -- rate limits and budgets ---------------------------------------------------------------------


async def test_rpm_holds_across_two_replicas(state: RedisState) -> None:
    store = MemoryStore()
    other = RedisState(state_url(state.prefix))
    try:
        a = SharedLimits(state, store, Teams(store))
        b = SharedLimits(other, store, Teams(store))
        who = caller(key(rpm=3))
        seen = [await outcome(check, who) for check in (a, b, a, b)]
        assert [s[0] for s in seen] == ["admitted"] * 3 + ["refused"]
        remaining = [s[1]["x-ratelimit-remaining-requests"] for s in seen[:3]]
        assert remaining == ["2", "1", "0"]
        assert seen[3][1:4] == (429, "rate_limit_exceeded", "requests")
        assert seen[3][6]["x-ratelimit-remaining-requests"] == "0"
    finally:
        await other.aclose()


async def test_callers_without_limits_make_no_redis_call() -> None:
    # A closed port: any call would fail, so passing proves none was made.
    dead = RedisState(closed_redis_url())
    try:
        store = MemoryStore()
        check = SharedLimits(dead, store, Teams(store))
        assert await check.admit(caller(key()), "m") is None
        assert await check.admit(Caller(role="master"), "m") is None
    finally:
        await dead.aclose()


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.floats(0.0, 40.0)),
        st.tuples(st.just("admit"), st.sampled_from(["key_a", "key_b"])),
        st.tuples(st.just("settle"), st.sampled_from(["key_a", "key_b"]), st.integers(1, 900)),
    ),
    max_size=30,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_local_and_redis_rate_limits_make_the_same_decisions(
    redis_prefix: str, ops: list[tuple[Any, ...]]
) -> None:
    """The same calls at the same (fake) times: the same admissions, refusals and headers."""

    async def run() -> None:
        store = MemoryStore()
        await add_team(store, "t", rpm=5, tpm=2000)
        keys = {
            "key_a": caller(key("key_a", rpm=3, tpm=1000, team="t")),
            "key_b": caller(key("key_b", rpm=4, team="t")),
        }
        clock = Clock(1000.0)
        prefix = f"{redis_prefix}{time.monotonic_ns()}:"
        shared = RedisState(state_url(prefix))
        local = RateLimits(Teams(store), clock=clock)
        redis_check = SharedLimits(shared, store, Teams(store), now=clock)
        asked: set[str] = set()  # a response is settled only after its key was admitted
        try:
            for op in ops:
                if op[0] == "advance":
                    clock.now += op[1]
                elif op[0] == "admit":
                    who = keys[op[1]]
                    asked.add(op[1])
                    assert await outcome(local, who) == await outcome(redis_check, who), op
                elif op[1] in asked:
                    who, usage = keys[op[1]], UsageCounts(input_tokens=op[2])
                    local.settle(who, None, usage)
                    redis_check.settle(who, None, usage)
                    await shared.drain()
            assert shared.failed_writes == 0
        finally:
            await shared.aclose()

    asyncio.run(run())


async def test_a_budget_is_seeded_once_from_the_store_and_spent_on_a_refuses_on_b(
    state: RedisState,
) -> None:
    store = MemoryStore()
    start = T0 + DAY  # the current 1d period
    await store.put(record("resp_old", 5.0, start - 10, api_key_id="key_a"))  # last period
    await store.put(record("resp_1", 0.5, start + 5, api_key_id="key_a"))
    clock = Clock(start + 100)
    other = RedisState(state_url(state.prefix))
    try:
        a = SharedLimits(state, store, Teams(store), clock=clock)
        b = SharedLimits(other, store, Teams(store), clock=clock)
        who = caller(key(max_budget_usd=1.0, budget_period="1d"))
        assert await a.admit(who, "m") is None
        counter = state.key("spend", "key", "key_a", start)
        assert float(await state.client.get(counter)) == pytest.approx(0.5)
        a.settle(who, 0.3, UsageCounts())
        await state.drain()
        # B seeds too (SET NX): A's counter, with A's settled spend, is kept.
        await store.put(record("resp_2", 0.3, start + 50, api_key_id="key_a"))
        assert await b.admit(who, "m") is None
        assert float(await state.client.get(counter)) == pytest.approx(0.8)
        b.settle(who, 0.25, UsageCounts())
        await other.drain()
        with pytest.raises(RequestError) as info:
            await a.admit(who, "m")
        assert info.value.status == 429 and info.value.code == "insufficient_quota"
        assert "$1.05 spent of $1" in info.value.message
        assert info.value.retry_after == pytest.approx(start + DAY - clock.now)
        # A counter lost (Redis restarted) is seeded again from the store.
        await state.client.delete(counter)
        assert await a.admit(who, "m") is None  # the store holds 0.8 of it
        assert float(await state.client.get(counter)) == pytest.approx(0.8)
    finally:
        await other.aclose()


async def test_settles_that_queue_up_go_in_one_pipelined_write(state: RedisState) -> None:
    store = MemoryStore()
    await add_team(store, "t", tpm=6000, max_budget_usd=100.0)
    check = SharedLimits(state, store, Teams(store), clock=Clock(T0 + 100))
    who = caller(key(tpm=600, max_budget_usd=50.0, team="t"))
    await check.admit(who, "m")  # seeds both counters (0 in the store)
    state.settle_script.sha = "0" * 40  # as if Redis had restarted: NOSCRIPT, loaded again
    for _ in range(5):
        check.settle(who, 0.5, UsageCounts(input_tokens=20, output_tokens=10))
    await state.drain()
    assert state.failed_writes == 0
    for owner in (("key", "key_a"), ("team", "t")):
        counter = state.key("spend", *owner, 0)
        assert float(await state.client.get(counter)) == pytest.approx(2.5)
    headers = await check.admit(who, "m")
    assert headers is not None
    assert headers["x-ratelimit-remaining-tokens"] == "450"  # 150 of the key's 600 used


async def test_a_team_budget_refusal_carries_the_rate_limit_headers(state: RedisState) -> None:
    store = MemoryStore()
    await add_team(store, "t", max_budget_usd=0.1)
    await store.put(record("resp_1", 0.2, T0 + 5, api_key_id="key_x", team="t"))
    check = SharedLimits(state, store, Teams(store), clock=Clock(T0 + 100))
    with pytest.raises(RequestError) as info:
        await check.admit(caller(key(rpm=10, team="t")), "m")
    assert info.value.code == "insufficient_quota" and "team 't'" in info.value.message
    assert info.value.retry_after is None  # a lifetime budget
    assert info.value.headers is not None
    assert info.value.headers["x-ratelimit-remaining-requests"] == "9"  # it counted


# -- Redis down ----------------------------------------------------------------------------------


async def test_redis_down_is_a_fast_503_state_unavailable() -> None:
    dead = RedisState(closed_redis_url())
    try:
        store = MemoryStore()
        check = SharedLimits(dead, store, Teams(store))
        started = time.monotonic()
        with pytest.raises(RequestError) as info:
            await check.admit(caller(key(rpm=5)), "m")
        assert time.monotonic() - started < 1.0
        assert info.value.status == 503 and info.value.code == "state_unavailable"
        assert info.value.retry_after == 1.0
        with pytest.raises(RequestError) as info:
            await check.admit(caller(key(max_budget_usd=5.0)), "m")
        assert info.value.code == "state_unavailable"
        assert not await dead.ping()
        # A settle that cannot be written is logged and counted, never lost silently.
        check.settle(caller(key(tpm=5)), 0.1, UsageCounts(input_tokens=3))
        await dead.drain()
        assert dead.failed_writes == 1
    finally:
        await dead.aclose()


async def test_a_hung_redis_times_out_instead_of_hanging_the_request() -> None:
    """A server that accepts and never answers (a hung Redis): 503 after the socket timeout."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = RedisState(f"redis://127.0.0.1:{port}/0")
    try:
        store = MemoryStore()
        check = SharedLimits(hung, store, Teams(store))
        started = time.monotonic()
        with pytest.raises(RequestError) as info:
            await check.admit(caller(key(rpm=5)), "m")
        assert info.value.code == "state_unavailable"
        assert time.monotonic() - started < 1.5
    finally:
        await hung.aclose()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


# -- deployment cooldowns ------------------------------------------------------------------------


def two_deployments() -> dict[str, ModelAlias]:
    return {"m": ModelAlias(deployments=[Deployment(model="groq/a"), Deployment(model="groq/b")])}


async def test_a_deployment_cooled_down_on_a_is_skipped_by_b(state: RedisState) -> None:
    settings_ = RouterSettings(cooldown_s=30.0, allowed_fails=1)
    router_a = Router(settings_, two_deployments())
    router_b = Router(settings_, two_deployments())
    mirror_a = CooldownMirror(state, router_a)
    mirror_b = CooldownMirror(state, router_b)
    dep = router_a.state("m#0")
    assert dep is not None
    assert router_a.failed(dep, UpstreamError(500, "boom"), 0.1)
    await state.drain()
    await mirror_b.refresh()
    b_dep = router_b.state("m#0")
    assert b_dep is not None and b_dep.cooling(router_b.clock())
    assert 29 < b_dep.cooldown_until - router_b.clock() <= 30
    for _ in range(20):
        pick = router_b.pick("m")
        assert pick.state is not None and pick.state.id == "m#1"
    await mirror_a.refresh()  # A's own, longer or equal: unchanged
    assert mirror_a.reachable and mirror_b.reachable


async def test_the_mirror_keeps_routing_locally_when_redis_is_down() -> None:
    dead = RedisState(closed_redis_url())
    try:
        router = Router(RouterSettings(cooldown_s=30.0, allowed_fails=1), two_deployments())
        mirror = CooldownMirror(dead, router)
        await mirror.refresh()
        assert not mirror.reachable
        assert router.pick("m").state is not None
        dep = router.state("m#0")
        assert dep is not None and router.failed(dep, UpstreamError(500, "boom"), 0.1)
        await dead.drain()
        assert dead.failed_writes == 1  # logged, and the local cooldown holds
        assert all(router.pick("m").state.id == "m#1" for _ in range(10))  # type: ignore[union-attr]
    finally:
        await dead.aclose()


# -- deployment rpm/tpm windows ------------------------------------------------------------------


def limited_deployments(**limits: int) -> dict[str, ModelAlias]:
    return {
        "m": ModelAlias(
            deployments=[Deployment(model="groq/a", **limits), Deployment(model="groq/b")]
        )
    }


def one_deployment(**limits: int) -> dict[str, ModelAlias]:
    return {"m": ModelAlias(deployments=[Deployment(model="groq/a", **limits)])}


async def test_a_deployments_rpm_is_shared_by_two_replicas(state: RedisState) -> None:
    clock, wall = Clock(100.0), Clock(T0)
    router_a = Router(RouterSettings(), limited_deployments(rpm=4), clock=clock)
    router_b = Router(RouterSettings(), limited_deployments(rpm=4), clock=clock)
    mirror_a = CooldownMirror(state, router_a, wall=wall)
    mirror_b = CooldownMirror(state, router_b, wall=wall)
    a_dep, b_dep = router_a.state("m#0"), router_b.state("m#0")
    assert a_dep is not None and b_dep is not None
    for _ in range(4):
        router_a.begin(a_dep)
        router_a.finished(a_dep)
    await mirror_a.refresh()
    await mirror_a.refresh()  # written once, never twice
    await mirror_b.refresh()
    assert b_dep.shared_requests == 4 and a_dep.shared_requests == 0
    assert b_dep.limited_for(clock()) is not None
    for _ in range(20):
        pick = router_b.pick("m")
        assert pick.state is not None and pick.state.id == "m#1"
    assert router_b.snapshot()[0]["rpm_used"] == 4
    # B sent m#0 nothing: A sees only its own four (never counted twice)
    await mirror_a.refresh()
    assert a_dep.shared_requests == 0 and a_dep.limited_for(clock()) is not None
    # The window moves on: 60 s later the buckets are out of it, on both replicas.
    clock.now += 61
    wall.now += 61
    await mirror_b.refresh()
    assert b_dep.shared_requests == 0 and b_dep.limited_for(clock()) is None


async def test_a_deployment_full_on_other_replicas_is_limited_here(state: RedisState) -> None:
    clock, wall = Clock(100.0), Clock(T0)
    routers = [Router(RouterSettings(), one_deployment(rpm=4), clock=clock) for _ in range(2)]
    mirrors = [CooldownMirror(state, r, wall=wall) for r in routers]
    deps = [r.state("m#0") for r in routers]
    assert deps[0] is not None and deps[1] is not None
    for _ in range(2):
        routers[0].begin(deps[0])
    routers[1].begin(deps[1])
    for mirror in [*mirrors, *mirrors]:
        await mirror.refresh()
    assert (deps[0].shared_requests, deps[1].shared_requests) == (1, 2)
    assert routers[1].pick("m").state is not None  # 3 of 4
    routers[1].begin(deps[1])
    await mirrors[1].refresh()
    await mirrors[0].refresh()
    pick = routers[0].pick("m")
    assert pick.state is None and pick.reason == "limited"
    assert pick.retry_after is not None and 0 < pick.retry_after <= 60


async def test_a_deployments_tpm_is_shared_by_two_replicas(state: RedisState) -> None:
    clock, wall = Clock(100.0), Clock(T0)
    router_a = Router(RouterSettings(), one_deployment(tpm=1000), clock=clock)
    router_b = Router(RouterSettings(), one_deployment(tpm=1000), clock=clock)
    mirror_a = CooldownMirror(state, router_a, wall=wall)
    mirror_b = CooldownMirror(state, router_b, wall=wall)
    a_dep, b_dep = router_a.state("m#0"), router_b.state("m#0")
    assert a_dep is not None and b_dep is not None
    router_a.begin(a_dep)
    router_a.finished(a_dep, 600)
    await mirror_a.refresh()
    await mirror_b.refresh()
    assert b_dep.shared_tokens == 600 and router_b.pick("m").state is not None
    router_a.begin(a_dep)
    router_a.finished(a_dep, 400)
    await mirror_a.refresh()
    await mirror_b.refresh()
    assert b_dep.shared_tokens == 1000
    pick = router_b.pick("m")
    assert pick.state is None and pick.reason == "limited"
    assert b_dep.headroom(clock()) == 0.0


async def test_deployments_without_rpm_or_tpm_write_nothing(
    state: RedisState, redis_prefix: str
) -> None:
    router = Router(RouterSettings(), two_deployments())
    mirror = CooldownMirror(state, router)
    dep = router.state("m#0")
    assert dep is not None
    router.begin(dep)
    router.finished(dep, 100)
    await mirror.refresh()
    assert await state.client.keys(f"{redis_prefix}*") == []
    assert dep.shared_requests == 0 and dep.shared_tokens == 0


async def test_the_mirror_keeps_local_windows_when_redis_is_down(state: RedisState) -> None:
    clock, wall = Clock(100.0), Clock(T0)
    router = Router(RouterSettings(), limited_deployments(rpm=4), clock=clock)
    other = Router(RouterSettings(), limited_deployments(rpm=4), clock=clock)
    mirror = CooldownMirror(state, router, wall=wall)
    other_mirror = CooldownMirror(state, other, wall=wall)
    other_dep, dep = other.state("m#0"), router.state("m#0")
    assert other_dep is not None and dep is not None
    for _ in range(3):
        other.begin(other_dep)
    await other_mirror.refresh()
    await mirror.refresh()
    assert dep.shared_requests == 3
    dead = RedisState(closed_redis_url())
    try:
        mirror._state = dead  # Redis goes away under the mirror
        await mirror.refresh()
        assert not mirror.reachable and dep.shared_requests == 0
        for _ in range(3):  # local counting, as with one replica
            router.begin(dep)
        assert router.pick("m").state is not None
        router.begin(dep)
        assert all(router.pick("m").state.id == "m#1" for _ in range(10))  # type: ignore[union-attr]
    finally:
        await dead.aclose()


def test_require_redis_answers() -> None:
    require_redis()
