"""An upstream reply as batches of canonical ops, with every credential the call carried masked
out of the errors a provider may quote back.

`open_source` sends the request and returns once a 2xx status arrived (the whole body when not
streaming), raising `UpstreamError` before anything reached the client: anything failing up to
there is still a plain JSON error, and a router may still fail over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

from turnout.engine.errors import UpstreamError
from turnout.server.redaction import CallSecrets, mask_error, mask_ops
from turnout.server.targets import MappingLike, Target
from turnout.server.upstream import Upstream, UpstreamCall, UpstreamStream

__all__ = ["Source", "open_source"]

log = logging.getLogger("turnout.gateway")

_REPORTED_UNKNOWN: set[tuple[str, str]] = set()
# Event names are the upstream's text (a proxy's, a self-hosted server's): past this many the
# rest are not logged, so the set cannot grow without bound.
_MAX_REPORTED = 1000


def _report_unknown_events(mapping: MappingLike, unknown: dict[str, int]) -> None:
    """A stream event type the mapping does not know is logged once per type, not ignored:
    it is how a provider's new event types get noticed (the tests fail on them)."""
    provider = str(getattr(mapping, "provider", "?"))
    for name, count in unknown.items():
        if (provider, name) not in _REPORTED_UNKNOWN and len(_REPORTED_UNKNOWN) < _MAX_REPORTED:
            _REPORTED_UNKNOWN.add((provider, name))
            log.warning("mapping %s has no rule for stream event %r (seen %d times)",
                        provider, name, count)  # fmt: skip


class Source:
    """Upstream ops, from a whole (already parsed) body or an open stream; opened before the
    reply starts so that anything failing up to here is still a plain JSON error."""

    def __init__(
        self,
        mapping: MappingLike,
        ops: list[dict[str, Any]] | None,
        stream: UpstreamStream | None,
        secrets: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self._mapping = mapping
        self._ops = ops
        self._stream = stream
        self._secrets = secrets  # what to mask out of in-band error messages, on demand
        # Called once when the upstream reply is released (the router's in-flight count).
        self.on_close: Callable[[], Any] | None = None

    async def batches(self) -> AsyncGenerator[list[dict[str, Any]], None]:
        if self._stream is None:
            yield self._ops or []
            return
        decoder = self._mapping.stream_decoder()
        secrets = self._secrets

        def progress() -> str | None:  # how far a stream that broke got, for its message
            n = getattr(decoder, "events", None)
            return None if n is None else f"{n} event{'' if n == 1 else 's'}"

        try:
            async for chunk in self._stream.chunks(progress):
                ops = decoder.feed(chunk)
                if ops:
                    yield mask_ops(ops, secrets)
            yield mask_ops(decoder.close(), secrets)
        except UpstreamError as exc:  # an exception frame, a cut stream: same masking
            mask_error(exc, secrets())
            raise
        _report_unknown_events(self._mapping, getattr(decoder, "unknown_events", {}))

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
        if self.on_close is not None:
            self.on_close()


# A JSON reply this large takes tens of milliseconds to parse and translate: the loop gets a turn
# between reading it and that work, so one huge reply never adds up to one long stall.
_BIG_REPLY_BYTES = 1024 * 1024


async def open_source(
    upstream: Upstream, call: UpstreamCall, target: Target, known: Sequence[str]
) -> tuple[Source, int]:
    """Send `call`; the reply's ops and its status once a 2xx arrived. `known`: secret values
    masked along with the call's own credentials."""
    secrets = CallSecrets(call.headers, target.credentials, known)
    try:
        if call.stream:
            stream = await upstream.open_stream(
                call, target.mapping, read_timeout_s=target.timeout_s
            )
            return Source(target.mapping, None, stream, secrets), stream.status_code
        response = await upstream.send(call, target.mapping, read_timeout_s=target.timeout_s)
        if len(response.content) > _BIG_REPLY_BYTES:
            await asyncio.sleep(0)  # reading it took a while: let other requests run first
        ops = target.mapping.parse_response(response.content)
    except UpstreamError as exc:
        # Providers quote keys back ("Incorrect API key provided: sk-..."): the message
        # reaches the client, the store and the logs, so it is masked here, once.
        mask_error(exc, secrets())
        raise
    return Source(target.mapping, mask_ops(ops, secrets), None, secrets), response.status_code
