"""The router on its own: strategies, limits, cooldowns, backoff, plans and affinity.

A fake clock drives time and a seeded RNG makes the weighted draws reproducible; no sleeps.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from turnout.engine.errors import UpstreamError
from turnout.engine.state import encode_state
from turnout.server.config import Deployment, ModelAlias, RouterSettings
from turnout.server.router import (
    MAX_WAIT_S,
    SHARED_WAIT_S,
    WINDOW_S,
    Router,
    affinity_of,
    is_context_window_error,
    is_retryable,
)
from turnout.server.stores.base import StoredResponse


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    deployments: list[Deployment],
    *,
    clock: Clock | None = None,
    seed: int = 7,
    models: dict[str, ModelAlias] | None = None,
    **settings: Any,
) -> Router:
    spec = {"g": ModelAlias(deployments=deployments), **(models or {})}
    return Router(RouterSettings(**settings), spec, clock=clock or Clock(), rng=random.Random(seed))


def dep(model: str = "anthropic/m", **kw: Any) -> Deployment:
    return Deployment(model=model, **kw)


def err(status: int, code: str | None = None, message: str = "x", retry_after: float | None = None
        ) -> UpstreamError:  # fmt: skip
    return UpstreamError(status, message, code=code, retry_after=retry_after, provider="p")


# -- strategies --------------------------------------------------------------------------------


def test_weighted_draws_follow_the_weights() -> None:
    router = make([dep(weight=3), dep(weight=1), dep(weight=0), dep(weight=6)], seed=1234)
    n = 20_000
    counts = Counter(router.pick("g").state.id for _ in range(n))  # type: ignore[union-attr]
    assert counts["g#2"] == 0  # weight 0 is a standby
    expected = {"g#0": n * 0.3, "g#1": n * 0.1, "g#3": n * 0.6}
    chi2 = sum((counts[k] - e) ** 2 / e for k, e in expected.items())
    # 2 degrees of freedom: P(chi2 > 13.82) = 0.001 for a fair draw.
    assert chi2 < 13.82, (counts, chi2)


def test_weight_zero_deployments_serve_when_nothing_else_can() -> None:
    clock = Clock()
    router = make([dep(weight=1), dep(weight=0)], clock=clock, allowed_fails=1, cooldown_s=5)
    first = router.groups["g"][0]
    router.failed(first, err(500), 0.1)
    assert router.pick("g").state is router.groups["g"][1]


def test_least_busy_picks_the_fewest_in_flight() -> None:
    router = make([dep(), dep(), dep()], strategy="least-busy")
    a, b, c = router.groups["g"]
    for _ in range(3):
        router.begin(a)
    router.begin(b)
    assert router.pick("g").state is c
    router.begin(c)
    router.begin(c)
    assert router.pick("g").state is b
    router.finished(a)
    router.finished(a)
    router.finished(a)
    assert router.pick("g").state is a


def test_latency_prefers_unmeasured_then_the_fastest_moving_average() -> None:
    router = make([dep(), dep()], strategy="latency")
    a, b = router.groups["g"]
    router.succeeded(a, 0.5)
    assert router.pick("g").state is b  # unmeasured first
    router.succeeded(b, 0.2)
    assert router.pick("g").state is b
    for _ in range(6):
        router.succeeded(b, 2.0)  # b got slow: its average moves past a's
    assert b.latency_ema is not None and b.latency_ema > 0.5
    assert router.pick("g").state is a


def test_usage_picks_the_most_headroom_and_counts_tokens() -> None:
    clock = Clock()
    router = make([dep(rpm=10, tpm=1000), dep(rpm=10, tpm=1000)], clock=clock, strategy="usage")
    a, b = router.groups["g"]
    router.begin(a)
    router.finished(a, tokens=900)
    assert router.pick("g").state is b
    router.begin(b)
    router.begin(b)
    router.finished(b, tokens=100)
    router.finished(b, tokens=100)
    # a: 10% tpm left; b: 80% rpm, 80% tpm left.
    assert router.pick("g").state is b
    assert a.tokens_in_window == 900


# -- limits ------------------------------------------------------------------------------------


def test_rpm_limit_skips_a_deployment_and_all_limited_means_retry_after() -> None:
    clock = Clock()
    router = make([dep(rpm=2), dep(rpm=1)], clock=clock)
    a, b = router.groups["g"]
    router.begin(a)
    clock.now += 10
    router.begin(a)
    assert router.pick("g").state is b
    router.begin(b)
    pick = router.pick("g")
    assert pick.state is None and pick.reason == "limited"
    # a's oldest request is 10 s older than b's: a's slot frees first, 50 s from now.
    assert pick.retry_after == pytest.approx(WINDOW_S - 10)
    clock.now += WINDOW_S - 10 + 0.01
    assert router.pick("g").state is a


def test_tpm_limit_counts_tokens_from_usage() -> None:
    clock = Clock()
    router = make([dep(tpm=100)], clock=clock)
    (a,) = router.groups["g"]
    router.begin(a)
    router.finished(a, tokens=150)
    pick = router.pick("g")
    assert pick.state is None and pick.reason == "limited"
    assert pick.retry_after == pytest.approx(WINDOW_S)
    clock.now += WINDOW_S + 1
    assert router.pick("g").state is a


def test_other_replicas_counts_fill_the_window_with_the_local_ones() -> None:
    # shared_requests/shared_tokens: what the other replicas sent (server/state/cooldowns.py).
    clock = Clock()
    router = make([dep(rpm=3, tpm=100)], clock=clock)
    (a,) = router.groups["g"]
    router.begin(a)
    clock.now += 10
    router.begin(a)
    a.shared_requests = 1
    pick = router.pick("g")
    assert pick.state is None and pick.reason == "limited"
    # 2 local + 1 elsewhere: the local oldest leaves first, 50 s from now
    assert pick.retry_after == pytest.approx(WINDOW_S - 10)
    a.shared_requests = 3  # the others alone fill it: one of their buckets leaves soon
    assert router.pick("g").retry_after == pytest.approx(SHARED_WAIT_S)
    a.shared_requests = 0
    router.finished(a, tokens=40)
    a.shared_tokens = 60
    assert router.pick("g").state is None
    assert a.headroom(clock.now) == 0.0
    a.shared_tokens = 59
    assert router.pick("g").state is a
    assert router.snapshot()[0]["tpm_used"] == 99


# -- cooldown ----------------------------------------------------------------------------------


def test_cooldown_after_allowed_fails_and_recovery() -> None:
    clock = Clock()
    router = make([dep(), dep()], clock=clock, allowed_fails=3, cooldown_s=30)
    a, b = router.groups["g"]
    assert not router.failed(a, err(503), 0.1)
    assert not router.failed(a, err(429), 0.1)
    assert not router.failed(a, err(400), 0.1)  # not retryable: does not count
    assert router.failed(a, err(502), 0.1)
    assert a.cooling(clock())
    assert all(router.pick("g").state is b for _ in range(50))
    snap = {s["id"]: s for s in router.snapshot()}
    assert snap["g#0"]["state"] == "cooling_down"
    assert snap["g#0"]["cooldown_remaining_s"] == pytest.approx(30)
    assert snap["g#1"]["state"] == "healthy"
    clock.now += 30.01
    picked = {router.pick("g").state.id for _ in range(50)}  # type: ignore[union-attr]
    assert picked == {"g#0", "g#1"}
    assert router.snapshot()[0]["state"] == "healthy"


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = Clock()
    router = make([dep()], clock=clock, allowed_fails=2, cooldown_s=30)
    (a,) = router.groups["g"]
    router.failed(a, err(500), 0.1)
    clock.now += WINDOW_S + 1
    assert not router.failed(a, err(500), 0.1)
    assert not a.cooling(clock())


# g has one deployment and falls back to h.
WITH_FALLBACK = {
    "g": ModelAlias(deployments=[dep()], fallbacks=["h"]),
    "h": ModelAlias(deployments=[dep("groq/m")]),
}


def test_everything_cooling_is_reported_with_the_time_left() -> None:
    clock = Clock()
    router = make([], clock=clock, allowed_fails=1, cooldown_s=8, models=WITH_FALLBACK)
    assert router.failed(router.groups["g"][0], err(500), 0.1)  # h is left to serve g
    pick = router.pick("g")
    assert pick.state is None and pick.reason == "cooling"
    assert pick.retry_after == pytest.approx(8)


# -- a cooldown never takes out the last deployment standing (issue 12) --------------------------


def test_the_only_deployment_of_an_alias_is_never_taken_out() -> None:
    """Before: one upstream 500 (three counted attempts) made every client's next request a 503
    no_healthy_deployment for cooldown_s, without any upstream call."""
    clock = Clock()
    router = make([dep()], clock=clock, allowed_fails=1, cooldown_s=30)
    (a,) = router.groups["g"]
    for _ in range(5):
        assert not router.failed(a, err(500), 0.1)
        assert not router.failed(a, err(502, code="upstream_unreachable"), 0.1)
    assert not a.cooling(clock())
    assert router.pick("g").state is a
    assert a.failures_total == 10  # still counted, still visible in /health/deployments


def test_the_last_healthy_deployment_stays_in_when_the_others_cool() -> None:
    clock = Clock()
    router = make([dep(), dep()], clock=clock, allowed_fails=1, cooldown_s=30)
    a, b = router.groups["g"]
    assert router.failed(a, err(500), 0.1)  # b is left
    assert not router.failed(b, err(500), 0.1)  # b is the last one: it stays in
    assert router.pick("g").state is b
    clock.now += 30.01
    assert router.failed(b, err(500), 0.1)  # a is back, so now b may go
    assert router.pick("g").state is a


def test_a_deployment_may_cool_when_a_fallback_alias_can_serve() -> None:
    clock = Clock()
    router = make([], clock=clock, allowed_fails=1, cooldown_s=30, models=WITH_FALLBACK)
    assert router.failed(router.groups["g"][0], err(500), 0.1)


def test_one_client_request_counts_once_toward_allowed_fails() -> None:
    clock = Clock()
    router = make([dep(), dep()], clock=clock, allowed_fails=2, cooldown_s=30)
    a, _b = router.groups["g"]
    assert not router.failed(a, err(500), 0.1)  # request 1, first attempt on a
    assert not router.failed(a, err(500), 0.1, counts=False)  # request 1 retrying a
    assert not router.failed(a, err(500), 0.1, counts=False)
    assert not a.cooling(clock()) and len(a.failures) == 1
    assert router.failed(a, err(500), 0.1)  # request 2: the second failure
    assert a.failures_total == 4


def test_an_unreachable_deployment_is_ejected_at_its_first_failure() -> None:
    clock = Clock()
    router = make([dep(), dep()], clock=clock, allowed_fails=3, cooldown_s=30)
    a, b = router.groups["g"]
    assert router.failed(b, err(502, code="upstream_unreachable"), 0.01)
    assert b.cooling(clock())
    assert not router.failed(a, err(502, code="upstream_unreachable"), 0.01)  # the last one


# -- retries and backoff -----------------------------------------------------------------------


def test_backoff_is_exponential_with_jitter_and_honours_retry_after() -> None:
    router = make([dep()], backoff_s=0.5)
    for failures, base in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0)):
        delays = [router.backoff(failures) for _ in range(200)]
        assert all(base * 0.5 <= d <= base for d in delays)
        assert max(delays) - min(delays) > base * 0.2  # jittered, not constant
    assert router.backoff(20) <= MAX_WAIT_S
    assert router.backoff(1, retry_after=7.0) >= 7.0
    assert router.backoff(1, retry_after=0.0) <= 0.5


def test_retry_prefers_untried_deployments_then_waits_for_retry_after() -> None:
    clock = Clock()
    router = make([dep(), dep()], clock=clock, backoff_s=0.01, allowed_fails=10)
    a, b = router.groups["g"]
    router.failed(a, err(429, retry_after=4.0), 0.1)
    pick = router.pick("g", tried={a.id: 1})
    assert pick.state is b and pick.wait == 0  # an untried deployment: no wait
    router.failed(b, err(500), 0.1)
    pick = router.pick("g", tried={a.id: 1, b.id: 1})
    assert pick.state is not None
    if pick.state is a:
        assert pick.wait >= 4.0  # Retry-After honoured
    else:
        assert pick.wait <= 0.01
    assert router.pick("g", tried={a.id: 1}, exclude={b.id}).wait >= 4.0


def test_retry_after_is_capped() -> None:
    clock = Clock()
    router = make([dep()], clock=clock)
    (a,) = router.groups["g"]
    router.failed(a, err(429, retry_after=3600), 0.1)
    assert a.retry_at - clock() == pytest.approx(MAX_WAIT_S)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(429, True), (500, True), (502, True), (503, True), (504, True), (408, True),
     (400, False), (401, False), (403, False), (404, False), (413, False)],
)  # fmt: skip
def test_retryable_statuses(status: int, expected: bool) -> None:
    assert is_retryable(err(status)) is expected


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, "context_length_exceeded", "This model's maximum context length is 128000 tokens."),
        (400, "invalid_request_error", "anthropic: prompt is too long: 210000 tokens > 200000"),
        (400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number "
         "of tokens allowed (1048576)."),
        (400, "ValidationException", "bedrock: Input is too long for requested model."),
        (400, "ValidationException", "The prompt is too long for this model"),
        (400, None, "vllm: This model's maximum context length is 8192 tokens"),
    ],
)  # fmt: skip
def test_context_window_errors_are_recognised(status: int, code: str, message: str) -> None:
    assert is_context_window_error(err(status, code, message))


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [(400, "invalid_request_error", "temperature: bad"), (500, "context_length_exceeded", "x"),
     (429, None, "too many tokens per minute")],
)  # fmt: skip
def test_other_errors_are_not_context_window_errors(status: int, code: str, message: str) -> None:
    assert not is_context_window_error(err(status, code, message))


# -- plans -------------------------------------------------------------------------------------


def test_fallback_plan_is_depth_first_and_cycle_safe() -> None:
    models = {
        "a": ModelAlias([dep()], fallbacks=["b", "d"], context_window_fallbacks=["long"]),
        "b": ModelAlias([dep()], fallbacks=["c", "a"]),
        "c": ModelAlias([dep()]),
        "d": ModelAlias([dep()], fallbacks=["c"]),
        "long": ModelAlias([dep()], fallbacks=["longer"]),
        "longer": ModelAlias([dep()]),
    }
    router = make([dep()], models=models)
    assert router.plan("a") == ["a", "b", "c", "d"]
    assert router.plan("a", context_window=True) == ["long", "longer"]
    assert router.plan("nope") == []


# -- affinity ----------------------------------------------------------------------------------


def _record(provider: str, deployment_id: str | None, encrypted: str | None) -> StoredResponse:
    output: list[dict[str, Any]] = [{"type": "message", "content": []}]
    if encrypted is not None:
        output.insert(0, {"type": "reasoning", "summary": [], "encrypted_content": encrypted})
    attempts = [{"deployment_id": "x#9", "ok": False}]
    if deployment_id:
        attempts.append({"deployment_id": deployment_id, "ok": True})
    return StoredResponse(
        id="resp_1", created_at=0, model="m", provider=provider, status="completed",
        response={"output": output}, input_items=[], events=None, request={},
        previous_response_id=None, deployment=None, attempts=attempts, cost=None,
    )  # fmt: skip


def test_affinity_follows_the_record_that_minted_the_state() -> None:
    blob = encode_state("anthropic", {"signature": "s"})
    chain = [_record("anthropic", "claude#1", blob), _record("gemini", "claude#2", None)]
    aff = affinity_of([], chain)
    assert aff.deployment == "claude#1" and aff.providers == ("anthropic",)


def test_affinity_from_input_items_alone() -> None:
    assert not affinity_of([{"kind": "text"}])
    entries = [{"kind": "reasoning", "provider": "gemini", "encrypted_content": None}]
    assert affinity_of(entries).providers == ("gemini",)
    native = [{"kind": "reasoning", "provider": None, "encrypted_content": "gAAAA..."}]
    assert affinity_of(native).providers == ("openai", "azure")


def test_affinity_picks_the_minting_deployment_then_its_provider() -> None:
    clock = Clock()
    router = make(
        [dep("gemini/g"), dep("anthropic/a"), dep("anthropic/a"), dep("openai/o")],
        clock=clock, allowed_fails=1, cooldown_s=10,
    )  # fmt: skip
    aff = affinity_of([], [_record("anthropic", "g#2", encode_state("anthropic", {}))])
    assert all(router.pick("g", affinity=aff).state.id == "g#2" for _ in range(30))  # type: ignore[union-attr]
    router.failed(router.groups["g"][2], err(500), 0.1)  # cools down
    assert all(router.pick("g", affinity=aff).state.id == "g#1" for _ in range(30))  # type: ignore[union-attr]
    router.failed(router.groups["g"][1], err(500), 0.1)
    assert router.pick("g", affinity=aff).state.provider in ("gemini", "openai")  # type: ignore[union-attr]


# -- config ------------------------------------------------------------------------------------


def test_the_issue_config_loads(tmp_path: Any) -> None:
    from turnout.server.config import load_config

    path = tmp_path / "turnout.yaml"
    path.write_text(
        """
