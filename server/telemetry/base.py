"""The one interface every telemetry sink implements, and the queue that keeps sinks off the
request path.

A sink receives one record (a JSON-able dict, see `server/telemetry/hub.py`) per request through
`emit`, which must never block and never raise: the gateway calls it after the reply is built and
stored, inline. Sinks that do I/O subclass `QueueSink`: `emit` puts the record on a bounded
`asyncio.Queue` (a full queue drops the record and counts it), and one worker task per sink
takes records off in batches and `write`s them. A slow or failing sink therefore only ever loses
its own log records; it never delays a response and never touches the stored response.

A new sink needs no change to the core: subclass `Sink` or `QueueSink`, decorate the class with
`@register_sink("name")` (or name it in the config as `type: "package.module:Class"`), and take
`(config, ctx)` in the constructor.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from turnout.server.redaction import redact
from turnout.server.telemetry.clip import CAPTURE_MAX_CHARS

__all__ = [
    "SINK_TYPES",
    "QueueSink",
    "Sink",
    "SinkContext",
    "build_sink",
    "redact_record",
    "register_sink",
]

log = logging.getLogger("turnout.telemetry")

Record = Mapping[str, Any]


@dataclass(frozen=True)
class SinkContext:
    """What the hub hands every sink it builds."""

    # Called with (sink name, count) when records are dropped; feeds the metrics counter.
    on_drop: Callable[[str, int], None] = lambda _name, _n: None
    # Secret values to mask wherever they appear (environment keys, master key).
    secrets: Sequence[str] = field(default=(), repr=False)
    # The Prometheus metrics object (server/telemetry/metrics.py), for sinks that need it.
    metrics: Any = None
    # Provider id -> its OpenTelemetry `gen_ai.provider.name`, from the mappings (`otel_name`).
    provider_names: Mapping[str, str] = field(default_factory=dict)


def redact_record(value: Any, secrets: Sequence[str]) -> Any:
    """Every string in a record, keys' values at any depth, passed through `redact`."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {k: redact_record(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_record(v, secrets) for v in value]
    return value


class Sink(ABC):
    """One telemetry destination."""

    type_name: ClassVar[str] = "sink"

    def __init__(self, config: Mapping[str, Any], ctx: SinkContext) -> None:
        self.config = dict(config)
        self.ctx = ctx
        capture = config.get("capture") or {}
        self.capture_prompts = bool(capture.get("prompts", False))
        self.capture_outputs = bool(capture.get("outputs", False))
        # Longer captured strings are cut (telemetry/clip.py).
        self.capture_max_chars = int(capture.get("max_chars") or CAPTURE_MAX_CHARS)
        self.name = str(config.get("name") or self.type_name)

    @abstractmethod
    def emit(self, record: Record) -> None:
        """Accept one record; must return at once and never raise."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work (on the server's event loop)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Flush what can be flushed quickly and release resources."""

    def prepare(self, record: Record) -> dict[str, Any]:
        """The record as this sink may see it: captures it did not ask for removed, and every
        string redacted (secrets never leave, whatever the capture settings)."""
        data = dict(record)
        if not self.capture_prompts:
            data.pop("input", None)
            data.pop("instructions", None)
        if not self.capture_outputs:
            data.pop("output", None)
        cleaned: dict[str, Any] = redact_record(data, self.ctx.secrets)
        return cleaned


class QueueSink(Sink):
    """A sink whose `write` runs on a worker task, fed by a bounded queue."""

    default_queue_size: ClassVar[int] = 10_000
    default_batch_size: ClassVar[int] = 100

    def __init__(self, config: Mapping[str, Any], ctx: SinkContext) -> None:
        super().__init__(config, ctx)
        self.queue_size = int(config.get("queue_size") or self.default_queue_size)
        self.batch_size = int(config.get("batch_size") or self.default_batch_size)
        self.flush_interval_s = float(config.get("flush_interval_s") or 0.0)
        self._queue: asyncio.Queue[Record] = asyncio.Queue(self.queue_size)
        self._worker: asyncio.Task[None] | None = None
        self.accepted = 0  # records queued
        self.written = 0  # records delivered
        self.failed = 0  # queued records whose delivery failed for good
        self.dropped = 0  # failed + those refused by a full queue

    def emit(self, record: Record) -> None:
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self.drop(1)
        else:
            self.accepted += 1

    def drop(self, count: int) -> None:
        self.dropped += count
        try:
            self.ctx.on_drop(self.name, count)
        except Exception:  # the counter must not take the sink down
            log.exception("telemetry drop counter failed")

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name=f"turnout-sink-{self.name}"
            )

    @abstractmethod
    async def write(self, records: list[dict[str, Any]]) -> None:
        """Deliver one batch of prepared records. Raising drops the batch (counted)."""

    async def _next_batch(self) -> list[Record]:
        batch = [await self._queue.get()]
        if self.flush_interval_s > 0:
            # Wait up to flush_interval_s for the batch to fill (webhooks want fewer requests).
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.flush_interval_s
            while len(batch) < self.batch_size:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            await self._deliver(batch)

    async def _deliver(self, batch: list[Record]) -> None:
        try:
            await self.write([self.prepare(r) for r in batch])
            self.written += len(batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("telemetry sink %s dropped %d records", self.name, len(batch),
                        exc_info=True)  # fmt: skip
            self.failed += len(batch)
            self.drop(len(batch))

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Wait until everything queued so far was written (tests; shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.written + self.failed < self.accepted and loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        # Give queued records a short chance to go out, then stop: shutdown must not hang on a
        # dead collector.
        with contextlib.suppress(Exception):
            await self.drain(timeout_s=2.0)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker


SINK_TYPES: dict[str, type[Sink]] = {}


def register_sink(type_name: str) -> Callable[[type[Sink]], type[Sink]]:
    def decorate(cls: type[Sink]) -> type[Sink]:
        cls.type_name = type_name
        SINK_TYPES[type_name] = cls
        return cls

    return decorate


def build_sink(config: Mapping[str, Any], ctx: SinkContext) -> Sink:
    """The sink a `logging:` entry names: a registered type or "package.module:Class"."""
    type_name = str(config.get("type"))
    cls = SINK_TYPES.get(type_name)
    if cls is None and ":" in type_name:
        module_name, _sep, attr = type_name.partition(":")
        found = getattr(importlib.import_module(module_name), attr)
        if not (isinstance(found, type) and issubclass(found, Sink)):
            raise ValueError(f"{type_name} is not a telemetry Sink class")
        cls = found
    if cls is None:
        known = ", ".join(sorted(SINK_TYPES))
        raise ValueError(f"unknown logging sink type {type_name!r} (known: {known})")
    return cls(config, ctx)
