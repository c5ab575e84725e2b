"""Upstream I/O: httpx requests over one shared aiohttp transport (one connection pool).

The default httpcore transport caps the gateway at about a third of what aiohttp does (design §7),
so the whole app shares one `httpx_aiohttp.AiohttpTransport`. Requests go to the transport
directly, not through `httpx.AsyncClient`: the client's layers (auth and redirect loops, event
hooks, and above all a cookie jar shared by every user's requests, which a gateway must not
have) cost about a third of a millisecond per call and do nothing for us. Failures become
`UpstreamError`:

    timeout before a status          → 504 upstream_timeout
    refused / reset / DNS / protocol → 502 upstream_unreachable
    non-2xx reply                    → mapping.parse_error(status, body, headers)
    a body that stalls after that    → 504 upstream_timeout ("stopped sending for N s")
    a body cut short                 → 502 upstream_incomplete

"Could not reach" and "did not answer" are only said before any status arrived: once one came,
the provider was reached, and a break says how far its reply got (`broken_reply`).

A failure before any status arrived, and a 404 (or 405), name the URL that was called, so a
wrong `api_base` shows itself: scheme, host, port and path only (`called_url`), never the
query (Gemini-style `?key=`) or userinfo. Headers are never logged: they carry provider keys.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from functools import lru_cache
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx
import httpx_aiohttp

from turnout.engine.errors import UpstreamError
from turnout.server.upstream_pool import PoolLimits, Slot, UpstreamSlots

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DEFAULT_READ_TIMEOUT_S",
    "ErrorParser",
    "Upstream",
    "UpstreamCall",
    "UpstreamStream",
    "broken_reply",
    "called_url",
    "network_error",
]

CONNECT_TIMEOUT_S = 10.0
DEFAULT_READ_TIMEOUT_S = 600.0

# httpx logs every request at INFO; at a few thousand req/s that is real CPU (design §7).
for _name in ("httpx", "httpcore", "httpx_aiohttp"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class UpstreamCall(Protocol):
    """What `CompiledMapping.build_request` returns (engine's `UpstreamRequest`)."""

    @property
    def method(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def body(self) -> bytes: ...
    @property
    def stream(self) -> bool: ...


class ErrorParser(Protocol):
    """The part of `CompiledMapping` that turns a non-2xx reply into an `UpstreamError`."""

    @property
    def provider(self) -> str: ...

    def parse_error(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError: ...


def _is_timeout(exc: httpx.TransportError) -> bool:
    # The aiohttp transport maps every aiohttp.ClientConnectionError (refused, reset, server
    # disconnected) to httpx.ConnectTimeout, so the class alone lies; the cause tells the truth.
    if not isinstance(exc, httpx.TimeoutException):
        return False
    cause = exc.__cause__
    return cause is None or isinstance(cause, TimeoutError)


# Upstream statuses that usually mean the URL itself is wrong (a base missing or doubling a path).
_WRONG_URL_STATUSES = frozenset({404, 405})


def called_url(url: str) -> str:
    """What an error message may show of an upstream URL: scheme, host, port and path. The query
    (some providers take keys there) and any userinfo in the base are left out."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(an unparsable URL)"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}{parts.path}"


def network_error(exc: httpx.TransportError, provider: str, call: UpstreamCall) -> UpstreamError:
    """Classify a transport failure before any status arrived. The message names the provider
    and the URL called (`called_url`): never headers or the query."""
    where = f" ({call.method} {called_url(call.url)})"
    if _is_timeout(exc):
        return UpstreamError(
            status=504,
            message=f"The upstream provider '{provider}' did not answer in time{where}.",
            code="upstream_timeout",
            type="server_error",
            provider=provider,
        )
    return UpstreamError(
        status=502,
        message=f"Could not reach the upstream provider '{provider}'{where}; check its api_base.",
        code="upstream_unreachable",
        type="server_error",
        provider=provider,
    )


def broken_reply(
    exc: httpx.TransportError,
    provider: str,
    *,
    what: str,
    received: str,
    read_timeout_s: float,
) -> UpstreamError:
    """A reply whose body broke off after its status arrived (`what`: "stream", "reply";
    `received`: how far it got, "3 events"). The provider was reached, so this never says
    "could not reach"; named provider first, like the in-band failures of `response.failed`."""
    if _is_timeout(exc):
        return UpstreamError(
            status=504,
            message=(
                f"{provider}: the upstream stopped sending for {read_timeout_s:g} s before the "
                f"response was complete (after {received})"
            ),
            code="upstream_timeout",
            type="server_error",
            provider=provider,
        )
    return UpstreamError(
        status=502,
        message=(
            f"{provider}: the upstream {what} ended before the response was complete "
            f"(connection closed after {received})"
        ),
        code="upstream_incomplete",
        type="server_error",
        provider=provider,
    )


def _amount(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def _unsendable(exc: ValueError, provider: str, call: UpstreamCall) -> UpstreamError:
    return UpstreamError(
        status=502,
        message=(
            f"The request to the upstream provider '{provider}' could not be sent "
            f"({call.method} {called_url(call.url)}): {exc}; check its api_base."
        ),
        code="upstream_unreachable",
        type="server_error",
        provider=provider,
    )


def _name_url(error: UpstreamError, call: UpstreamCall) -> UpstreamError:
    """A 404/405 from the upstream names the URL called: a wrong api_base is the usual cause."""
    error.message = (
        f"{error.message} (called {call.method} {called_url(call.url)}; "
        "if that URL is wrong, check the provider's api_base)"
    )
    error.args = (error.message,)
    return error


class UpstreamStream:
    """An open 2xx streaming reply: iterate raw byte chunks, then `aclose()` (idempotent)."""

    def __init__(
        self,
        response: httpx.Response,
        provider: str,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    ) -> None:
        self.response = response
        self._provider = provider
        self._read_timeout_s = read_timeout_s

    @property
    def status_code(self) -> int:
        return self.response.status_code

    async def chunks(
        self, progress: Callable[[], str | None] | None = None
    ) -> AsyncIterator[bytes]:
        """The body's chunks; a break raises `broken_reply`, saying how far the stream got
        (`progress()`, e.g. the decoder's "3 events"; else the bytes received)."""
        response = self.response
        try:
            async for chunk in response.aiter_bytes():
                if chunk:
                    yield chunk
        except httpx.TransportError as exc:
            got = (progress() if progress else None) or _amount(
                response.num_bytes_downloaded, "byte"
            )
            raise broken_reply(
                exc, self._provider, what="stream", received=got,
                read_timeout_s=self._read_timeout_s,
            ) from None  # fmt: skip
        finally:
            await self.response.aclose()

    async def aclose(self) -> None:
        await self.response.aclose()


def _read_timeout(read_timeout_s: float | None) -> float:
    return read_timeout_s or DEFAULT_READ_TIMEOUT_S


@lru_cache(maxsize=1024)
def _url(text: str) -> httpx.URL:
    # Parsing a URL is a fifth of building a request; the set of upstream URLs is small.
    return httpx.URL(text)


@lru_cache(maxsize=1024)
def _host(text: str) -> str:
    """`host:port` of an upstream URL: what the per-host connection slots count."""
    url = _url(text)
    return f"{url.host}:{url.port or (443 if url.scheme == 'https' else 80)}"


class _SlotStream(httpx.AsyncByteStream):
    """A reply body that gives its connection slot back when it is closed (every path: read
    whole, streamed, an error body, abandoned)."""

    __slots__ = ("_inner", "_slot")

    def __init__(self, inner: httpx.AsyncByteStream, slot: Slot) -> None:
        self._inner = inner
        self._slot = slot

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inner.__aiter__()  # no extra layer per chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._slot.release()


def _session_factory(limits: PoolLimits) -> Callable[[], aiohttp.ClientSession]:
    """aiohttp's own pool with the slots' limits, so it never queues on its own."""

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=limits.total,
            limit_per_host=limits.per_host,
            ssl=httpx.create_ssl_context(),
            keepalive_timeout=5.0,
        )
        return aiohttp.ClientSession(connector=connector)

    return session


class Upstream:
    """Owns the app-wide transport. `start()` in the lifespan, `aclose()` on shutdown."""

    def __init__(
        self,
        *,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        pool: PoolLimits | None = None,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._given = transport
        self.slots = UpstreamSlots(pool)
        self._transport: httpx.AsyncBaseTransport | None = None
        self._timeouts: dict[float, dict[str, float | None]] = {}

    def start(self) -> None:
        if self._transport is None:
            # The aiohttp transport needs a running loop, so build it here, not at import.
            self._transport = self._given or httpx_aiohttp.AiohttpTransport(
                client=_session_factory(self.slots.limits)
            )

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        if self._transport is None:
            self.start()
        assert self._transport is not None
        return self._transport

    def _timeout(self, read_timeout_s: float | None) -> dict[str, float | None]:
        read = _read_timeout(read_timeout_s)
        found = self._timeouts.get(read)
        if found is None:  # a handful of distinct values per process: keep them
            found = self._timeouts[read] = {
                "connect": self._connect_timeout_s, "read": read, "write": read, "pool": read,
            }  # fmt: skip
        return found

    async def _open(
        self, req: UpstreamCall, errors: ErrorParser, read_timeout_s: float | None
    ) -> httpx.Response:
        request = httpx.Request(
            req.method,
            _url(req.url),
            headers=req.headers,
            content=req.body,
            extensions={"timeout": self._timeout(read_timeout_s)},
        )
        slot = await self.slots.acquire(_host(req.url), errors.provider)
        try:
            response = await self.transport.handle_async_request(request)
        except httpx.TransportError as exc:
            slot.release()
            raise network_error(exc, errors.provider, req) from None
        except ValueError as exc:
            slot.release()
            # The client library refused to send it (e.g. aiohttp: user:password@ in the base
            # next to the provider's Authorization header): a configuration problem, not ours.
            raise _unsendable(exc, errors.provider, req) from None
        except BaseException:
            slot.release()
            raise
        raw = response.stream
        assert isinstance(raw, httpx.AsyncByteStream)  # an async transport's reply
        response.stream = _SlotStream(raw, slot)
        # A reply nobody closes (a bug) still gives its slot back when it is collected.
        weakref.finalize(response, slot.release)
        response.request = request
        if response.is_success:
            return response
        # Error bodies are small and parse_error needs all of them.
        try:
            body = await response.aread()
        except httpx.TransportError as exc:
            raise broken_reply(
                exc, errors.provider, what=f"HTTP {response.status_code} reply",
                received=_amount(response.num_bytes_downloaded, "byte"),
                read_timeout_s=_read_timeout(read_timeout_s),
            ) from None  # fmt: skip
        finally:
            await response.aclose()
        status = response.status_code
        error = errors.parse_error(status, body, response.headers)
        if status in _WRONG_URL_STATUSES:
            raise _name_url(error, req)
        raise error

    async def send(
        self, req: UpstreamCall, errors: ErrorParser, *, read_timeout_s: float | None = None
    ) -> httpx.Response:
        """Send and read the whole 2xx reply (`.content` is ready), or raise `UpstreamError`."""
        response = await self._open(req, errors, read_timeout_s)
        try:
            await response.aread()
        except httpx.TransportError as exc:
            got = _amount(response.num_bytes_downloaded, "byte")
            raise broken_reply(
                exc, errors.provider, what="reply", received=got,
                read_timeout_s=_read_timeout(read_timeout_s),
            ) from None  # fmt: skip
        finally:
            await response.aclose()
        return response

    async def open_stream(
        self, req: UpstreamCall, errors: ErrorParser, *, read_timeout_s: float | None = None
    ) -> UpstreamStream:
        """Send and return once a 2xx status arrived, so errors before the first byte can still
        be answered as plain JSON; the caller must consume `chunks()` or `aclose()` it."""
        response = await self._open(req, errors, read_timeout_s)
        return UpstreamStream(response, errors.provider, _read_timeout(read_timeout_s))
