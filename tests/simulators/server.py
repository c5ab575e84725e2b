"""`Simulator`: one loopback server speaking every provider dialect under `/{provider}/...`.

The provider label in the first path segment is free (`openai`, `groq`, `deepseek`…): it keys the
reply queue and the recorded requests. The rest of the path picks the dialect:

    …/v1/messages                                   Anthropic Messages
    …/models/{model}:generateContent                Gemini (JSON)
    …/models/{model}:streamGenerateContent[?alt=sse] Gemini (stream)
    …/chat/completions                              OpenAI Chat Completions (any base path)
    …/responses                                     OpenAI Responses
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson

from .errors import Dialect, Invalid
from .http import HttpRequest, HttpResponse, HttpServer
from .modes import Echo, Reply
from .replies import Context, error_response, respond
from .turn import Ids
from .validate_anthropic import validate_anthropic
from .validate_chat import validate_chat
from .validate_gemini import validate_gemini
from .validate_responses import validate_responses

__all__ = ["RecordedRequest", "Simulator"]

_PREFIX = re.compile(r"^/(?P<provider>[^/]+)(?P<rest>/.*)$")
_GEMINI = re.compile(
    r"/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$"
)


@dataclass(frozen=True)
class RecordedRequest:
    """A request that passed validation, as the provider would have received it."""

    provider: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    json: Any
    dialect: Dialect
    body: bytes


def _route(rest: str) -> tuple[Dialect, str | None, bool] | None:
    """(dialect, gemini model, gemini stream) for a path below the provider prefix."""
    if rest.endswith("/v1/messages"):
        return "anthropic", None, False
    if rest.endswith("/chat/completions"):
        return "chat", None, False
    if rest.endswith("/responses"):
        return "responses", None, False
    match = _GEMINI.search(rest)
    if match:
        return "gemini", match["model"], match["method"] == "streamGenerateContent"
    return None


def _validate(dialect: Dialect, request: HttpRequest, body: Any) -> None:
    if dialect == "anthropic":
        validate_anthropic(request.headers, body)
    elif dialect == "gemini":
        validate_gemini(request.headers, request.query, body)
    elif dialect == "chat":
        validate_chat(request.headers, body)
    else:
        validate_responses(request.headers, body)


class Simulator:
    """Loopback provider simulator; `with Simulator() as sim: httpx.post(f"{sim.url}/openai/…")`.

    Thread-safe: the server runs its own event loop in a daemon thread, tests script replies and
    read recorded requests from theirs.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self._queues: dict[str, deque[Reply]] = {}
        self._lock = threading.Lock()
        self._ids = Ids()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._server: HttpServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (keep-alive reuse keeps this low)."""
        return self._server.connections if self._server is not None else 0

    def base(self, provider: str) -> str:
        """The `api_base` a gateway should use for `provider`."""
        return f"{self.url}/{provider}"

    def start(self) -> Simulator:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="provider-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("simulator did not start")
        if self._startup_error is not None:
            raise self._startup_error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = self._server = HttpServer(self._handle)
        try:
            await server.start(self.host, self.port)
        except OSError as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self.port = server.port
        self._ready.set()
        await self._stopping.wait()
        await server.close()

    # -- scripting and inspection ----------------------------------------------------------

    def script(self, provider: str, *replies: Reply) -> None:
        """Queue replies (FIFO) for the next requests to `provider`; echo once it is empty."""
        with self._lock:
            self._queues.setdefault(provider, deque()).extend(replies)

    def pending(self, provider: str) -> int:
        with self._lock:
            return len(self._queues.get(provider, ()))

    def clear(self) -> None:
        """Forget recorded requests."""
        with self._lock:
            self.requests.clear()

    def reset(self) -> None:
        """Forget recorded requests and scripted replies (for a session-wide simulator)."""
        with self._lock:
            self.requests.clear()
            self._queues.clear()

    def requests_for(self, provider: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.provider == provider]

    @property
    def last(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    def _next_reply(self, provider: str) -> Reply:
        with self._lock:
            queue = self._queues.get(provider)
            return queue.popleft() if queue else Echo()

    # -- request handling ------------------------------------------------------------------

    async def _handle(self, request: HttpRequest) -> HttpResponse:
        match = _PREFIX.match(request.path)
        route = _route(match["rest"]) if match else None
        if match is None or route is None:
            return HttpResponse(404, [("content-type", "text/plain")], b"no such route\n")
        dialect, gemini_model, gemini_stream = route
        if request.method != "POST":
            return error_response(dialect, 405, Invalid(f"{request.method} is not allowed"))
        try:
            body = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError as exc:
            return error_response(dialect, 400, Invalid(f"Invalid JSON body: {exc}"))
        try:
            _validate(dialect, request, body)
        except Invalid as exc:
            return error_response(dialect, exc.status, exc)
        assert isinstance(body, dict)  # every validator insists on an object
        provider = match["provider"]
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    provider,
                    request.path,
                    request.query,
                    request.headers,
                    body,
                    dialect,
                    request.body,
                )
            )
        ctx = Context(
            dialect=dialect,
            body=body,
            model=gemini_model or str(body.get("model") or "sim-model"),
            stream=gemini_stream if dialect == "gemini" else body.get("stream") is True,
            gemini_sse=request.query.get("alt") == "sse",
            ids=self._ids,
        )
        return await respond(self._next_reply(provider), ctx)
