"""Budgets end to end: a real `turnout serve` with a master key and a SQLite store whose virtual
keys are written by `tests/keys.py`, called with the official SDK (strict, no retries).

The period is real time, not a faked clock: a key with `budget_period: "4s"` lives through a
whole period in a test (the process's clock cannot be faked from outside; the in-process tests,
tests/test_budgets.py, fake it). A price override makes every token cost a dollar, so one
response spends a $1 budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI, RateLimitError

from tests import oas
from tests.conftest import Gateway, gateway_env, start_gateway, stop_gateway
from tests.keys import make_key, make_team
from tests.simulators import Simulator

MASTER = "sk-master-e2e-budgets-0123456789"
MODEL = "openai/test-model"


@pytest.fixture(scope="module")
def served(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Path]]:
    folder = tmp_path_factory.mktemp("budgets")
    db = folder / "turnout.db"
    config = folder / "turnout.yaml"
    config.write_text(
        f"store: sqlite:///{db}\n"
        f"auth: {{master_key: {MASTER}}}\n"
        "pricing:\n"
        f"  {MODEL}: {{input_per_mtok: 1000000, output_per_mtok: 1000000}}\n"
    )
    gw = start_gateway(config, gateway_env(provider_sim_session), folder / "gateway.log")
    yield gw, db
    stop_gateway(gw)


def ask(sdk: OpenAI) -> Any:
    raw = sdk.responses.with_raw_response.create(model=MODEL, input="Say hi")
    oas.validate_response(raw.http_response.json())
    return raw


def test_a_budget_runs_out_mid_period_then_resets(served: tuple[Gateway, Path]) -> None:
    gw, db = served
    created = int(time.time())
    key, secret = make_key(db, max_budget_usd=1.0, budget_period="4s", created_at=created)
    # Start at the beginning of a period, so the whole story fits in it.
    left = 4 - (time.time() - created) % 4
    if left < 3:
        time.sleep(left + 0.05)
    period_end = created + (int(time.time()) - created) // 4 * 4 + 4
    with gw.client(api_key=secret) as sdk:
        first = ask(sdk).parse()
        assert first.status == "completed" and first.usage is not None
        assert (first.usage.model_dump().get("cost") or 0) >= 1.0  # the budget is spent
        with pytest.raises(RateLimitError) as info:
            ask(sdk)
        error = info.value
        assert error.status_code == 429
        assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
        assert f"key '{key.id}'" in error.message
        assert "of $1 in its current 4s period" in error.message
        assert f"(unix {period_end})" in error.message
        retry_after = int(error.response.headers["retry-after"])
        assert 1 <= retry_after <= 4

        time.sleep(max(0.0, period_end - time.time()) + 0.2)
        again = ask(sdk).parse()  # a new period: nothing spent in it
        assert again.status == "completed"


def test_a_streamed_response_spends_a_lifetime_budget(served: tuple[Gateway, Path]) -> None:
    gw, db = served
    _key, secret = make_key(db, max_budget_usd=1.0)
    with gw.client(api_key=secret) as sdk:
        with sdk.responses.stream(model=MODEL, input="Say hi") as stream:
            final = stream.get_final_response()
        assert final.status == "completed"
        with pytest.raises(RateLimitError) as info:
            ask(sdk)
        assert info.value.code == "insufficient_quota"
        assert "lifetime budget" in info.value.message
        assert "retry-after" not in info.value.response.headers  # it never resets


def test_a_team_budget_is_shared_and_other_keys_are_not_touched(
    served: tuple[Gateway, Path],
) -> None:
    gw, db = served
    make_team(db, "spenders", max_budget_usd=1.0, budget_period="30d")
    _ada, ada = make_key(db, team="spenders")
    _bob, bob = make_key(db, team="spenders")
    _eve, eve = make_key(db)
    with gw.client(api_key=ada) as sdk:
        assert ask(sdk).parse().status == "completed"
    with gw.client(api_key=bob) as sdk, pytest.raises(RateLimitError) as info:
        ask(sdk)
    assert info.value.code == "insufficient_quota" and "team 'spenders'" in info.value.message
    with gw.client(api_key=eve) as sdk:
        assert ask(sdk).parse().status == "completed"
    with gw.client(api_key=MASTER) as sdk:  # the master key has no budget
        assert ask(sdk).parse().status == "completed"
