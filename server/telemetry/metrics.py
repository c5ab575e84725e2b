"""Prometheus metrics on a registry of Turnout's own (never the global default registry, so two
apps in one process, as in tests, do not collide).

Always present: in-flight requests, dropped log records, unknown prices. The per-request
families (requests, latencies, tokens, cost, errors) are filled by the `prometheus` sink
(`logging: [{type: prometheus}]`), which also turns `GET /metrics` on.

Label values a client or an upstream decides (`model`, the error `code`) are bounded by
`LabelValues` (server/telemetry/labels.py): past `max_label_values` distinct values a new one is
counted as `other`. `provider`, `deployment`, `sink`, `status`, `stream` and `type` come from the
mappings, the config or a fixed set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from turnout.server.telemetry.labels import DEFAULT_MAX_LABEL_VALUES, LabelValues

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "UpstreamSlotsLike"]


class UpstreamSlotsLike(Protocol):
    in_use: int
    waits: int
    timeouts: int
    wait_seconds: float


class _SlotsCollector(Collector):
    """The upstream pool's counters, read when scraped: nothing on the request path."""

    def __init__(self, slots: UpstreamSlotsLike) -> None:
        self.slots = slots

    def collect(self) -> Iterable[Metric]:
        s = self.slots
        yield GaugeMetricFamily(
            "turnout_upstream_connections_in_use",
            "Upstream connection slots held by replies right now.",
            value=s.in_use,
        )
        yield CounterMetricFamily(
            "turnout_upstream_connection_waits",
            "Upstream calls that found no free connection slot and waited.",
            value=s.waits,
        )
        yield CounterMetricFamily(
            "turnout_upstream_connection_wait_timeouts",
            "Upstream calls that waited limits.upstream_wait_s for a slot and got 503.",
            value=s.timeouts,
        )
        yield CounterMetricFamily(
            "turnout_upstream_connection_wait_seconds",
            "Time spent waiting for upstream connection slots.",
            value=s.wait_seconds,
        )


_LABELS = ("provider", "model", "deployment")
# Seconds: LLM calls run from tens of milliseconds (cached, tiny) to minutes (long reasoning).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
_TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
_TOKEN_KINDS = ("input", "cached", "cache_write", "output", "reasoning")


class Metrics:
    def __init__(
        self,
        *,
        max_label_values: int = DEFAULT_MAX_LABEL_VALUES,
        known_models: Iterable[str] = (),
    ) -> None:
        """`known_models`: the configured names (aliases, deployments' models), which always
        keep their own series; `max_label_values`: how many others each bounded label holds."""
        known = tuple(known_models)
        self.models = LabelValues(max_label_values, known)
        # The upstream model id of a response with no price: only served models reach it.
        self.price_models = LabelValues(max_label_values, known)
        # Error codes are Turnout's or the provider's own: few, but not a closed set.
        self.codes = LabelValues(max_label_values)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.in_flight = Gauge(
            "turnout_in_flight_requests", "Requests being served right now.", registry=r
        )
        self.dropped = Counter(
            "turnout_log_records_dropped",
            "Telemetry records a sink dropped (queue full or delivery failed).",
            ["sink"],
            registry=r,
        )
        self.unknown_prices = Counter(
            "turnout_unknown_prices",
            "Responses whose cost is unknown (no price data and no config override).",
            ["provider", "model"],
            registry=r,
        )
        self.requests = Counter(
            "turnout_requests",
            "Responses requests by outcome.",
            [*_LABELS, "status", "stream"],
            registry=r,
        )
        self.latency = Histogram(
            "turnout_request_duration_seconds",
            "Time from request received to the last byte of the reply.",
            [*_LABELS, "stream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "turnout_time_to_first_byte_seconds",
            "Time from request received to the first byte of the reply.",
            [*_LABELS, "stream"],
            buckets=_TTFB_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "turnout_tokens",
            "Tokens as OpenAI counts them (cached/cache_write are part of input, reasoning of "
            "output).",
            [*_LABELS, "type"],
            registry=r,
        )
        self.cost = Counter(
            "turnout_cost_usd", "Cost in US dollars of priced responses.", _LABELS, registry=r
        )
        self.errors = Counter(
            "turnout_errors",
            "Failed requests (error before the reply, or response.failed) by error code.",
            [*_LABELS, "code"],
            registry=r,
        )

    def watch_upstream(self, slots: UpstreamSlotsLike) -> None:
        """Upstream connection slots (server/upstream_pool.py), read at scrape time only."""
        self.registry.register(_SlotsCollector(slots))

    def unknown_price(self, provider: str, model: str) -> None:
        self.unknown_prices.labels(provider, self.price_models(model)).inc()

    def observe(self, record: Mapping[str, Any]) -> None:
        """Count one request record (the `prometheus` sink calls this)."""
        provider = str(record.get("provider") or "")
        # The model is whatever the client typed: a name no upstream has served (an error before
        # the reply, whose record may still name the provider its attempts went to) is `other`
        # unless configured or served before.
        served = bool(provider) and record.get("status") != "error"
        model = self.models(str(record.get("model") or ""), proven=served)
        labels = (provider, model, str(record.get("deployment") or ""))
        stream = "true" if record.get("stream") else "false"
        self.requests.labels(*labels, str(record.get("status") or ""), stream).inc()
        timings = record.get("timings") or {}
        total = timings.get("total_s")
        if total is not None:
            self.latency.labels(*labels, stream).observe(float(total))
        ttfb = timings.get("ttfb_s")
        if ttfb is not None:
            self.ttfb.labels(*labels, stream).observe(float(ttfb))
        usage = record.get("usage") or {}
        for kind in _TOKEN_KINDS:
            count = usage.get(f"{kind}_tokens") or 0
            if count:
                self.tokens.labels(*labels, kind).inc(count)
        cost = record.get("cost")
        if cost:
            self.cost.labels(*labels).inc(float(cost))
        error = record.get("error")
        if error:
            self.errors.labels(*labels, self.codes(str(error.get("code") or "error"))).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
