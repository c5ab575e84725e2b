"""The built-in sinks: JSON lines, Prometheus, an HTTP webhook and OpenTelemetry traces.

Each is registered by `type` name for the config's `logging:` list (see `server/telemetry/base.py`
for the interface and how to add one of your own).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import httpx
import orjson

from turnout.server.private_files import open_private
from turnout.server.redaction import redact
from turnout.server.telemetry.base import QueueSink, Record, Sink, SinkContext, register_sink

__all__ = ["JsonlSink", "OtelSink", "PrometheusSink", "WebhookSink"]

log = logging.getLogger("turnout.telemetry")


@register_sink("jsonl")
class JsonlSink(QueueSink):
    """One JSON object per line, to stdout or appended to a file (`path`, created with mode
    0600: server/private_files.py). Writes happen on a worker thread: a slow disk stalls the
    sink, never the event loop."""

    def __init__(self, config: Mapping[str, Any], ctx: SinkContext) -> None:
        super().__init__(config, ctx)
        self.path = str(config.get("path") or "stdout")
        self._file: TextIO | None = None

    def _open(self) -> TextIO:
        if self._file is None:
            if self.path in ("stdout", "-"):
                self._file = sys.stdout
            else:
                target = Path(self.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                # Records name keys' ids, metadata and errors, with capture prompts too: a new
                # file is the owner's only, and an existing one is made so when it gets prompts.
                captures = self.capture_prompts or self.capture_outputs
                fd = open_private(target, os.O_WRONLY | os.O_APPEND, holds_captures=captures)
                self._file = os.fdopen(fd, "a", encoding="utf-8")
        return self._file

    def _write_lines(self, text: str) -> None:
        out = self._open()
        out.write(text)
        out.flush()

    async def write(self, records: list[dict[str, Any]]) -> None:
        # The whole line is redacted once more: defence in depth for values nobody foresaw.
        text = "".join(
            redact(orjson.dumps(r, default=str).decode(), self.ctx.secrets) + "\n" for r in records
        )
        await asyncio.to_thread(self._write_lines, text)

    async def aclose(self) -> None:
        await super().aclose()
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None


@register_sink("prometheus")
class PrometheusSink(Sink):
    """Counts each record into the app's metrics (a few dict lookups: inline, no queue) and
    turns on `GET /metrics`."""

    def emit(self, record: Record) -> None:
        try:
            self.ctx.metrics.observe(record)
        except Exception:
            log.exception("prometheus sink failed")


@register_sink("webhook")
class WebhookSink(QueueSink):
    """POSTs batches of records as a JSON array to `url`, retrying 429, 5xx and network errors
    with exponential backoff (`retries` times); a batch that still fails is dropped and counted.

    Config: url, headers, batch_size (50), flush_interval_s (2), retries (3), timeout_s (10),
    queue_size (10000), backoff_s (0.5, doubled per retry, capped at 30)."""

    default_batch_size = 50

    def __init__(self, config: Mapping[str, Any], ctx: SinkContext) -> None:
        if not config.get("url"):
            raise ValueError("webhook sink needs a url")
        merged = {"flush_interval_s": 2.0, **config}
        super().__init__(merged, ctx)
        self.url = str(config["url"])
        self.headers = {str(k): str(v) for k, v in (config.get("headers") or {}).items()}
        self.retries = int(config.get("retries", 3))
        self.timeout_s = float(config.get("timeout_s", 10.0))
        self.backoff_s = float(config.get("backoff_s", 0.5))
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.timeout_s)
        await super().start()

    async def write(self, records: list[dict[str, Any]]) -> None:
        assert self._client is not None
        body = orjson.dumps(records, default=str)
        headers = {"content-type": "application/json", **self.headers}
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                reply = await self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}"
            else:
                if reply.status_code < 400:
                    return
                if reply.status_code != 429 and reply.status_code < 500:
                    raise RuntimeError(f"webhook refused the batch: HTTP {reply.status_code}")
                problem = f"HTTP {reply.status_code}"
            if attempt == self.retries:
                raise RuntimeError(f"webhook failed after {attempt + 1} attempts: {problem}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def aclose(self) -> None:
        await super().aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def otel_provider_names(mappings: Any) -> dict[str, str]:
    """Each provider's `gen_ai.provider.name` (OpenTelemetry's GenAI conventions), from its
    mapping's `provider.otel_name`; a provider without one is named by its id."""
    names: dict[str, str] = {}
    for pid in mappings.providers:
        mapping = mappings.get(pid)
        name = mapping.defaults.get("otel_name") if mapping is not None else None
        if name:
            names[pid] = str(name)
    return names


