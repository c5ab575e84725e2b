"""Hostile input cannot grow the gateway's memory without bound: every structure keyed by what a
client (or an upstream) chooses, such as metric labels, warn-once sets and caches, has a cap."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.test_server_unit import Env
from turnout.server import pricing, source
from turnout.server.config import load_config
from turnout.server.pricing import PriceBook, UsageCounts
from turnout.server.telemetry import Telemetry
from turnout.server.telemetry.labels import DEFAULT_MAX_LABEL_VALUES, OTHER, LabelValues
from turnout.server.telemetry.metrics import Metrics

NAMES = 3000
# Families whose series carry the `model` label; their values are what a flood could grow.
MODEL_FAMILIES = ("turnout_requests", "turnout_request_duration_seconds", "turnout_unknown_prices")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def label_values(text: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in text_string_to_metric_families(text)
        if family.name in MODEL_FAMILIES or label != "model"
        for sample in family.samples
        if label in sample.labels
    }


def count(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def flood(client: AsyncTestClient[Any], names: int, prefix: str = "fake/m") -> None:
    for i in range(names):
        await client.post("/v1/responses", json={"model": f"{prefix}{i}", "input": "hi"})


# -- metric labels -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_model_names_no_upstream_served_fold_into_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = Env(logging=[{"type": "prometheus"}])
    env.upstream.status = 404
    caplog.set_level(logging.CRITICAL)  # 3,000 upstream errors logged are not the point here
    async with AsyncTestClient(app=env.app()) as client:
        await flood(client, NAMES)
        await client.post("/v1/responses", json={"model": "smart", "input": "hi"})
        scrape = (await client.get("/metrics")).text
    # Before: one series per name in every model-labelled family (16.7 MB for 3,000 names).
    assert len(scrape.encode()) < 20_000
    assert label_values(scrape, "model") <= {OTHER, "smart"}
    assert count(scrape, "turnout_errors_total", model=OTHER) == NAMES
    # A configured alias keeps its own series even when its upstream fails.
    assert count(scrape, "turnout_errors_total", model="smart") == 1


@pytest.mark.anyio
async def test_served_model_names_are_bounded_by_max_label_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = 100
    env = Env(logging=[{"type": "prometheus", "max_label_values": cap}])
    caplog.set_level(logging.ERROR)  # one "no price" warning per model
    async with AsyncTestClient(app=env.app()) as client:
        await client.post("/v1/responses", json={"model": "fake/early", "input": "hi"})
        await flood(client, NAMES)
        # Served before the flood: its own series still counts it.
        await client.post("/v1/responses", json={"model": "fake/early", "input": "hi"})
        await client.post("/v1/responses", json={"model": "smart", "input": "hi"})
        scrape = (await client.get("/metrics")).text
    models = label_values(scrape, "model")
    configured = {"smart", "fake/fake-large", "fake-large"}
    # The request families count `fake/…` names, unknown prices the upstream ids (`m…`):
    # each label holds at most `cap` served names besides the configured ones and `other`.
    requested = {m for m in models if m.startswith("fake/")}
    priced = {m for m in models if m.startswith("m") or m == "early"}
    assert len(requested) == len(priced) == cap
    assert models <= requested | priced | configured | {OTHER}
    assert count(scrape, "turnout_requests_total", model="fake/early") == 2
    assert count(scrape, "turnout_requests_total", model="smart") == 1
    assert count(scrape, "turnout_requests_total", model=OTHER) == NAMES - (cap - 1)
    assert count(scrape, "turnout_unknown_prices_total", model=OTHER) == NAMES - (cap - 1)
    assert len(scrape.encode()) < 1_000_000


def test_label_values_keep_configured_and_served_names_then_fold() -> None:
    labels = LabelValues(3, pinned=["claude"])
    assert labels("openai/typo", proven=False) == OTHER  # never served: no series of its own
    assert [labels(f"openai/m{i}") for i in range(5)] == [
        "openai/m0", "openai/m1", "openai/m2", OTHER, OTHER,
    ]  # fmt: skip
    assert labels("openai/m1", proven=False) == "openai/m1"  # served once: kept, even failing
    assert labels("claude", proven=False) == "claude" and labels("") == ""
    assert len(labels) == 3


def test_a_long_value_never_gets_a_series() -> None:
    labels = LabelValues(10)
    assert labels("x" * 257) == OTHER
    assert labels("x" * 256) == "x" * 256


def test_error_codes_are_bounded() -> None:
    metrics = Metrics(max_label_values=5)
    for i in range(50):
        metrics.observe({"provider": "fake", "model": "fake/x", "error": {"code": f"c{i}"}})
    codes = label_values(metrics.render().decode(), "code")
    assert codes == {"c0", "c1", "c2", "c3", "c4", OTHER}


def test_the_default_cap_and_the_config_key() -> None:
    assert Telemetry().metrics.models._cap == DEFAULT_MAX_LABEL_VALUES == 1000
    hub = Telemetry([{"type": "prometheus", "max_label_values": 7}])
    assert hub.metrics.models._cap == hub.metrics.codes._cap == 7


def test_the_config_file_accepts_max_label_values(tmp_path: Any) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text("logging:\n  - {type: prometheus, max_label_values: 50}\n")
    settings = load_config(str(path), {})
    assert Telemetry(settings.logging).metrics.models._cap == 50
    path.write_text("logging:\n  - {type: prometheus, max_label_values: 0}\n")
    with pytest.raises(Exception, match="max_label_values"):
        load_config(str(path), {})


# -- warn-once sets and caches -----------------------------------------------------------------


def test_unknown_price_warnings_stop_at_their_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from turnout.server.telemetry import hub as hub_module

    monkeypatch.setattr(hub_module, "_MAX_WARNED", 5)
    hub = Telemetry()
    with caplog.at_level(logging.WARNING, "turnout.telemetry"):
        for i in range(50):
            hub.unknown_price("openai", f"m{i}")
            hub.unknown_price("openai", f"m{i}")  # once per model
    assert len(hub._warned) == 5
    assert len([r for r in caplog.records if "no price" in r.getMessage()]) == 5


def test_unknown_stream_events_are_reported_within_a_bound(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(source, "_REPORTED_UNKNOWN", set())
    monkeypatch.setattr(source, "_MAX_REPORTED", 10)

    class Mapping:
        provider = "fake"

    with caplog.at_level(logging.WARNING, "turnout.gateway"):
        source._report_unknown_events(Mapping(), {f"event.{i}": 1 for i in range(100)})  # type: ignore[arg-type]
        source._report_unknown_events(Mapping(), {"event.0": 1})  # once per type
    assert len(source._REPORTED_UNKNOWN) == 10
    assert len(caplog.records) == 10


def test_price_lookups_are_a_bounded_lru(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pricing, "_CACHE_SIZE", 20)
    book = PriceBook()
    usage = UsageCounts(input_tokens=10, output_tokens=5)
    assert book.cost("openai", "gpt-4o", usage) is not None
    for i in range(200):
        assert book.cost("openai", f"made-up-{i}", usage) is None
        assert book.cost("openai", "gpt-4o", usage) is not None  # used: never the one evicted
    assert len(book._lookups) == 20
    assert ("openai", False, "gpt-4o") in book._lookups
