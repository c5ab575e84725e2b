"""Telemetry against real receivers: the OTel SDK's in-memory exporter and a loopback OTLP/HTTP
collector, a loopback webhook (batching, retries, drops), JSON lines on disk, Prometheus text
parsed with prometheus_client's parser; and the app wiring (cost header, usage.cost accepted by
the strict SDK, spend endpoint, slow sinks never delaying a reply)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from tests import oas
from tests.receivers import receiver
from tests.test_server_unit import KEY, Env, FakeMapping, FakeRegistry, sse_events
from turnout.engine.registry import MappingRegistry
from turnout.server.telemetry import QueueSink, SinkContext, Telemetry
from turnout.server.telemetry.sinks import OtelSink, WebhookSink, otel_provider_names

pytestmark = pytest.mark.anyio

FAKE_PRICE = {"input_per_mtok": 1000, "output_per_mtok": 2000}
# FakeDecoder reports 3 input and 2 output tokens: 3*1000/1e6 + 2*2000/1e6.
FAKE_COST = 0.007


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "turnout.request",
        "timestamp": 1_765_552_659.25,
        "response_id": "resp_1",
        "status": "completed",
        "http_status": 200,
        "stream": True,
        "model": "claude",
        "response_model": "claude",
        "provider": "anthropic",
        "upstream_model": "claude-sonnet-4-5",
        "deployment": "anthropic/claude-sonnet-4-5",
        "attempts": [{"provider": "anthropic", "status": 200}],
        "attempt_count": 1,
        "timings": {"total_s": 1.5, "ttfb_s": 0.25},
        "usage": {
            "input_tokens": 100, "cached_tokens": 40, "cache_write_tokens": 10,
            "output_tokens": 30, "reasoning_tokens": 20,
        },
        "cost": 0.00123,
        "cost_source": "genai-prices",
        "api_key_id": "key_abc",
        "metadata": {"team": "search"},
        "error": None,
    }  # fmt: skip
    base.update(changes)
    return base


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


# -- the sink interface and its queue ----------------------------------------------------------


class BlockingSink(QueueSink):
    """Takes one record and then waits until released: a stuck collector. Named in the config
    by import path, which is also how a sink of one's own is plugged in."""

    release: asyncio.Event | None = None
    got: list[dict[str, Any]] = []  # noqa: RUF012 - per-test reset

    async def write(self, records: list[dict[str, Any]]) -> None:
        assert BlockingSink.release is not None
        await BlockingSink.release.wait()
        BlockingSink.got.extend(records)


async def test_full_queue_drops_and_counts_without_blocking() -> None:
    BlockingSink.release, BlockingSink.got = asyncio.Event(), []
    telemetry = Telemetry(
        [{"type": "tests.test_telemetry:BlockingSink", "queue_size": 2, "batch_size": 1}]
    )
    await telemetry.start()
    sink = telemetry.sinks[0]
    assert isinstance(sink, BlockingSink)
    sink.emit(record(response_id="r0"))
    await asyncio.sleep(0.05)  # the worker holds r0
    started = time.perf_counter()
    for i in range(1, 8):
        sink.emit(record(response_id=f"r{i}"))
    assert time.perf_counter() - started < 0.05  # emit never waits
    assert sink.dropped == 5  # r1, r2 queued; r3..r7 refused
    BlockingSink.release.set()
    await sink.drain()
    assert [r["response_id"] for r in BlockingSink.got] == ["r0", "r1", "r2"]
    dropped = metric_samples(telemetry.metrics.render().decode())
    assert dropped["turnout_log_records_dropped_total", (("sink", "sink"),)] == 5
    await telemetry.aclose()


def test_unknown_sink_type_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="unknown logging sink type 'nope'"):
        Telemetry([{"type": "nope"}])