def span_attributes(
    record: Mapping[str, Any], provider_names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The span attributes of one record, GenAI semantic conventions first."""
    provider = record.get("provider")
    usage = record.get("usage") or {}
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": record.get("model"),
        "gen_ai.response.model": record.get("response_model"),
        "gen_ai.response.id": record.get("response_id"),
        "gen_ai.usage.input_tokens": usage.get("input_tokens"),
        "gen_ai.usage.output_tokens": usage.get("output_tokens"),
        "gen_ai.usage.cache_read.input_tokens": usage.get("cached_tokens"),
        "gen_ai.usage.cache_creation.input_tokens": usage.get("cache_write_tokens"),
        "gen_ai.usage.reasoning.output_tokens": usage.get("reasoning_tokens"),
        "gen_ai.request.stream": record.get("stream"),
        "http.response.status_code": record.get("http_status"),
        "turnout.status": record.get("status"),
        "turnout.cost_usd": record.get("cost"),
        "turnout.deployment": record.get("deployment"),
        "turnout.upstream_model": record.get("upstream_model"),
        "turnout.attempts": record.get("attempt_count"),
        "turnout.api_key_id": record.get("api_key_id"),
        "turnout.ttfb_s": (record.get("timings") or {}).get("ttfb_s"),
    }
    if provider:
        name = (provider_names or {}).get(str(provider), str(provider))
        attrs["gen_ai.provider.name"] = name
        attrs["gen_ai.system"] = name  # the attribute's name before semconv 1.37
        attrs["turnout.provider"] = provider
    error = record.get("error")
    if error:
        attrs["error.type"] = str(error.get("code") or "error")
    return {k: v for k, v in attrs.items() if v is not None}


@register_sink("otel")
class OtelSink(QueueSink):
    """One span per request, named `chat {model}` with `gen_ai.*` attributes, exported with
    OTLP/HTTP protobuf to `endpoint` (default http://localhost:4318/v1/traces) by the SDK's
    batch processor, on its own TracerProvider (never the global one).

    Spans are created on the sink's worker with the request's real start and end times; the
    exporter's HTTP calls run on the SDK's own thread."""

    def __init__(
        self, config: Mapping[str, Any], ctx: SinkContext, *, exporter: Any = None
    ) -> None:
        super().__init__(config, ctx)
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        resource = Resource.create({"service.name": str(config.get("service_name") or "turnout")})
        self.provider = TracerProvider(resource=resource)
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(
                endpoint=str(config.get("endpoint") or "http://localhost:4318/v1/traces"),
                headers={str(k): str(v) for k, v in (config.get("headers") or {}).items()},
                timeout=float(config.get("timeout_s", 10.0)),
            )
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        else:  # an in-process exporter (tests): export as each span ends
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("turnout")

    async def write(self, records: list[dict[str, Any]]) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        for record in records:
            start_ns = int(float(record.get("timestamp") or 0) * 1e9)
            total = float((record.get("timings") or {}).get("total_s") or 0.0)
            model = record.get("model") or record.get("response_model") or ""
            span = self.tracer.start_span(
                f"chat {model}".strip(),
                kind=SpanKind.CLIENT,
                start_time=start_ns,
                attributes=span_attributes(record, self.ctx.provider_names),
            )
            if record.get("error"):
                span.set_status(Status(StatusCode.ERROR, str(record["error"].get("message"))))
            span.end(end_time=start_ns + int(total * 1e9))

    async def aclose(self) -> None:
        await super().aclose()
        await asyncio.to_thread(self.provider.shutdown)
