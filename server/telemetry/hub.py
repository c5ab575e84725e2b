"""Per-request telemetry: one record per `POST /v1/responses`, fanned out to the sinks.

The route opens a `RequestContext` (`Telemetry.begin`) and closes it once the reply is done
(`Telemetry.finish`): after the JSON body is built, after the last SSE chunk, or when `create`
raised. The gateway fills in what only it knows (provider, deployment, usage, cost, attempts)
through the context variable `CURRENT`, from `finish.Finisher`, right after the store write. So
there is exactly one emission point per request, and it runs after the stored response is
durable: no sink can lose or delay it.

The record (a plain dict, JSON-able), as every sink receives it before its own filtering:

    type            "turnout.request"
    timestamp       float, unix seconds when the request arrived
    response_id     "resp_…" or null (request refused before a response existed)
    status          completed | incomplete | failed | error (before the reply) | cancelled
    http_status     int (200 for every reply that started; the error's status otherwise)
    stream          bool
    model           the model the client asked for (alias or provider/model)
    response_model  the Response's `model` field
    provider        Turnout provider id, or null
    upstream_model  the model id sent upstream, or null
    deployment      the alias deployment that served it, or null
    attempts        [{provider, model, status, …}], attempt_count
    timings         {total_s, ttfb_s}: request → last byte, request → first byte
    usage           {input_tokens, cached_tokens, cache_write_tokens, output_tokens,
                     reasoning_tokens} (OpenAI's count: cached ⊂ input, reasoning ⊂ output)
    cost            US dollars, or null when the price is unknown; cost_source
    api_key_id      "key_…" (a hash of the bearer token) or null
    metadata        the request's metadata tags
    error           {code, message, type} or null
    input, instructions, output   only for sinks with capture.prompts / capture.outputs
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from turnout.server.redaction import secret_values
from turnout.server.telemetry.base import Sink, SinkContext, build_sink
from turnout.server.telemetry.labels import DEFAULT_MAX_LABEL_VALUES
from turnout.server.telemetry.metrics import Metrics

__all__ = ["CURRENT", "RequestContext", "Telemetry"]

log = logging.getLogger("turnout.telemetry")

CURRENT: ContextVar[RequestContext | None] = ContextVar("turnout_request", default=None)

_MAX_WARNED = 10_000  # distinct (provider, model) pairs warned about; later ones only counted


def _max_label_values(sink_configs: Sequence[Mapping[str, Any]]) -> int:
    """The `prometheus` sink's `max_label_values`, else the default."""
    for config in sink_configs:
        if config.get("type") == "prometheus" and config.get("max_label_values"):
            return int(config["max_label_values"])
    return DEFAULT_MAX_LABEL_VALUES


@dataclass(eq=False)
class RequestContext:
    stream: bool
    model: str | None
    api_key_id: str | None
    started: float = field(default_factory=time.perf_counter)
    started_wall: float = field(default_factory=time.time)
    first_byte: float | None = None
    # Filled by the gateway (finish.Finisher) once the reply is terminal.
    response_id: str | None = None
    status: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    response_model: str | None = None
    deployment: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    cost: float | None = None
    cost_source: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    captured: dict[str, Any] = field(default_factory=dict)
    finished: bool = False