def test_records_are_redacted_and_captures_are_opt_in() -> None:
    secret = "sk-live-very-secret-value-0123"
    ctx = SinkContext(secrets=(secret,))
    sink = WebhookSink({"url": "http://127.0.0.1:9/x"}, ctx)
    leaky = record(
        error={"code": "bad", "message": f"upstream said Bearer abc.def and {secret}"},
        input=[{"content": "my prompt"}],
        output=[{"content": "the answer"}],
    )
    prepared = sink.prepare(leaky)
    text = orjson.dumps(prepared).decode()
    assert secret not in text and "abc.def" not in text
    assert "input" not in prepared and "output" not in prepared
    capturing = WebhookSink(
        {"url": "http://127.0.0.1:9/x", "capture": {"prompts": True, "outputs": True}}, ctx
    )
    both = capturing.prepare(leaky)
    assert both["input"] == [{"content": "my prompt"}]
    assert both["output"] == [{"content": "the answer"}]


# -- OpenTelemetry -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "name"),
    [
        ("gemini", "gcp.gemini"),
        ("vertex_ai", "gcp.vertex_ai"),
        ("bedrock", "aws.bedrock"),
        ("azure_chat", "azure.ai.openai"),
        ("openai_chat", "openai"),
        ("anthropic", "anthropic"),  # no otel_name: the provider id
        ("groq", "groq"),
    ],
)
async def test_otel_provider_names_come_from_the_mappings(provider: str, name: str) -> None:
    names = otel_provider_names(MappingRegistry.load())
    exporter = InMemorySpanExporter()
    sink = OtelSink({"type": "otel"}, SinkContext(provider_names=names), exporter=exporter)
    await sink.start()
    sink.emit(record(provider=provider))
    await sink.drain()
    (span,) = exporter.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.provider.name"] == name == attrs["gen_ai.system"]
    assert attrs["turnout.provider"] == provider
    await sink.aclose()


