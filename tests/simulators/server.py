"""`Simulator`: one loopback server speaking every provider dialect under `/{provider}/...`.

The provider label in the first path segment is free (`openai`, `groq`, `deepseek`…): it keys the
reply queue and the recorded requests. The rest of the path picks the dialect:

    …/v1/messages                                   Anthropic Messages
    …/models/{model}:generateContent                Gemini (JSON)
    …/models/{model}:streamGenerateContent[?alt=sse] Gemini (stream)
    …/chat/completions                              OpenAI Chat Completions (any base path)
    …/responses                                     OpenAI Responses
    …/v1/messages/count_tokens, …/responses/input_tokens, …/models/{model}:countTokens
                                                    token counting (counting.py)

Cloud platforms (see cloud.py) are matched first: Bedrock `…/model/{id}/converse[-stream]`,
Vertex `…/v1[beta1]/projects/{p}/locations/{l}/publishers/{google|anthropic}/models/{m}:{method}`,
Google OAuth2 `…/token`, Azure OpenAI `…/openai/v1/…` and `…/openai/deployments/{d}/…`, Azure AI
Foundry `…/models/chat/completions`, and each platform's token-counting endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import orjson

from .cloud import (
    AZURE_DENIED,
    AZURE_NOT_FOUND,
    FOUNDRY_NO_API_VERSION,
    CloudRoute,
    azure_auth_ok,
    match_cloud,
    validate_azure,
    validate_vertex_anthropic,
    validate_vertex_gemini,
    vertex_unauthenticated,
)
from .counting import COUNT_OPERATION, count_reply, validate_count
from .errors import Dialect, Invalid
from .google_oauth import ServiceAccountKey, TokenError, check_assertion, parse_token_form
from .http import HttpRequest, HttpResponse, HttpServer
from .modes import Echo, Error, Reply
from .replies import Context, error_response, respond
from .sigv4 import TEST_ACCESS_KEY, TEST_SECRET_KEY, verify_sigv4
from .turn import Ids
from .validate_anthropic import validate_anthropic
from .validate_bedrock import validate_bedrock
from .validate_chat import validate_chat
from .validate_gemini import validate_gemini
from .validate_responses import validate_compact, validate_responses
from .wire import WireFormat

__all__ = ["RecordedRequest", "Simulator"]

_PREFIX = re.compile(r"^/(?P<provider>[^/]+)(?P<rest>/.*)$")
_GEMINI = re.compile(
    r"/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent)$"
)
_GEMINI_COUNT = re.compile(r"/models/(?P<model>[^/:]+):countTokens$")


def _count_route(rest: str) -> tuple[Dialect, str | None] | None:
    """(dialect, gemini model) of a token-counting path below the provider prefix."""
    if rest.endswith("/v1/messages/count_tokens"):
        return "anthropic", None
    if rest.endswith("/responses/input_tokens"):
        return "responses", None
    match = _GEMINI_COUNT.search(rest)
    return ("gemini", match["model"]) if match else None


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
    platform: str = ""  # "bedrock" | "vertex" | "azure" | "foundry" | "oauth"; "" = plain route
    model: str | None = None  # the model the URL names (Bedrock, Vertex, Azure deployment)
    operation: str = "create"  # or "count_tokens": a token-counting endpoint


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

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        wires: Mapping[str, WireFormat] | None = None,
    ) -> None:
        self.host = host
        # Dialects served from data (wire.py), by dialect name; matched before the routes above.
        self.wires: dict[str, WireFormat] = dict(wires or {})
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
        # Cloud platform knobs (configuration: `reset()` keeps them).
        self.aws_credentials: dict[str, str] = {TEST_ACCESS_KEY: TEST_SECRET_KEY}
        self.aws_region: str | None = None  # when set, the SigV4 scope must name this region
        self.bedrock_api_keys: set[str] | None = None  # `Authorization: Bearer`; None = any
        self.vertex_tokens: set[str] | None = None  # None = any bearer; else these + minted ones
        self.azure_keys: set[str] | None = None  # api-key / bearer values; None = any
        self.service_accounts: dict[str, ServiceAccountKey] = {}  # private_key_id -> key
        self.token_expires_in = 3600
        self.issued_tokens: dict[str, float] = {}  # access token -> expiry (epoch seconds)
        self.token_requests: list[RecordedRequest] = []  # calls to the OAuth2 token endpoint

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
            self.token_requests.clear()

    def reset(self) -> None:
        """Forget recorded requests and scripted replies (for a session-wide simulator)."""
        with self._lock:
            self.requests.clear()
            self.token_requests.clear()
            self._queues.clear()

    def requests_for(self, provider: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.provider == provider]

    @property
    def last(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    def _next_error(self, provider: str) -> Error | None:
        """The next scripted reply when it is an `Error` (taken off the queue), else None."""
        with self._lock:
            queue = self._queues.get(provider)
            if queue and isinstance(queue[0], Error):
                reply = queue.popleft()
                assert isinstance(reply, Error)
                return reply
            return None

    def _next_reply(self, provider: str) -> Reply:
        with self._lock:
            queue = self._queues.get(provider)
            return queue.popleft() if queue else Echo()

    # -- request handling ------------------------------------------------------------------

    async def _handle(self, request: HttpRequest) -> HttpResponse:
        match = _PREFIX.match(request.path)
        if match is not None and match["rest"].endswith("/responses/compact"):
            return self._compact(match["provider"], request)
        if match is not None:
            raw_path = urlsplit(request.target).path
            raw_rest = raw_path[raw_path.find("/", 1) :] if raw_path.count("/") > 1 else ""
            cloud = match_cloud(match["rest"], raw_rest)
            if cloud is not None:
                return await self._handle_cloud(match["provider"], cloud, request)
        wire = self._wire(match["rest"]) if match else None
        if match is not None and wire is not None:
            return await self._handle_wire(match["provider"], wire, request)
        counting = _count_route(match["rest"]) if match else None
        if match is not None and counting is not None:
            return self._count(match["provider"], request, counting[0], "", counting[1])
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
        self._record(provider, request, body, dialect)
        ctx = Context(
            dialect=dialect,
            body=body,
            model=gemini_model or str(body.get("model") or "sim-model"),
            stream=gemini_stream if dialect == "gemini" else body.get("stream") is True,
            gemini_sse=request.query.get("alt") == "sse",
            ids=self._ids,
        )
        return await respond(self._next_reply(provider), ctx)

    def _count(
        self, provider: str, request: HttpRequest, dialect: Dialect, platform: str,
        model: str | None,
    ) -> HttpResponse:  # fmt: skip
        """A token-counting endpoint: the body checked as the provider checks it, then
        `prompt_chars` of it as the count (counting.py)."""
        if request.method != "POST":
            return error_response(dialect, 405, Invalid(f"{request.method} is not allowed"))
        try:
            body = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError as exc:
            return error_response(dialect, 400, Invalid(f"Invalid JSON body: {exc}"))
        headers = request.headers
        if platform == "azure":  # auth was checked already; the validator wants a bearer
            headers = {**headers, "authorization": "Bearer azure"}
        try:
            validate_count(dialect, platform, headers, request.query, model, body)
        except Invalid as exc:
            return error_response(dialect, exc.status, exc)
        self._record(provider, request, body, dialect, platform, model, COUNT_OPERATION)
        scripted = self._next_error(provider)
        if scripted is not None:  # a scripted Error answers a count too; other replies wait
            return error_response(
                dialect, scripted.status, None, scripted.native_body, scripted.headers
            )
        reply = orjson.dumps(count_reply(dialect, body))
        return HttpResponse(200, [("content-type", "application/json")], reply)

    def _compact(self, provider: str, request: HttpRequest) -> HttpResponse:
        """OpenAI's compact call: the body checked as OpenAI would, then a compaction whose
        encrypted_content is a digest of the body (the same history compacts the same)."""
        if request.method != "POST":
            return error_response("responses", 405, Invalid(f"{request.method} is not allowed"))
        try:
            body = orjson.loads(request.body) if request.body else None
            validate_compact(request.headers, body)
        except orjson.JSONDecodeError as exc:
            return error_response("responses", 400, Invalid(f"Invalid JSON body: {exc}"))
        except Invalid as exc:
            return error_response("responses", exc.status, exc)
        self._record(provider, request, body, "responses")
        scripted = self._next_reply(provider)
        if isinstance(scripted, Error):  # the only scripted reply a compact call takes
            return error_response(
                "responses", scripted.status, None, scripted.native_body, scripted.headers
            )
        digest = hashlib.sha256(request.body).hexdigest()
        input_tokens = max(1, len(request.body) // 4)
        reply = {
            "id": f"resp_sim_compact_{digest[:16]}",
            "object": "response.compaction",
            "created_at": int(time.time()),
            "output": [
                {"id": f"cmp_sim_{digest[:16]}", "type": "compaction",
                 "encrypted_content": f"sim-compaction:{digest}"}
            ],
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": 64, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + 64,
            },
        }  # fmt: skip
        return HttpResponse(200, [("content-type", "application/json")], orjson.dumps(reply))

    def _record(
        self,
        provider: str,
        request: HttpRequest,
        body: Any,
        dialect: Dialect,
        platform: str = "",
        model: str | None = None,
        operation: str = "create",
    ) -> None:
        recorded = RecordedRequest(
            provider, request.path, request.query, request.headers, body, dialect,
            request.body, platform, model, operation,
        )  # fmt: skip
        with self._lock:
            self.requests.append(recorded)

    def _wire(self, rest: str) -> WireFormat | None:
        return next((w for w in self.wires.values() if w.serves(rest)), None)

    async def _handle_wire(
        self, provider: str, wire: WireFormat, request: HttpRequest
    ) -> HttpResponse:
        if request.method != "POST":
            return error_response(wire.name, 405, Invalid("method not allowed"), wire=wire)
        try:
            body = orjson.loads(request.body) if request.body else None
            wire.validate(request.headers, body)
        except orjson.JSONDecodeError as exc:
            return error_response(wire.name, 400, Invalid(f"invalid json: {exc}"), wire=wire)
        except Invalid as exc:
            return error_response(wire.name, exc.status, exc, wire=wire)
        assert isinstance(body, dict)
        self._record(provider, request, body, wire.name)
        ctx = Context(
            dialect=wire.name,
            body=body,
            model=wire.model(body),
            stream=wire.is_stream(body),
            gemini_sse=False,
            ids=self._ids,
            wire=wire,
        )
        return await respond(self._next_reply(provider), ctx)

    # -- cloud platforms -------------------------------------------------------------------

    async def _handle_cloud(
        self, provider: str, route: CloudRoute, request: HttpRequest
    ) -> HttpResponse:
        if route.platform == "oauth":
            return self._token(provider, request)
        # Auth failures come from the platform's front door, in its own shape.
        auth_dialect = "gemini" if route.platform == "vertex" else route.dialect
        if request.method != "POST":
            return error_response(auth_dialect, 405, Invalid(f"{request.method} is not allowed"))
        refusal = self._cloud_auth(route, request)
        if refusal is not None:
            return refusal
        if route.method.startswith("bad:"):
            method = route.method[4:]
            return error_response(
                "gemini",
                400,
                Invalid(f"{method} is not supported for publisher model {route.model}."),
            )
        if route.count:
            return self._count(provider, request, route.dialect, route.platform, route.model)
        try:
            body = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError as exc:
            return error_response(route.dialect, 400, Invalid(f"Invalid JSON body: {exc}"))
        try:
            if route.platform == "bedrock":
                assert route.model is not None and route.stream is not None
                validate_bedrock(route.model, body, route.stream)
            elif route.platform == "vertex" and route.dialect == "gemini":
                validate_vertex_gemini(request.query, body)
            elif route.platform == "vertex":
                assert route.model is not None and route.stream is not None
                validate_vertex_anthropic(route.model, route.stream, body)
            else:
                validate_azure(route, request.headers, body)
        except Invalid as exc:
            return error_response(route.dialect, exc.status, exc)
        assert isinstance(body, dict)
        model = route.model or str(body.get("model") or "sim-model")
        stream = route.stream if route.stream is not None else body.get("stream") is True
        self._record(provider, request, body, route.dialect, route.platform, route.model)
        ctx = Context(
            dialect=route.dialect,
            body=body,
            model=str(body.get("model") or model) if route.platform == "azure" else model,
            stream=stream,
            gemini_sse=request.query.get("alt") == "sse",
            ids=self._ids,
        )
        return await respond(self._next_reply(provider), ctx)

    def _cloud_auth(self, route: CloudRoute, request: HttpRequest) -> HttpResponse | None:
        headers = request.headers
        if route.platform == "bedrock":
            auth = headers.get("authorization", "")
            if auth.startswith("Bearer "):  # Bedrock API keys
                key = auth[7:].strip()
                if key and (self.bedrock_api_keys is None or key in self.bedrock_api_keys):
                    return None
                denied = "Authentication failed: Please make sure your API Key is valid."
                return error_response(
                    "bedrock", 403, Invalid(denied, status=403, kind="AccessDeniedException")
                )
            try:
                verify_sigv4(
                    request.method,
                    request.target,
                    headers,
                    request.body,
                    self.aws_credentials,
                    service="bedrock",
                    region=self.aws_region,
                )
            except Invalid as exc:
                return error_response("bedrock", exc.status, exc)
            return None
        if route.platform == "vertex":
            auth = headers.get("authorization", "")
            token = auth[7:].strip() if auth.startswith("Bearer ") else ""
            if not token:
                return error_response("gemini", 401, vertex_unauthenticated(missing=True))
            if not self._vertex_token_ok(token):
                return error_response("gemini", 401, vertex_unauthenticated(missing=False))
            return None
        if not azure_auth_ok(headers, self.azure_keys):
            return error_response(route.dialect, 401, body=AZURE_DENIED)
        if "api-version" not in request.query:
            if route.platform == "foundry":
                return error_response(route.dialect, 400, body=FOUNDRY_NO_API_VERSION)
            if route.method == "legacy":
                return error_response(route.dialect, 404, body=AZURE_NOT_FOUND)
        return None

    def _vertex_token_ok(self, token: str) -> bool:
        with self._lock:
            expiry = self.issued_tokens.get(token)
            if expiry is not None:
                return expiry > time.time()
            return self.vertex_tokens is None or token in self.vertex_tokens

    def _token(self, provider: str, request: HttpRequest) -> HttpResponse:
        headers = [("content-type", "application/json; charset=utf-8")]
        if request.method != "POST":
            return HttpResponse(405, headers, b'{"error":"invalid_request"}')
        audience = f"http://{request.headers.get('host', '')}{request.path}"
        try:
            form = parse_token_form(request.body)
            claims = check_assertion(form["assertion"], audience, self.service_accounts)
        except TokenError as exc:
            return HttpResponse(exc.status, headers, orjson.dumps(exc.body()))
        token = f"ya29.sim-{secrets.token_urlsafe(24)}"
        with self._lock:
            self.issued_tokens[token] = time.time() + self.token_expires_in
            self.token_requests.append(
                RecordedRequest(
                    provider,
                    request.path,
                    request.query,
                    request.headers,
                    {**form, "claims": claims},
                    "oauth",
                    request.body,
                    "oauth",
                )
            )
        answer = {
            "access_token": token,
            "expires_in": self.token_expires_in,
            "token_type": "Bearer",
        }
        return HttpResponse(200, headers, orjson.dumps(answer))
