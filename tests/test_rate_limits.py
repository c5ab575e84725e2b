"""Per-key and per-team rpm/tpm in-process (server/access/rate_limits.py) with a fake clock: the
GCRA bucket's math, OpenAI's `x-ratelimit-*` headers, the 429 `rate_limit_exceeded` with its
Retry-After, tokens counted from `settle`; and `max_background` per key and per team
(server/background.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_background import stalled_gateway
from tests.test_server_unit import Env
from turnout.engine.errors import RequestError
from turnout.server.access.rate_limits import Bucket, RateLimits, duration
from turnout.server.access.teams import Teams
from turnout.server.gateway import JsonReply
from turnout.server.pricing import UsageCounts
from turnout.server.request_context import Caller
from turnout.server.stores import MemoryStore
from turnout.server.stores.keys import AuditEntry, StoredKey, StoredTeam

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(key_id: str = "key_a", **settings: Any) -> StoredKey:
    return StoredKey(id=key_id, secret_hash="0" * 64, prefix="sk-tnt-x", created_at=0, **settings)


def caller(stored: StoredKey) -> Caller:
    return Caller(key_id=stored.id, team=stored.team, role="key", key=stored)


async def add_team(store: MemoryStore, name: str, **settings: Any) -> None:
    team = StoredTeam(name=name, created_at=0, **settings)
    await store.put_team(team, AuditEntry("test", "team.create", name, None, None, 0))


def limits(store: MemoryStore | None = None) -> tuple[RateLimits, Clock]:
    clock = Clock()
    return RateLimits(Teams(store or MemoryStore()), clock=clock), clock


async def refused(check: RateLimits, who: Caller) -> RequestError:
    with pytest.raises(RequestError) as info:
        await check.admit(who, "m")
    return info.value


def test_durations_are_written_as_openai_writes_them() -> None:
    assert [duration(s) for s in (0, 0.0004, 0.02, 0.999, 1, 1.5, 8.64, 59.9996)] == [
        "0s", "0s", "20ms", "999ms", "1s", "1.5s", "8.64s", "1m0s",
    ]  # fmt: skip
    assert [duration(s) for s in (60, 61.25, 360, 3600, 3723.5)] == [
        "1m0s", "1m1.25s", "6m0s", "1h0m0s", "1h2m3.5s",
    ]  # fmt: skip


def test_the_bucket_refills_continuously() -> None:
    bucket = Bucket(limit=3)
    assert bucket.remaining(0) == 3 and bucket.wait(0) == 0
    for _ in range(3):
        bucket.take(0, 1)
    assert bucket.remaining(0) == 0 and bucket.used(0) == pytest.approx(60)
    assert bucket.wait(0) == pytest.approx(20)  # one request per 20 s comes back
    assert bucket.remaining(19.9) == 0 and bucket.remaining(20) == 1
    assert bucket.remaining(60) == 3 and bucket.wait(60) == 0
    seven = Bucket(limit=7)
    for _ in range(7):  # 7 * (60/7) is a hair over 60 in floats: still admitted
        assert seven.wait(5) == 0
        seven.take(5, 1)
    assert seven.wait(5) > 0


async def test_rpm_lets_n_through_then_429s_with_headers_and_retry_after() -> None:
    check, clock = limits()
    who = caller(key(rpm=3))
    seen = [await check.admit(who, "m") for _ in range(3)]
    assert [h and h["x-ratelimit-remaining-requests"] for h in seen] == ["2", "1", "0"]
    assert [h and h["x-ratelimit-reset-requests"] for h in seen] == ["20s", "40s", "1m0s"]
    assert all(h and h["x-ratelimit-limit-requests"] == "3" for h in seen)
    assert all(h and "x-ratelimit-limit-tokens" not in h for h in seen)  # no tpm: no token family

    error = await refused(check, who)
    assert error.status == 429 and error.code == "rate_limit_exceeded" and error.type == "requests"
    assert error.retry_after == pytest.approx(20)
    assert "key 'key_a'" in error.message and "Limit 3, Used 3" in error.message
    assert "try again in 20s" in error.message
    assert error.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }
    clock.now += 5
    assert (await refused(check, who)).retry_after == pytest.approx(15)  # refusals don't count
    clock.now += 15
    headers = await check.admit(who, "m")
    assert headers is not None and headers["x-ratelimit-remaining-requests"] == "0"


async def test_tpm_counts_the_tokens_settled_and_waits_off_a_debt() -> None:
    check, clock = limits()
    who = caller(key(tpm=100))
    headers = await check.admit(who, "m")
    assert headers == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "0s",
    }
    check.settle(who, None, UsageCounts(input_tokens=40, output_tokens=20, cached_tokens=10))
    headers = await check.admit(who, "m")
    assert headers is not None and headers["x-ratelimit-remaining-tokens"] == "40"
    assert headers["x-ratelimit-reset-tokens"] == "36s"  # 60 tokens at 0.6 s each
    check.settle(who, None, UsageCounts(input_tokens=70, output_tokens=20))  # 150: a debt of 50
    error = await refused(check, who)
    assert error.type == "tokens" and error.code == "rate_limit_exceeded"
    assert error.retry_after == pytest.approx(30.6)  # the 50 paid back, then one token
    assert "tokens per min (TPM): Limit 100, Used 150" in error.message
    assert error.headers is not None and error.headers["x-ratelimit-remaining-tokens"] == "0"
    assert error.headers["x-ratelimit-reset-tokens"] == "1m30s"
    clock.now += 30.6
    assert await check.admit(who, "m") is not None


async def test_a_team_limit_is_shared_by_its_keys_and_the_tighter_one_is_reported() -> None:
    store = MemoryStore()
    await add_team(store, "research", rpm=2)
    check, _clock = limits(store)
    ada = caller(key("key_ada", team="research", rpm=10))
    bob = caller(key("key_bob", team="research"))
    first = await check.admit(ada, "m")
    assert first is not None and first["x-ratelimit-limit-requests"] == "2"  # the team's
    assert first["x-ratelimit-remaining-requests"] == "1"
    second = await check.admit(bob, "m")
    assert second is not None and second["x-ratelimit-remaining-requests"] == "0"
    error = await refused(check, ada)
    assert "team 'research'" in error.message and error.retry_after == pytest.approx(30)
    other = caller(key("key_eve", team="elsewhere"))
    assert await check.admit(other, "m") is None


async def test_team_tokens_are_settled_for_every_key_of_the_team() -> None:
    store = MemoryStore()
    await add_team(store, "ops", tpm=50)
    check, _clock = limits(store)
    ada, bob = caller(key("key_ada", team="ops")), caller(key("key_bob", team="ops"))
    await check.admit(ada, "m")
    check.settle(ada, None, UsageCounts(input_tokens=30, output_tokens=25))
    assert (await refused(check, bob)).type == "tokens"


async def test_callers_without_limits_get_no_headers_and_cost_nothing() -> None:
    check, _clock = limits()
    for who in (Caller(), Caller(role="master", key_id="key_m"), caller(key())):
        assert await check.admit(who, "m") is None
        check.settle(who, 1.0, UsageCounts(input_tokens=10**6))
    assert await check.admit(caller(key("key_b", tpm=10)), "m") is not None


async def test_a_changed_limit_applies_at_once_and_keeps_the_fill() -> None:
    check, _clock = limits()
    await check.admit(caller(key(rpm=2)), "m")
    await check.admit(caller(key(rpm=2)), "m")
    await refused(check, caller(key(rpm=2)))
    headers = await check.admit(caller(key(rpm=4)), "m")  # raised by the admin: 2 used of 4
    assert headers is not None and headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-reset-requests"] == "45s"  # 3 used, 15 s each


# -- max_background per key and per team --------------------------------------------------------


async def test_max_background_per_key_and_per_team() -> None:
    env = Env()
    await add_team(env.store, "ops", max_background=2)
    gw, _streams = stalled_gateway(env)
    ada = caller(key("key_ada", team="ops", max_background=1))
    bob = caller(key("key_bob", team="ops"))
    body = {"model": "fake/x", "input": "hi", "background": True}
    first = await gw.create(body, ada)
    assert isinstance(first, JsonReply)
    with pytest.raises(RequestError) as info:
        await gw.create(body, ada)
    error = info.value
    assert error.status == 429 and error.param == "background"
    assert error.code == "rate_limit_exceeded" and error.retry_after == 5.0
    assert "key 'key_ada'" in error.message and "max_background (1)" in error.message
    assert isinstance(await gw.create(body, bob), JsonReply)  # the team's second slot
    with pytest.raises(RequestError) as info:
        await gw.create(body, bob)
    assert "team 'ops'" in info.value.message and "max_background (2)" in info.value.message
    assert isinstance(await gw.create(body, caller(key("key_eve"))), JsonReply)
    assert gw.background.running() == 3
    await gw.background.cancel(first.response["id"])
    assert isinstance(await gw.create(body, ada), JsonReply)  # its slot is free again
    await gw.aclose()


async def test_the_background_cap_429_carries_the_rate_limit_headers() -> None:
    env = Env()
    gw, _streams = stalled_gateway(env)
    who = caller(key(rpm=100, max_background=0))
    with pytest.raises(RequestError) as info:
        await gw.create({"model": "fake/x", "input": "hi", "background": True}, who)
    assert info.value.headers is not None
    assert info.value.headers["x-ratelimit-remaining-requests"] == "99"
    await gw.aclose()