class Telemetry:
    """The sinks of one app, plus its Prometheus metrics."""

    def __init__(
        self,
        sink_configs: Sequence[Mapping[str, Any]] = (),
        *,
        env: Mapping[str, str] | None = None,
        extra_secrets: Sequence[str] = (),
        sinks: Sequence[Sink] = (),
        metrics: Metrics | None = None,
        provider_names: Mapping[str, str] | None = None,
        known_models: Iterable[str] = (),
    ) -> None:
        """`known_models`: the configured model names, which always keep their own metric
        series (see server/telemetry/labels.py)."""
        self.metrics = metrics or Metrics(
            max_label_values=_max_label_values(sink_configs), known_models=known_models
        )
        secrets = tuple(
            sorted({*secret_values(env or {}), *(s for s in extra_secrets if len(s) >= 8)},
                   key=len, reverse=True)
        )  # fmt: skip
        self.context = SinkContext(
            on_drop=self._dropped,
            secrets=secrets,
            metrics=self.metrics,
            provider_names=dict(provider_names or {}),
        )
        self.sinks: list[Sink] = [build_sink(c, self.context) for c in sink_configs]
        self.sinks.extend(sinks)
        self.metrics_enabled = any(s.type_name == "prometheus" for s in self.sinks)
        self.capture_prompts = any(s.capture_prompts for s in self.sinks)
        self.capture_outputs = any(s.capture_outputs for s in self.sinks)
        capturing = [s for s in self.sinks if s.capture_prompts or s.capture_outputs]
        self.capture_max_chars = max((s.capture_max_chars for s in capturing), default=0)
        self._warned: set[tuple[str, str]] = set()

    def _dropped(self, sink: str, count: int) -> None:
        self.metrics.dropped.labels(sink).inc(count)

    def unknown_price(self, provider: str, model: str) -> None:
        """Count a response whose cost is unknown; warn once per model."""
        self.metrics.unknown_price(provider, model)
        # Bounded like a metric label: the model id is the client's (any provider/model).
        if (provider, model) not in self._warned and len(self._warned) < _MAX_WARNED:
            self._warned.add((provider, model))
            log.warning(
                "no price for %s/%s: cost recorded as null (add a `pricing:` entry to the config)",
                provider, model,
            )  # fmt: skip

    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()

    async def aclose(self) -> None:
        # Together, so one dead collector does not add its timeout to the others'.
        await asyncio.gather(*(sink.aclose() for sink in self.sinks), return_exceptions=True)

    # -- per request --------------------------------------------------------------------------

    def begin(self, *, stream: bool, model: str | None, api_key_id: str | None) -> RequestContext:
        ctx = RequestContext(stream=stream, model=model, api_key_id=api_key_id)
        CURRENT.set(ctx)
        self.metrics.in_flight.inc()
        return ctx

    @staticmethod
    def mark_first_byte(ctx: RequestContext) -> None:
        if ctx.first_byte is None:
            ctx.first_byte = time.perf_counter()

    def finish(
        self, ctx: RequestContext, *, error: BaseException | None = None, cancelled: bool = False
    ) -> dict[str, Any] | None:
        """Close the request: the record goes to every sink. Idempotent; never raises."""
        if ctx.finished:
            return None
        ctx.finished = True
        self.metrics.in_flight.dec()
        if not self.sinks:
            return None  # nobody listens: building the record would be wasted work per request
        try:
            record = self._record(ctx, error, cancelled)
        except Exception:
            log.exception("could not build the telemetry record")
            return None
        for sink in self.sinks:
            try:
                sink.emit(record)
            except Exception:  # emit must not raise; a sink that does is a bug, logged
                log.exception("telemetry sink %s failed in emit", sink.name)
        return record

    def _record(
        self, ctx: RequestContext, error: BaseException | None, cancelled: bool
    ) -> dict[str, Any]:
        now = time.perf_counter()
        if ctx.first_byte is None:
            ctx.first_byte = now
        status = ctx.status
        http_status = 200
        err = ctx.error
        attempts = ctx.attempts
        provider, deployment = ctx.provider, ctx.deployment
        if error is not None:
            status = "error"
            http_status = int(getattr(error, "status", 500) or 500)
            # Every attempt failed: the trail rides on the error (server/failover.py).
            failed = getattr(error, "attempts", None) or []
            if failed and not attempts:
                attempts = list(failed)
                last = failed[-1]
                provider = provider or last.get("provider")
                if last.get("deployment_id"):  # a configured deployment (else the client's text)
                    deployment = deployment or last.get("deployment")
            err = {
                "code": getattr(error, "code", None) or "server_error",
                "message": str(getattr(error, "message", None) or error),
                "type": getattr(error, "type", None) or type(error).__name__,
            }
        elif status is None:  # the client went away before the terminal event
            status = "cancelled"
        record: dict[str, Any] = {
            "type": "turnout.request",
            "timestamp": ctx.started_wall,
            "response_id": ctx.response_id,
            "status": status,
            "http_status": http_status,
            "stream": ctx.stream,
            "model": ctx.model,
            "response_model": ctx.response_model,
            "provider": provider,
            "upstream_model": ctx.upstream_model,
            "deployment": deployment,
            "attempts": attempts,
            "attempt_count": len(attempts),
            "timings": {
                "total_s": round(now - ctx.started, 6),
                "ttfb_s": round(ctx.first_byte - ctx.started, 6),
            },
            "usage": ctx.usage,
            "cost": ctx.cost,
            "cost_source": ctx.cost_source,
            "api_key_id": ctx.api_key_id,
            "metadata": ctx.metadata,
            "error": err,
        }
        record.update(ctx.captured)
        return record
