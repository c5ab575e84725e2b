"""Cost from usage: genai-prices figures checked against hand-computed ones from the published
rates, config overrides and their precedence, and every recorded provider reply
(tests/fixtures/providers) priced from the usage the builder derives from it, in any chunking.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_fixture_replay import CASES, FIXTURES, REGISTRY, _build, _ops
from turnout.server.pricing import GENAI_PROVIDERS, PriceBook, UsageCounts, usage_counts

# Published list prices, dollars per million tokens: (input, cache read, cache write, output).
# Written by hand from the providers' price pages, independent of genai-prices' data.
RATES: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("anthropic", "claude-sonnet-4-5"): ("3", "0.30", "3.75", "15"),
    ("vertex_ai", "claude-sonnet-4-5@20250929"): ("3", "0.30", "3.75", "15"),
    # Bedrock cross-region ("us.") Claude Sonnet 4.5 carries a 10 % regional premium.
    ("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"): ("3.3", "0.33", "4.125", "16.5"),
    ("gemini", "gemini-2.5-flash"): ("0.30", "0.03", "0.30", "2.50"),
    ("vertex_ai", "gemini-2.5-flash"): ("0.30", "0.03", "0.30", "2.50"),
    ("openai", "gpt-4o"): ("2.50", "1.25", "2.50", "10"),
    ("openai_chat", "gpt-4o"): ("2.50", "1.25", "2.50", "10"),
    ("azure", "gpt-4o"): ("2.50", "1.25", "2.50", "10"),
    ("mistral", "magistral-medium-latest"): ("2", "2", "2", "5"),
    ("openrouter", "anthropic/claude-sonnet-4.5"): ("3", "0.30", "3.75", "15"),
    ("xai", "grok-4"): ("3", "0.75", "3", "15"),
    ("groq", "llama-3.3-70b-versatile"): ("0.59", "0.59", "0.59", "0.79"),
}
# The model each recorded fixture is priced as (the recordings' own models are older or
# anonymised); deepseek's price depends on the time of day, so it is priced by override.
FIXTURE_MODEL = {
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
    "vertex_ai": "gemini-2.5-flash",
    "bedrock": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    "openai": "gpt-4o",
    "azure": "gpt-4o",
    "openai_chat": "gpt-4o",
    "mistral": "magistral-medium-latest",
    "openrouter": "anthropic/claude-sonnet-4.5",
}
OVERRIDE = {"input_per_mtok": 0.5, "cached_input_per_mtok": 0.1, "output_per_mtok": 2}


def by_hand(rates: tuple[str, str, str, str], u: UsageCounts) -> float:
    inp, read, write, out = (Decimal(r) for r in rates)
    fresh = u.input_tokens - u.cached_tokens - u.cache_write_tokens
    total = fresh * inp + u.cached_tokens * read + u.cache_write_tokens * write
    return float((total + u.output_tokens * out) / 1_000_000)


@pytest.mark.parametrize(("provider", "model"), sorted(RATES))
def test_price_data_matches_published_rates(provider: str, model: str) -> None:
    book = PriceBook()
    # Cached, cache-write and reasoning tokens all present: none may be dropped or double billed.
    u = UsageCounts(
        input_tokens=12_000, cached_tokens=3_000, cache_write_tokens=1_500, output_tokens=900,
        reasoning_tokens=400,
    )  # fmt: skip
    price = book.cost(provider, model, u, created_at=1_765_552_659)
    assert price is not None and price.source == "genai-prices"
    assert price.cost == pytest.approx(by_hand(RATES[provider, model], u), rel=1e-9)


def test_cached_tokens_are_cheaper_not_dropped() -> None:
    """anchor-failures 13: a cached token costs its cache-read rate, not zero, not full price."""
    book = PriceBook()
    fresh = book.cost("anthropic", "claude-sonnet-4-5", UsageCounts(1000, 0, 0, 0, 0))
    cached = book.cost("anthropic", "claude-sonnet-4-5", UsageCounts(1000, 1000, 0, 0, 0))
    assert fresh is not None and cached is not None
    assert fresh.cost == pytest.approx(0.003)
    assert cached.cost == pytest.approx(0.0003)


def test_unknown_price_is_none_and_no_usage_costs_nothing() -> None:
    book = PriceBook()
    assert book.cost("groq", "no-such-model", UsageCounts(10, 0, 0, 5, 0)) is None
    assert book.cost("ollama", "llama3", UsageCounts(10, 0, 0, 5, 0)) is None  # self-hosted
    assert book.cost("nowhere", "x", UsageCounts(10, 0, 0, 5, 0)) is None
    empty = book.cost("groq", "no-such-model", UsageCounts())
    assert empty is not None and empty.cost == 0.0


def test_override_precedence_and_rates() -> None:
    book = PriceBook(
        {
            "ollama/*": {"input_per_mtok": 0, "output_per_mtok": 0},
            "anthropic/claude-sonnet-4-5": {"input_per_mtok": 1, "output_per_mtok": 1},
            "claude": {
                "input_per_mtok": 2,
                "output_per_mtok": 4,
                "cached_input_per_mtok": 0.5,
                "cache_write_per_mtok": 3,
                "reasoning_per_mtok": 8,
                "per_request": 0.01,
            },
        }
    )
    u = UsageCounts(1_000_000, 200_000, 100_000, 500_000, 100_000)
    local = book.cost("ollama", "llama3", u)
    assert local is not None and local.cost == 0.0 and local.source == "config"
    exact = book.cost("anthropic", "claude-sonnet-4-5", u)
    assert exact is not None and exact.cost == pytest.approx(1.5)
    # The alias wins over provider/model: 0.7*2 + 0.2*0.5 + 0.1*3 + 0.4*4 + 0.1*8 + 0.01.
    alias = book.cost("anthropic", "claude-sonnet-4-5", u, alias="claude")
    assert alias is not None and alias.cost == pytest.approx(1.4 + 0.1 + 0.3 + 1.6 + 0.8 + 0.01)
    # The deployment's own pricing wins over everything.
    dep = book.cost(
        "anthropic", "claude-sonnet-4-5", u, alias="claude",
        deployment_pricing={"input_per_mtok": 10, "output_per_mtok": 0},
    )  # fmt: skip
    assert dep is not None and dep.cost == pytest.approx(10.0)


# Published prices per search (dollars per 1,000): Anthropic's web search tool, Google's
# Grounding with Google Search (per grounded prompt on Gemini 2.5, per query on Gemini 3).
SEARCH_RATES = {
    ("anthropic", "claude-sonnet-4-5"): "10",
    ("vertex_ai", "gemini-2.5-flash"): "35",
    ("gemini", "gemini-2.5-flash"): "35",
    ("gemini", "gemini-3-flash-preview"): "14",
}


@pytest.mark.parametrize(("provider", "model"), sorted(SEARCH_RATES))
def test_web_searches_are_priced_at_the_published_rate(provider: str, model: str) -> None:
    book = PriceBook()
    tokens = UsageCounts(input_tokens=1000, output_tokens=100)
    plain = book.cost(provider, model, tokens)
    searched = book.cost(provider, model, UsageCounts(**{**vars_of(tokens), "web_searches": 3}))
    assert plain is not None and searched is not None
    per_search = Decimal(SEARCH_RATES[provider, model]) / 1000
    assert searched.cost == pytest.approx(plain.cost + float(3 * per_search))


def test_web_searches_cost_nothing_where_the_catalogue_has_no_search_price() -> None:
    book = PriceBook()
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    tokens = UsageCounts(input_tokens=1000, output_tokens=100)
    searched = UsageCounts(**{**vars_of(tokens), "web_searches": 3})
    assert book.cost("bedrock", model, searched) == book.cost("bedrock", model, tokens)


def vars_of(counts: UsageCounts) -> dict[str, int]:
    return {name: getattr(counts, name) for name in counts.__dataclass_fields__}


def test_usage_counts_from_a_response_usage_object() -> None:
    usage = {
        "input_tokens": 100,
        "input_tokens_details": {"cached_tokens": 40, "cache_write_tokens": 10},
        "output_tokens": 30,
        "output_tokens_details": {"reasoning_tokens": 20},
        "total_tokens": 130,
    }
    assert usage_counts(usage) == UsageCounts(100, 40, 10, 30, 20)
    assert usage_counts(None) == UsageCounts()
    assert usage_counts({"input_tokens": "x", "output_tokens": -3}) == UsageCounts()


def test_every_mapped_provider_id_exists_in_the_price_data() -> None:
    from genai_prices import data_snapshot

    known = {p.id for p in data_snapshot.get_snapshot().providers}
    assert set(GENAI_PROVIDERS.values()) <= known


def _fixture_cost(provider: str, fixture: str, chunks: list[int] | None) -> tuple[Any, ...]:
    mapping = REGISTRY.get(provider)
    assert mapping is not None
    events = _build(mapping, _ops(mapping, FIXTURES / fixture, chunks))
    usage = usage_counts(events[-1]["response"]["usage"])
    model = FIXTURE_MODEL.get(provider)
    book = PriceBook({"deepseek/*": OVERRIDE})
    price = book.cost(provider, model or "deepseek-chat", usage, created_at=1_700_000_000)
    return usage, price, model


@pytest.mark.parametrize(("provider", "fixture", "status", "usage", "kinds"), CASES)
def test_recorded_replies_cost_what_their_usage_says(
    provider: str, fixture: str, status: str, usage: tuple[int, int, int, int], kinds: list[str]
) -> None:
    counts, price, model = _fixture_cost(provider, fixture, None)
    assert (counts.input_tokens, counts.cached_tokens, counts.output_tokens,
            counts.reasoning_tokens) == usage  # fmt: skip
    assert price is not None
    if model is None:  # the override: 0.5 fresh, 0.1 cached, 2 output per MTok
        fresh = counts.input_tokens - counts.cached_tokens
        expected = (fresh * 0.5 + counts.cached_tokens * 0.1 + counts.output_tokens * 2) / 1e6
    else:
        expected = by_hand(RATES[provider, model], counts)
    assert price.cost == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("provider", "fixture"),
    [(c[0], c[1]) for c in CASES if not c[1].endswith(".json")],
)
@given(chunks=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_recorded_stream_cost_is_independent_of_chunking(
    provider: str, fixture: str, chunks: list[int]
) -> None:
    assert _fixture_cost(provider, fixture, chunks) == _fixture_cost(provider, fixture, None)


# -- the memoised affine form of calc_price against genai-prices itself ----------------------


def _snapshot_models() -> list[tuple[Any, Any]]:
    from genai_prices import data_snapshot

    return [(p, m) for p in data_snapshot.get_snapshot().providers for m in p.models]


SNAPSHOT_MODELS = _snapshot_models()
_COUNT = st.integers(min_value=0, max_value=3_000_000)


@given(
    index=st.integers(min_value=0, max_value=len(SNAPSHOT_MODELS) - 1),
    counts=st.tuples(*[_COUNT] * 8),  # every UsageCounts field, web searches included
    created_at=st.integers(min_value=1_600_000_000, max_value=1_900_000_000),
)
@settings(max_examples=400, deadline=None)
def test_affine_prices_equal_genai_prices_for_every_model(
    index: int, counts: tuple[int, ...], created_at: int
) -> None:
    """Any model of the snapshot, any usage (valid or not), any date: the fast path gives
    calc_price's figure to the last digit, or fails exactly where calc_price fails."""
    from datetime import UTC, datetime

    from turnout.server.pricing import AffinePrices, _calc_price, _genai_usage

    gp_provider, gp_model = SNAPSHOT_MODELS[index]
    usage = UsageCounts(*counts)
    values = _genai_usage(usage)
    when = datetime.fromtimestamp(created_at, UTC)
    affine = AffinePrices()
    for _ in range(2):  # the first call fits, the second uses the fit
        try:
            expected: Decimal | type[Exception] = _calc_price(gp_provider, gp_model, values, when)
        except Exception as exc:
            expected = type(exc)
        try:
            got: Decimal | type[Exception] = affine.price(gp_provider, gp_model, values, when)
        except Exception as exc:
            got = type(exc)
        assert got == expected


