"""Prometheus metrics on a registry of Turnout's own (never the global default registry, so two
apps in one process, as in tests, do not collide).

Always present: in-flight requests, dropped log records, unknown prices. The per-request
families (requests, latencies, tokens, cost, errors) are filled by the `prometheus` sink
(`logging: [{type: prometheus}]`), which also turns `GET /metrics` on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LABELS = ("provider", "model", "deployment")
# Seconds: LLM calls run from tens of milliseconds (cached, tiny) to minutes (long reasoning).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
_TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)
_TOKEN_KINDS = ("input", "cached", "cache_write", "output", "reasoning")


class Metrics:
    def __init__(self) -> None:
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

    def observe(self, record: Mapping[str, Any]) -> None:
        """Count one request record (the `prometheus` sink calls this)."""
        provider = str(record.get("provider") or "")
        # A request refused before its model resolved carries whatever the client typed: no
        # model label for it, or any client could grow the series without bound.
        labels = (
            provider,
            str(record.get("model") or "") if provider else "",
            str(record.get("deployment") or ""),
        )
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
            self.errors.labels(*labels, str(error.get("code") or "error")).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
