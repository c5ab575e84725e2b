"""Telemetry: per-request records to pluggable sinks, and Prometheus metrics."""

from __future__ import annotations

from turnout.server.telemetry import sinks as _sinks  # registers the built-in sink types
from turnout.server.telemetry.base import SINK_TYPES, QueueSink, Sink, SinkContext, register_sink
from turnout.server.telemetry.hub import CURRENT, RequestContext, Telemetry
from turnout.server.telemetry.metrics import CONTENT_TYPE_LATEST, Metrics

__all__ = [
    "CONTENT_TYPE_LATEST",
    "CURRENT",
    "SINK_TYPES",
    "Metrics",
    "QueueSink",
    "RequestContext",
    "Sink",
    "SinkContext",
    "Telemetry",
    "register_sink",
]

del _sinks