def test_affine_prices_reuse_one_fit_per_price_and_key_set() -> None:
    """The point of the cache: after the first response, other counts with the same non-zero
    keys are priced from the fit, not by calling genai-prices again."""
    from unittest import mock

    import turnout.server.pricing as pricing

    book = PriceBook()
    first = book.cost("openai", "gpt-4o", UsageCounts(input_tokens=100, output_tokens=10))
    assert first is not None
    with mock.patch.object(pricing, "_calc_price", side_effect=AssertionError("slow path")):
        price = book.cost("openai", "gpt-4o", UsageCounts(input_tokens=2000, output_tokens=77))
    assert price is not None
    assert price.cost == pytest.approx(
        by_hand(RATES["openai", "gpt-4o"], UsageCounts(input_tokens=2000, output_tokens=77))
    )


def _tiered_models() -> list[tuple[Any, Any, int]]:
    from genai_prices.types import ModelPrice, TieredPrices

    out = []
    for gp_provider, gp_model in SNAPSHOT_MODELS:
        prices = gp_model.prices
        for price in [prices] if isinstance(prices, ModelPrice) else [c.prices for c in prices]:
            for value in vars(price).values():
                if isinstance(value, TieredPrices):
                    out.extend((gp_provider, gp_model, tier.start) for tier in value.tiers)
    return out


TIERED = _tiered_models()


def test_affine_prices_switch_rates_exactly_at_every_tier_start() -> None:
    """Every tier start of the snapshot: just below, at and just above it, the fast path gives
    calc_price's figure (a tier applies once the input total exceeds its start)."""
    from datetime import UTC, datetime

    from turnout.server.pricing import AffinePrices, _calc_price

    assert len(TIERED) > 50  # the snapshot has tiered prices to check
    when = datetime(2026, 11, 1, tzinfo=UTC)
    affine = AffinePrices()
    for gp_provider, gp_model, start in TIERED:
        for n in (start - 1, start, start + 1, start + 2, 2 * start + 5):
            values = {"input_tokens": n, "cache_read_tokens": n // 3, "output_tokens": 321}
            try:
                expected: Any = _calc_price(gp_provider, gp_model, values, when)
            except Exception as exc:
                expected = type(exc)
            for _ in range(2):
                try:
                    got: Any = affine.price(gp_provider, gp_model, values, when)
                except Exception as exc:
                    got = type(exc)
                assert got == expected, (gp_provider.id, gp_model.id, n)
