"""Cost and telemetry end to end: a real `turnout serve` process in front of every provider's
simulator, with every sink configured against real loopback receivers.

For each provider, streamed and not, the simulator's deterministic usage (cached, cache-write
and reasoning tokens included) gives a hand-computed cost that must appear, identically, in the
Response (`usage.cost`), the `x-turnout-cost` header (non-streamed), the store, the JSON-lines
log and the webhook; `/metrics` is scraped and parsed with prometheus_client's parser, and the
OTLP/HTTP collector counts the spans."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import (
    PROVIDERS,
    Gateway,
    facts_of,
    gateway_env,
    label_for,
    model_for,
    start_gateway,
    stop_gateway,
)
from tests.receivers import Receiver, receiver
from tests.simulators import Simulator, Thinking
from tests.simulators.turn import compute_usage
from tests.test_pricing import RATES, by_hand
from tests.test_telemetry import metric_samples
from turnout.server.pricing import UsageCounts

# Providers served as "<pid>/test-model" are priced by this glob override (dollars per MTok).
TEST_MODEL_RATES = ("1.5", "0.15", "1.875", "6")
CONFIG_PRICE = (
    '  "*/test-model": {input_per_mtok: 1.5, cached_input_per_mtok: 0.15, '
    "cache_write_per_mtok: 1.875, output_per_mtok: 6}\n"
)


def rates_for(case: str) -> tuple[str, str, str, str]:
    provider, _sep, model = model_for(case).partition("/")
    return RATES.get((provider, model), TEST_MODEL_RATES)


@pytest.fixture(scope="module")
def hooks() -> Iterator[tuple[Receiver, Receiver]]:
    with receiver("/hook") as hook, receiver("/v1/traces") as collector:
        yield hook, collector


@pytest.fixture(scope="module")
def costed(
    provider_sim_session: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
    hooks: tuple[Receiver, Receiver],
) -> Iterator[tuple[Gateway, Path]]:
    hook, collector = hooks
    folder = tmp_path_factory.mktemp("costed")
    log = folder / "requests.jsonl"
    config = folder / "turnout.yaml"
    config.write_text(
        f"store: sqlite:///{folder / 'turnout.db'}\n"
        "pricing:\n" + CONFIG_PRICE + "logging:\n"
        "  - {type: prometheus}\n"
        f"  - {{type: jsonl, path: {log}}}\n"
        f"  - {{type: webhook, url: '{hook.url}', batch_size: 20, flush_interval_s: 0.2}}\n"
        f"  - {{type: otel, endpoint: '{collector.url}'}}\n"
    )
    gw = start_gateway(config, gateway_env(provider_sim_session), folder / "gateway.log")
    yield gw, log
    stop_gateway(gw)


def expected_usage(case: str, body: dict[str, Any], text: str, thought: str) -> UsageCounts:
    u = compute_usage(body, text, [], thought)
    # Anthropic and Bedrock report cache writes but no separate reasoning count (see
    # test_e2e_features.test_usage_is_normalised_like_openai_counts_it).
    fmt = facts_of(case)
    return UsageCounts(
        input_tokens=u.input_total,
        cached_tokens=u.cached,
        cache_write_tokens=u.cache_write if fmt.reports_cache_writes else 0,
        output_tokens=u.output_total,
        reasoning_tokens=u.reasoning if fmt.reports_reasoning_tokens else 0,
    )


def read_jsonl(path: Path, response_id: str) -> dict[str, Any]:
    for _ in range(300):
        if path.exists():
            for line in path.read_text().splitlines():
                entry = orjson.loads(line)
                if entry["response_id"] == response_id:
                    return dict(entry)
        time.sleep(0.01)
    raise AssertionError(f"no log line for {response_id}")


@pytest.mark.parametrize("case", PROVIDERS)
def test_cost_per_provider_streamed_equals_non_streamed(
    case: str, costed: tuple[Gateway, Path], sim: Simulator
) -> None:
    """anchor-failures 13: the same usage costs the same streamed or not, cached, cache-write
    and reasoning tokens each at their own rate; never zero, never the full input rate."""
    gw, log = costed
    thought, text = "I should greet.", "Hello there"
    args: dict[str, Any] = {"model": model_for(case), "input": "Greet me, please."}
    if facts_of(case).asks_for_reasoning:
        args["reasoning"] = {"effort": "low", "summary": "auto"}
    costs = []
    with gw.client() as client:
        for streamed in (False, True):
            sim.script(label_for(case), Thinking(thought=thought, signature="sig", text=text))
            header = None
            if streamed:
                with client.responses.stream(**args) as stream:
                    response = stream.get_final_response()
            else:
                raw = client.responses.with_raw_response.create(**args)
                header = raw.headers.get("x-turnout-cost")
                response = raw.parse()
            usage = expected_usage(case, sim.last.json, text, thought)
            expected = by_hand(rates_for(case), usage)
            assert expected > 0
            assert response.usage is not None
            cost = (response.usage.model_extra or {})["cost"]
            assert cost == pytest.approx(expected, rel=1e-9), (streamed, usage)
            if header is not None:
                assert Decimal(header) == Decimal(str(round(cost, 10)))
            stored = httpx.get(f"{gw.url}/v1/responses/{response.id}", timeout=10).json()
            assert stored["usage"]["cost"] == cost
            entry = read_jsonl(log, response.id)
            assert entry["cost"] == cost and entry["stream"] is streamed
            assert entry["usage"]["cached_tokens"] == usage.cached_tokens
            assert entry["provider"] == label_for(case)
            costs.append(cost)
    assert costs[0] == costs[1]


def test_metrics_spend_webhook_and_traces_agree(
    costed: tuple[Gateway, Path], hooks: tuple[Receiver, Receiver], sim: Simulator
) -> None:
    gw, log = costed
    hook, collector = hooks
    with gw.client() as client:
        for case in ("anthropic", "gemini", "groq"):
            sim.script(label_for(case), Thinking(thought="t", signature="s", text="hi"))
            client.responses.create(model=model_for(case), input="hello", metadata={"app": "e2e"})
    # Every line of the log so far, against the counters scraped from the live process.
    time.sleep(0.3)
    entries = [orjson.loads(line) for line in log.read_text().splitlines()]
    scraped = metric_samples(httpx.get(f"{gw.url}/metrics", timeout=10).text)
    requests = sum(v for k, v in scraped.items() if k[0] == "turnout_requests_total")
    assert requests == len(entries)
    cost = sum(v for k, v in scraped.items() if k[0] == "turnout_cost_usd_total")
    assert cost == pytest.approx(sum(e["cost"] or 0 for e in entries), rel=1e-9)
    assert scraped["turnout_in_flight_requests", ()] == 0
    histograms = {k[0] for k in scraped}
    assert {"turnout_request_duration_seconds_bucket",
            "turnout_time_to_first_byte_seconds_bucket"} <= histograms  # fmt: skip
    dropped = sum(v for k, v in scraped.items() if k[0] == "turnout_log_records_dropped_total")
    assert dropped == 0

    spend = httpx.get(f"{gw.url}/v1/spend", params={"group_by": "metadata:app"}).json()
    tagged = next(r for r in spend["data"] if r["key"] == "e2e")
    assert tagged["requests"] == 3
    assert tagged["cost"] == pytest.approx(
        sum(e["cost"] for e in entries if e["metadata"] == {"app": "e2e"}), rel=1e-9
    )
    assert spend["total"]["requests"] == len(entries)

    # The webhook and the OTLP collector got every record too.
    hook.wait_for(1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        posted = [r for body in list(hook.bodies) for r in orjson.loads(body)]
        if len(posted) >= len(entries):
            break
        time.sleep(0.05)
    assert {r["response_id"] for r in posted} == {e["response_id"] for e in entries}
    deadline = time.monotonic() + 15  # the SDK's batch processor exports every 5 s
    spans = 0
    while time.monotonic() < deadline:
        spans = 0
        for body in list(collector.bodies):
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            spans += sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)
        if spans >= len(entries):
            break
        time.sleep(0.1)
    assert spans == len(entries)


def test_sdk_strict_validation_accepts_usage_cost(
    costed: tuple[Gateway, Path], sim: Simulator
) -> None:
    gw, _ = costed
    sim.script("anthropic", Thinking(thought="t", signature="s", text="hi"))
    client = OpenAI(
        base_url=f"{gw.url}/v1", api_key="k", max_retries=0, _strict_response_validation=True
    )
    with client:
        response = client.responses.create(model="anthropic/claude-sonnet-4-5", input="x")
        assert response.usage is not None
        assert isinstance((response.usage.model_extra or {}).get("cost"), float)
        again = client.responses.retrieve(response.id)
        assert again.usage is not None and again.usage.model_extra == response.usage.model_extra