models:
  claude:
    deployments:
      - {model: anthropic/claude-sonnet-4-5, weight: 3, rpm: 600, tpm: 400000}
      - {model: bedrock/anthropic.claude-sonnet-4-5-v1:0, region: us-east-1, weight: 1,
         timeout_s: 20, api_key: "${BR_KEY}", settings: {x: 1}}
    fallbacks: [gpt]
    context_window_fallbacks: [gemini-long]
  gpt: {deployments: [{model: openai/gpt-4.1}]}
  gemini-long: {deployments: [{model: gemini/gemini-2.5-pro}]}
router:
  strategy: weighted
  retries: 2
  timeout_s: 600
  cooldown_s: 30
  allowed_fails: 3
  backoff_s: 0.25
""",
        encoding="utf-8",
    )
    s = load_config(str(path), {"BR_KEY": "k"})
    assert s.router == RouterSettings("weighted", 2, 600.0, 30.0, 3, 0.25)
    first, second = s.models["claude"].deployments
    assert (first.weight, first.rpm, first.tpm) == (3.0, 600, 400000)
    conn = s.for_deployment(second)
    assert conn.settings == {"region": "us-east-1", "x": 1}
    assert conn.timeout_s == 20.0 and conn.api_key == "k"
    router = Router(s.router, s.models)
    assert router.plan("claude") == ["claude", "gpt"]
    assert router.plan("claude", context_window=True) == ["gemini-long"]