async def test_otel_spans_follow_the_genai_conventions() -> None:
    exporter = InMemorySpanExporter()
    sink = OtelSink({"type": "otel"}, SinkContext(), exporter=exporter)
    await sink.start()
    sink.emit(record())
    sink.emit(record(response_id=None, status="error", provider=None, http_status=400,
                     error={"code": "model_not_found", "message": "no"}))  # fmt: skip
    await sink.drain()
    ok, failed = exporter.get_finished_spans()
    assert ok.name == "chat claude"
    attrs = dict(ok.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "anthropic" == attrs["gen_ai.system"]
    assert attrs["gen_ai.request.model"] == "claude"
    assert attrs["gen_ai.response.model"] == "claude"
    assert attrs["gen_ai.response.id"] == "resp_1"
    assert attrs["gen_ai.usage.input_tokens"] == 100
    assert attrs["gen_ai.usage.output_tokens"] == 30
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 40
    assert attrs["turnout.cost_usd"] == 0.00123
    assert attrs["turnout.deployment"] == "anthropic/claude-sonnet-4-5"
    # The request's real start and duration (float seconds: microsecond precision).
    assert ok.start_time is not None and ok.end_time is not None
    assert abs(ok.start_time - 1_765_552_659_250_000_000) < 1_000
    assert abs(ok.end_time - ok.start_time - 1_500_000_000) < 1_000
    assert failed.status.status_code.name == "ERROR"
    assert dict(failed.attributes or {})["error.type"] == "model_not_found"
    await sink.aclose()


async def test_otlp_http_export_reaches_a_collector() -> None:
    with receiver("/v1/traces") as collector:
        sink = OtelSink({"type": "otel", "endpoint": collector.url}, SinkContext())
        await sink.start()
        for i in range(3):
            sink.emit(record(response_id=f"resp_{i}"))
        await sink.drain()
        await sink.aclose()  # shuts the SDK's batch processor down: it exports what it holds
        collector.wait_for(1)
    assert collector.content_types[0] == "application/x-protobuf"
    spans = []
    for body in collector.bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert resource["service.name"] == "turnout"
            for scope in resource_spans.scope_spans:
                spans.extend(scope.spans)
    assert len(spans) == 3
    ids = sorted(
        a.value.string_value for s in spans for a in s.attributes if a.key == "gen_ai.response.id"
    )
    assert ids == ["resp_0", "resp_1", "resp_2"]


# -- webhook -----------------------------------------------------------------------------------


async def test_webhook_batches() -> None:
    with receiver() as hook:
        sink = WebhookSink(
            {"url": hook.url, "batch_size": 3, "flush_interval_s": 0.2}, SinkContext()
        )
        await sink.start()
        for i in range(7):
            sink.emit(record(response_id=f"r{i}"))
        await sink.drain()
        await sink.aclose()
    batches = [orjson.loads(b) for b in hook.bodies]
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [r["response_id"] for b in batches for r in b] == [f"r{i}" for i in range(7)]


async def test_webhook_retries_after_500s() -> None:
    with receiver() as hook:
        hook.statuses = [500, 503]
        sink = WebhookSink(
            {"url": hook.url, "retries": 3, "backoff_s": 0.01, "flush_interval_s": 0},
            SinkContext(),
        )
        await sink.start()
        sink.emit(record())
        await sink.drain()
        await sink.aclose()
    assert len(hook.bodies) == 3  # 500, 503, then 200
    assert sink.written == 1 and sink.dropped == 0
    assert all(orjson.loads(b)[0]["response_id"] == "resp_1" for b in hook.bodies)


async def test_webhook_gives_up_and_counts_the_drop() -> None:
    telemetry_drops: list[tuple[str, int]] = []
    with receiver() as hook:
        hook.statuses = [500] * 10
        sink = WebhookSink(
            {"url": hook.url, "retries": 1, "backoff_s": 0.01, "flush_interval_s": 0},
            SinkContext(on_drop=lambda name, n: telemetry_drops.append((name, n))),
        )
        await sink.start()
        sink.emit(record())
        sink.emit(record())
        await sink.drain()
        await sink.aclose()
    assert sink.dropped == 2 and sink.written == 0
    assert sum(n for _, n in telemetry_drops) == 2


# -- through the app ---------------------------------------------------------------------------


def app_env(tmp_path: Path, *sinks: dict[str, Any]) -> Env:
    return Env(
        logging=[
            {"type": "jsonl", "path": str(tmp_path / "requests.jsonl")},
            {"type": "prometheus"},
            *sinks,
        ],
        pricing={"fake/*": FAKE_PRICE},
    )


def jsonl(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "requests.jsonl"
    return [orjson.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def wait_lines(tmp_path: Path, count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        lines = jsonl(tmp_path)
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} log lines, got {len(jsonl(tmp_path))}")


async def test_cost_everywhere_and_stream_equals_json(tmp_path: Path) -> None:
    env = app_env(tmp_path)
    async with AsyncTestClient(app=env.app()) as client:
        headers = {"authorization": "Bearer user-key-0123456789"}
        body = {"model": "fake/x", "input": "hi", "metadata": {"team": "search"}}
        reply = await client.post("/v1/responses", json=body, headers=headers)
        assert reply.status_code == 200
        assert reply.headers["x-turnout-cost"] == "0.007"
        response = reply.json()
        assert response["usage"]["cost"] == pytest.approx(FAKE_COST)
        # OpenAI's schema and the SDK's strict parsing both accept usage.cost.
        oas.validate_response(response)
        oas.validate_response_sdk(response)
        oas.validate_open_responses(response)
        stream = await client.post("/v1/responses", json={**body, "stream": True})
        assert "x-turnout-cost" not in stream.headers  # a stream's cost is known at its end
        events = sse_events(stream.text)
        for event in events:
            oas.validate_event_sdk(event)
        final = events[-1]["response"]
        assert final["usage"]["cost"] == response["usage"]["cost"]
        stored = await env.store.get(final["id"])
        assert stored is not None and stored.cost == pytest.approx(FAKE_COST)
        assert stored.input_tokens == 3 and stored.output_tokens == 2
        assert stored.tags == {"team": "search"}
        assert (await client.get(f"/v1/responses/{final['id']}")).json()["usage"]["cost"] == (
            pytest.approx(FAKE_COST)
        )
        lines = await wait_lines(tmp_path, 2)
        first, second = lines
        assert first["response_id"] == response["id"] and second["response_id"] == final["id"]
        assert first["stream"] is False and second["stream"] is True
        assert first["cost"] == second["cost"] == pytest.approx(FAKE_COST)
        assert first["usage"]["input_tokens"] == 3
        assert first["provider"] == "fake" and first["upstream_model"] == "x"
        assert first["status"] == "completed" and first["attempt_count"] == 1
        assert first["api_key_id"].startswith("key_") and second["api_key_id"] is None
        assert first["metadata"] == {"team": "search"}
        assert 0 <= first["timings"]["ttfb_s"] <= first["timings"]["total_s"]
        assert "input" not in first and "output" not in first
        log_text = (tmp_path / "requests.jsonl").read_text()
        assert "user-key-0123456789" not in log_text and KEY not in log_text

        scrape = await client.get("/metrics")
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        assert scrape.headers["content-type"] == CONTENT_TYPE_LATEST
        assert scrape.headers["content-type"].count("charset") == 1
        scraped = metric_samples(scrape.text)
        labels = (("deployment", ""), ("model", "fake/x"), ("provider", "fake"))
        assert scraped["turnout_cost_usd_total", labels] == pytest.approx(2 * FAKE_COST)
        assert scraped["turnout_tokens_total", (*labels[:2], ("provider", "fake"),
                                                ("type", "input"))] == 6  # fmt: skip
        assert scraped["turnout_in_flight_requests", ()] == 0
        done = (*labels[:2], ("provider", "fake"), ("status", "completed"))
        assert scraped["turnout_requests_total", (*done, ("stream", "false"))] == 1
        assert scraped["turnout_requests_total", (*done, ("stream", "true"))] == 1


async def test_errors_before_the_reply_are_recorded(tmp_path: Path) -> None:
    env = app_env(tmp_path)
    async with AsyncTestClient(app=env.app()) as client:
        reply = await client.post("/v1/responses", json={"model": "nope/x", "input": "hi"})
        assert reply.status_code == 400
        env.upstream.status = 429
        await client.post("/v1/responses", json={"model": "fake/x", "input": "hi"})
        unknown, limited = await wait_lines(tmp_path, 2)
        assert unknown["status"] == "error" and unknown["http_status"] == 400
        assert unknown["error"]["code"] == "model_not_found" and unknown["response_id"] is None
        assert limited["http_status"] == 429 and limited["error"]["code"] == "rate_limit_exceeded"
        scraped = metric_samples((await client.get("/metrics")).text)
        errors = {k[1]: v for k, v in scraped.items() if k[0] == "turnout_errors_total"}
        assert sum(errors.values()) == 2


async def test_unknown_price_is_null_and_counted(tmp_path: Path) -> None:
    env = Env(logging=[{"type": "prometheus"}])
    async with AsyncTestClient(app=env.app()) as client:
        for _ in range(2):
            reply = await client.post("/v1/responses", json={"model": "fake/x", "input": "hi"})
            assert reply.status_code == 200 and "x-turnout-cost" not in reply.headers
            assert reply.json()["usage"]["cost"] is None
        scraped = metric_samples((await client.get("/metrics")).text)
        assert scraped["turnout_unknown_prices_total", (("model", "x"), ("provider", "fake"))] == 2


async def test_metrics_are_off_without_the_prometheus_sink() -> None:
    async with AsyncTestClient(app=Env().app()) as client:
        assert (await client.get("/metrics")).status_code == 404


async def test_a_slow_webhook_never_delays_a_reply(tmp_path: Path) -> None:
    with receiver(delay_s=2.0) as hook:
        env = app_env(
            tmp_path,
            {"type": "webhook", "url": hook.url, "batch_size": 1, "flush_interval_s": 0,
             "queue_size": 2, "retries": 0, "name": "slowhook"},
        )  # fmt: skip
        async with AsyncTestClient(app=env.app()) as client:
            started = time.perf_counter()
            for stream in (False, True, False, True, False, True):
                reply = await client.post(
                    "/v1/responses", json={"model": "fake/x", "input": "hi", "stream": stream}
                )
                assert reply.status_code == 200
            # Six replies while the hook sleeps 2 s on the first record: generous bound.
            assert time.perf_counter() - started < 1.5
            scraped = metric_samples((await client.get("/metrics")).text)
            # One in the hook, two queued, three dropped and counted.
            assert scraped["turnout_log_records_dropped_total", (("sink", "slowhook"),)] == 3
            assert len(await wait_lines(tmp_path, 6)) == 6  # the other sinks lost nothing


async def test_spend_endpoint(tmp_path: Path) -> None:
    env = app_env(tmp_path)
    async with AsyncTestClient(app=env.app()) as client:
        for team in ("a", "a", "b"):
            body = {"model": "fake/x", "input": "hi", "metadata": {"team": team}}
            await client.post("/v1/responses", json=body)
        await client.post("/v1/responses", json={"model": "smart", "input": "hi"})
        by_model = (await client.get("/v1/spend")).json()
        assert by_model["object"] == "spend" and by_model["group_by"] == "model"
        assert by_model["start"] is None and by_model["end"] is None
        rows = {r["key"]: r for r in by_model["data"]}
        assert rows["fake/x"]["requests"] == 3
        assert rows["fake/x"]["cost"] == pytest.approx(3 * FAKE_COST)
        assert rows["smart"]["requests"] == 1
        total = by_model["total"]
        assert total["requests"] == 4 and total["input_tokens"] == 12
        assert total["output_tokens"] == 8
        assert total["cost"] == pytest.approx(4 * FAKE_COST)
        teams = (await client.get("/v1/spend", params={"group_by": "metadata:team"})).json()
        assert {r["key"]: r["requests"] for r in teams["data"]} == {"a": 2, "b": 1, None: 1}
        deployments = (await client.get("/v1/spend?group_by=deployment&model=smart")).json()
        assert [(r["key"], r["requests"]) for r in deployments["data"]] == [("fake/fake-large", 1)]
        future = (await client.get("/v1/spend", params={"start": int(time.time()) + 60})).json()
        assert future["data"] == [] and future["total"]["requests"] == 0
        bad = await client.get("/v1/spend", params={"group_by": "colour"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"


def test_a_bad_sink_stops_start_up_as_a_config_error() -> None:
    from turnout.engine.errors import ConfigError
    from turnout.server.app import create_app
    from turnout.server.config import Settings

    for entry, message in (
        ({"type": "nope"}, "unknown logging sink type 'nope'"),
        ({"type": "webhook"}, "webhook sink needs a url"),
        ({"type": "tests.test_telemetry:record"}, "is not a telemetry Sink class"),
    ):
        with pytest.raises(ConfigError) as err:
            settings = Settings(store="memory://", logging=[entry], config_path="t.yaml")
            create_app(settings, registry=FakeRegistry(FakeMapping()))
        problem = str(err.value.problems[0])
        assert problem.startswith("t.yaml:1:1: logging: ") and message in problem


async def test_capture_puts_prompts_and_outputs_in_the_record(tmp_path: Path) -> None:
    env = Env(
        logging=[
            {"type": "jsonl", "path": str(tmp_path / "requests.jsonl"),
             "capture": {"prompts": True, "outputs": True}},
        ],
    )  # fmt: skip
    async with AsyncTestClient(app=env.app()) as client:
        body = {"model": "fake/x", "input": f"my key is {KEY}", "instructions": "Be brief."}
        await client.post("/v1/responses", json=body)
        (line,) = await wait_lines(tmp_path, 1)
    assert line["instructions"] == "Be brief."
    assert line["input"][0]["content"][0]["text"].startswith("my key is ")
    assert KEY not in orjson.dumps(line).decode()  # captured, and still redacted
    assert line["output"][0]["content"][0]["text"] == "Hello there"
    assert line["cost"] is None and line["cost_source"] is None


async def test_an_abandoned_stream_still_names_its_response_and_provider() -> None:
    """A client that leaves mid-stream gets no stored record (nothing was completed), but its
    telemetry record says which response and which upstream it was."""
    from turnout.server.gateway import StreamReply
    from turnout.server.telemetry import CURRENT, RequestContext

    env = Env()
    ctx = RequestContext(stream=True, model="fake/x", api_key_id=None)
    CURRENT.set(ctx)
    reply = await env.gateway().create({"model": "fake/x", "input": "hi", "stream": True})
    assert isinstance(reply, StreamReply)
    first = await anext(reply.chunks)  # type: ignore[call-overload]
    await reply.chunks.aclose()  # type: ignore[attr-defined]
    assert ctx.response_id == sse_events(first.decode())[0]["response"]["id"]
    assert ctx.provider == "fake" and ctx.upstream_model == "x" and len(ctx.attempts) == 1
