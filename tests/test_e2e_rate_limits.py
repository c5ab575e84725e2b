"""Rate limits end to end: a real `turnout serve` with a master key and a SQLite store whose
virtual keys are written by `tests/keys.py`, called with the official SDK (strict, no retries):
rpm and tpm per key and per team, OpenAI's `x-ratelimit-*` headers on JSON replies, streams and
429s, and `max_background` per key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI, RateLimitError

from tests import oas
from tests.conftest import Gateway, gateway_env, start_gateway, stop_gateway
from tests.keys import make_key, make_team
from tests.simulators import Hang, Simulator

MASTER = "sk-master-e2e-limits-0123456789"
MODEL = "openai/test-model"
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")  # OpenAI's "6m0s", "20ms"


@pytest.fixture(scope="module")
def served(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Path]]:
    folder = tmp_path_factory.mktemp("limits")
    db = folder / "turnout.db"
    config = folder / "turnout.yaml"
    config.write_text(f"store: sqlite:///{db}\nauth: {{master_key: {MASTER}}}\n")
    gw = start_gateway(config, gateway_env(provider_sim_session), folder / "gateway.log")
    yield gw, db
    stop_gateway(gw)


def create(sdk: OpenAI, **extra: Any) -> Any:
    raw = sdk.responses.with_raw_response.create(model=MODEL, input="Say hi", **extra)
    oas.validate_response(raw.http_response.json())
    assert raw.parse().status == "completed"
    return raw.headers


def test_rpm_lets_n_through_then_a_429_with_the_headers(served: tuple[Gateway, Path]) -> None:
    gw, db = served
    key, secret = make_key(db, rpm=2)
    with gw.client(api_key=secret) as sdk:
        seen = [create(sdk), create(sdk)]
        assert [h["x-ratelimit-limit-requests"] for h in seen] == ["2", "2"]
        assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["1", "0"]
        for headers in seen:
            assert DURATION.match(headers["x-ratelimit-reset-requests"])
            assert "x-ratelimit-limit-tokens" not in headers  # no tpm on this key
        with pytest.raises(RateLimitError) as info:
            create(sdk)
    error = info.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded" and error.type == "requests"
    assert f"key '{key.id}'" in error.message and "Limit 2, Used 2" in error.message
    headers = error.response.headers
    assert 29 <= int(headers["retry-after"]) <= 30  # one request per 30 s comes back
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert DURATION.match(headers["x-ratelimit-reset-requests"])


def test_headers_ride_on_streams_too(served: tuple[Gateway, Path]) -> None:
    gw, db = served
    _key, secret = make_key(db, rpm=100, tpm=100_000)
    with gw.client(api_key=secret) as sdk:
        with sdk.responses.with_streaming_response.create(
            model=MODEL, input="Say hi", stream=True
        ) as raw:
            headers = raw.headers
            events = [line for line in raw.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "99"
    assert headers["x-ratelimit-limit-tokens"] == "100000"
    assert headers["x-ratelimit-remaining-tokens"] == "100000"
    assert headers["x-ratelimit-reset-tokens"] == "0s"


def test_tpm_counts_the_tokens_of_each_response(served: tuple[Gateway, Path]) -> None:
    gw, db = served
    _key, secret = make_key(db, tpm=5)  # fewer than any reply uses
    with gw.client(api_key=secret) as sdk:
        first = sdk.responses.with_raw_response.create(model=MODEL, input="Say hi")
        assert first.headers["x-ratelimit-remaining-tokens"] == "5"
        usage = first.parse().usage
        assert usage is not None and usage.total_tokens > 5
        with pytest.raises(RateLimitError) as info:
            create(sdk)
    error = info.value
    assert error.code == "rate_limit_exceeded" and error.type == "tokens"
    assert f"Limit 5, Used {usage.total_tokens}" in error.message
    headers = error.response.headers
    assert headers["x-ratelimit-remaining-tokens"] == "0" and int(headers["retry-after"]) >= 60


def test_a_team_rpm_is_shared_by_its_keys(served: tuple[Gateway, Path]) -> None:
    gw, db = served
    make_team(db, "research", rpm=2)
    _ada, ada = make_key(db, team="research")
    _bob, bob = make_key(db, team="research", rpm=50)
    with gw.client(api_key=ada) as sdk:
        assert create(sdk)["x-ratelimit-remaining-requests"] == "1"
    with gw.client(api_key=bob) as sdk:
        assert create(sdk)["x-ratelimit-remaining-requests"] == "0"  # the team's, the tighter
        with pytest.raises(RateLimitError) as info:
            create(sdk)
    assert "team 'research'" in info.value.message
    _eve, eve = make_key(db)
    with gw.client(api_key=eve) as sdk:  # no limits: no headers
        assert "x-ratelimit-limit-requests" not in create(sdk)


def test_max_background_per_key(served: tuple[Gateway, Path], sim: Simulator) -> None:
    gw, db = served
    key, secret = make_key(db, max_background=1)
    _other, other_secret = make_key(db)
    sim.script("openai", Hang(), Hang())
    with gw.client(api_key=secret) as sdk, gw.client(api_key=other_secret) as other:
        first = sdk.responses.create(model=MODEL, input="Say hi", background=True)
        assert first.status in ("queued", "in_progress")
        second = None
        try:
            with pytest.raises(RateLimitError) as info:
                sdk.responses.create(model=MODEL, input="Say hi", background=True)
            error = info.value
            assert error.code == "rate_limit_exceeded" and error.param == "background"
            assert f"key '{key.id}'" in error.message and "max_background (1)" in error.message
            assert error.response.headers["retry-after"] == "5"
            second = other.responses.create(model=MODEL, input="Say hi", background=True)
            assert second.status in ("queued", "in_progress")  # another key's own slots
        finally:
            sdk.responses.cancel(first.id)
            if second is not None:
                other.responses.cancel(second.id)
        assert sdk.responses.create(model=MODEL, input="Say hi", background=True).id


def test_a_providers_own_compact_call_is_admitted_and_counted(
    served: tuple[Gateway, Path],
) -> None:
    """openai compacts itself (its mapping's `compact:`): the call bypasses the create path but
    not the key's limits."""
    gw, db = served
    _key, secret = make_key(db, rpm=1)
    with gw.client(api_key=secret) as sdk:
        raw = sdk.responses.with_raw_response.compact(
            model=MODEL, input=[{"role": "user", "content": "Say hi"}]
        )
        assert raw.parse().object == "response.compaction"
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(RateLimitError):
            create(sdk)
