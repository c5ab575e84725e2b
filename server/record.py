"""`turnout record`: send one real request to a provider and keep it as a fixture set + case.

The request goes through the very path the server uses: `Gateway.create` resolves the model and
credentials (`server.config.Settings`), the mapping renders the request and `Upstream` sends it.
`RecordingUpstream` only taps what passes: the rendered call, the status, the response headers and
the raw body bytes. Written next to each other (``<out>/<name>.*``):

    <name>.request.json   the native request body
    <name>.meta.json      method, url, status, request and response headers (secrets masked)
    <name>.sse|.json      the reply body, byte for byte
    <name>.case.yaml      a case file (engine/cases.py) whose `expect` is what Turnout produced

Where (`--out DIR` chooses; `default_out_dir` otherwise): when the mappings folder in use keeps a
`cases/` folder (a source checkout, or an operator's own `mappings_dir` with its cases), the files
go to `<mappings_dir>/cases/<provider>/recorded/`, beside the cases they are meant to join; else
(an installed wheel: the bundled mappings sit in site-packages and ship no cases) to
`./recorded/<provider>/` under the current directory, never into the installed package.

No secret value is ever written: credential headers and query parameters are masked by name, and
every file is scrubbed of the resolved credentials and of secret-looking environment values.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import yaml

from turnout.engine.cases import load_case, run_case
from turnout.engine.errors import UpstreamError
from turnout.engine.ids import DeterministicIdFactory
from turnout.engine.registry import MappingRegistry
from turnout.engine.sse import SSEDecoder
from turnout.server.config import Settings
from turnout.server.gateway import Gateway, StreamReply, Target
from turnout.server.stores.memory import MemoryStore
from turnout.server.upstream import ErrorParser, Upstream, UpstreamCall, UpstreamStream

__all__ = [
    "MASK",
    "RecordResult",
    "RecordingUpstream",
    "default_out_dir",
    "record",
    "redact_headers",
    "redact_url",
]

MASK = "***"
# Header and query names that carry credentials, whatever the provider (lower case).
_SECRET_HEADERS = frozenset(
    {
        "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
        "x-amz-security-token", "x-amz-content-sha256", "cookie", "set-cookie",
    }
)  # fmt: skip
_SECRET_NAME = re.compile(r"(?i)(key|token|secret|signature|credential|password|auth|sig$)")
_ENV_SECRET = re.compile(r"(?i)(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)")


def _is_secret_name(
    name: str, extra: frozenset[str] = frozenset(), *, by_pattern: bool = True
) -> bool:
    low = name.lower()
    if low in _SECRET_HEADERS or low in extra:
        return True
    return by_pattern and bool(_SECRET_NAME.search(low))


def redact_headers(
    headers: Mapping[str, str] | Sequence[tuple[str, str]],
    extra: frozenset[str] = frozenset(),
    *,
    by_pattern: bool = True,
) -> dict[str, list[str]]:
    """Headers as the fixtures keep them (`name: [values]`), credential values masked.
    `by_pattern=False` (reply headers) masks only known names, keeping e.g. the
    `*-ratelimit-*-tokens` counters readable."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, list[str]] = {}
    for name, value in items:
        secret = _is_secret_name(name, extra, by_pattern=by_pattern)
        out.setdefault(name.lower(), []).append(MASK if secret else value)
    return out


def redact_url(url: str) -> str:
    """The URL with every credential-looking query value masked (`key=`, `X-Amz-Signature=`)."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = [(k, MASK if _is_secret_name(k) else v) for k, v in parse_qsl(parts.query, True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*:/")))


@dataclass
class _Tap:
    call: UpstreamCall | None = None
    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)


class _ErrorTap:
    """Passes `parse_error` through, keeping the error reply's bytes for the fixture."""

    def __init__(self, inner: ErrorParser, tap: _Tap) -> None:
        self._inner = inner
        self._tap = tap

    @property
    def provider(self) -> str:
        return self._inner.provider

    def parse_error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        self._tap.status = status
        self._tap.headers = list(headers.items())
        self._tap.body[:] = body
        return self._inner.parse_error(status, body, headers)


class _TapStream(UpstreamStream):
    def __init__(self, inner: UpstreamStream, tap: _Tap, provider: str) -> None:
        super().__init__(inner.response, provider)
        self._inner = inner
        self._tap = tap

    async def chunks(
        self, progress: Callable[[], str | None] | None = None
    ) -> AsyncIterator[bytes]:
        async for chunk in self._inner.chunks(progress):
            self._tap.body.extend(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class RecordingUpstream(Upstream):
    """The server's `Upstream`, keeping a copy of the one exchange it carries."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tap = _Tap()

    async def send(
        self, req: UpstreamCall, errors: ErrorParser, *, read_timeout_s: float | None = None
    ) -> Any:
        self.tap.call = req
        response = await super().send(
            req, _ErrorTap(errors, self.tap), read_timeout_s=read_timeout_s
        )
        self.tap.status = response.status_code
        self.tap.headers = list(response.headers.multi_items())
        self.tap.body[:] = response.content
        return response

    async def open_stream(
        self, req: UpstreamCall, errors: ErrorParser, *, read_timeout_s: float | None = None
    ) -> UpstreamStream:
        self.tap.call = req
        stream = await super().open_stream(
            req, _ErrorTap(errors, self.tap), read_timeout_s=read_timeout_s
        )
        self.tap.status = stream.status_code
        self.tap.headers = list(stream.response.headers.multi_items())
        return _TapStream(stream, self.tap, errors.provider)


@dataclass
class RecordResult:
    files: list[Path]
    response: dict[str, Any] | None
    error: UpstreamError | None
    case_failures: list[str]


def _secrets(credentials: Mapping[str, str], env: Mapping[str, str]) -> list[str]:
    values = {v for v in credentials.values() if isinstance(v, str) and len(v) >= 4}
    values |= {v for k, v in env.items() if _ENV_SECRET.search(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)  # a key containing another is masked whole


def _scrub(data: bytes, secrets: Sequence[str]) -> bytes:
    for value in secrets:
        data = data.replace(value.encode(), MASK.encode())
    return data


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "recording"


class _CaseDumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CaseDumper.add_representer(str, _str_presenter)


def _expect_item(item: Mapping[str, Any]) -> dict[str, Any]:
    kind = item.get("type")
    out: dict[str, Any] = {"type": kind}
    if kind == "message":
        out["text"] = "".join(
            str(p.get("text") or p.get("refusal") or "") for p in item.get("content") or []
        )
    elif kind == "reasoning":
        out["text"] = "".join(str(p.get("text") or "") for p in item.get("summary") or [])
    elif kind == "function_call":
        out["name"] = item.get("name")
        try:
            out["arguments"] = orjson.loads(str(item.get("arguments") or ""))
        except orjson.JSONDecodeError:
            out["arguments"] = item.get("arguments")
    return out


def _expect(response: Mapping[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    usage = response.get("usage") or {}
    expect: dict[str, Any] = {
        "status": response.get("status"),
        "output": [_expect_item(i) for i in response.get("output") or []],
    }
    if usage:
        expect["usage"] = {
            "input_tokens": usage.get("input_tokens"),
            "output_tokens": usage.get("output_tokens"),
            "total_tokens": usage.get("total_tokens"),
            "cached_tokens": (usage.get("input_tokens_details") or {}).get("cached_tokens"),
            "reasoning_tokens": (usage.get("output_tokens_details") or {}).get("reasoning_tokens"),
        }
    if events:
        expect["events"] = list(dict.fromkeys(str(e.get("type")) for e in events))
    if response.get("status") == "incomplete":
        expect["response"] = {"incomplete_details": response.get("incomplete_details")}
    elif response.get("status") == "failed":
        expect["response"] = {"error": {"code": (response.get("error") or {}).get("code")}}
    return expect


async def _collect(reply: StreamReply) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    async for chunk in reply.chunks:
        for sse in [*decoder.feed(chunk)]:
            if sse.data and sse.data != "[DONE]":
                events.append(orjson.loads(sse.data))
    for sse in decoder.close():
        if sse.data and sse.data != "[DONE]":
            events.append(orjson.loads(sse.data))
    final = events[-1].get("response") if events else None
    return (final if isinstance(final, dict) else None), events


def default_out_dir(mappings_dir: str | Path, provider: str) -> Path:
    """Where `record` writes without `out_dir`: `<mappings_dir>/cases/<provider>/recorded/` when
    the mappings folder keeps a `cases/` folder (a source checkout, or an operator's own
    mappings), else `./recorded/<provider>/` under the current directory (an installed wheel
    ships no cases, and its mappings folder is inside site-packages)."""
    cases = Path(mappings_dir) / "cases"
    if cases.is_dir():
        return cases / provider / "recorded"
    return Path.cwd() / "recorded" / provider


async def record(
    model: str,
    text: str,
    *,
    settings: Settings,
    stream: bool = False,
    name: str | None = None,
    out_dir: str | Path | None = None,
    registry: MappingRegistry | None = None,
    upstream: RecordingUpstream | None = None,
) -> RecordResult:
    """Send `text` to `model` once, as the server would, and write the fixture set."""
    registry = registry or MappingRegistry.load(settings.mappings_dir)
    tap_upstream = upstream or RecordingUpstream()
    gateway = Gateway(settings, registry, MemoryStore(), tap_upstream, ids=DeterministicIdFactory())
    target = gateway.resolve(model)  # RequestError (unknown model, no key) before any I/O
    secrets = _secrets(target.credentials, settings.env)
    body: dict[str, Any] = {"model": model, "input": text}
    if stream:
        body["stream"] = True
    response, events, error = await _exchange(gateway, body, tap_upstream)
    tap = tap_upstream.tap
    if tap.call is None or tap.status is None:
        # Nothing came back (unreachable, timeout): there is nothing to record.
        raise error or UpstreamError(502, "no reply was recorded", code="upstream_unreachable")

    call, status = tap.call, tap.status
    out = Path(out_dir) if out_dir else default_out_dir(settings.mappings_dir, target.provider)
    out.mkdir(parents=True, exist_ok=True)
    kind = "stream" if stream else "json"
    stem = name or f"{_slug(target.model)}_{kind}_{time.strftime('%Y%m%d_%H%M%S')}"
    body_name = _body_name(stem, call, tap)
    try:
        native: Any = orjson.loads(call.body)
    except orjson.JSONDecodeError:
        native = None
    case = _case(body, target, _upstream_spec(call, tap, target, native, body_name))
    if error is not None:
        case["expect"] = {"error": {"status": error.status, "code": error.code}}
    else:
        assert response is not None
        case["expect"] = _expect(response, events)

    files = {
        out / f"{stem}.request.json": orjson.dumps(native, option=orjson.OPT_INDENT_2)
        if native is not None
        else bytes(call.body),
        out / f"{stem}.meta.json": orjson.dumps(
            _meta(call, status, tap.headers), option=orjson.OPT_INDENT_2
        ),
        out / body_name: bytes(tap.body),
        out / f"{stem}.case.yaml": yaml.dump(
            case, Dumper=_CaseDumper, sort_keys=False, allow_unicode=True, width=100
        ).encode(),
    }
    for path, data in files.items():
        path.write_bytes(_scrub(data, secrets))
    case_path = out / f"{stem}.case.yaml"
    failures = run_case(load_case(case_path), registry)
    return RecordResult(list(files), response, error, failures)


async def _exchange(
    gateway: Gateway, body: dict[str, Any], tap_upstream: RecordingUpstream
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], UpstreamError | None]:
    """(final Response, stream events, upstream error) of one create through the gateway."""
    response: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    error: UpstreamError | None = None
    try:
        reply = await gateway.create(body)
        if isinstance(reply, StreamReply):
            response, events = await _collect(reply)
        else:
            response = reply.response
    except UpstreamError as exc:
        error = exc
    finally:
        await tap_upstream.aclose()
    return response, events, error


def _body_name(stem: str, call: UpstreamCall, tap: _Tap) -> str:
    """The reply's file name: `.sse`, `.eventstream` (Bedrock's binary framing) or `.json`."""
    streamed = bool(call.stream) and (tap.status or 0) < 400
    content_type = next((v for k, v in tap.headers if k.lower() == "content-type"), "")
    if not streamed:
        return f"{stem}.json"
    return f"{stem}.eventstream" if "eventstream" in content_type else f"{stem}.sse"


def _meta(call: UpstreamCall, status: int, headers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    secret_headers = frozenset(getattr(call, "secret_headers", frozenset()))
    return {
        "method": call.method,
        "url": redact_url(call.url),
        "status": status,
        "request_headers": redact_headers(call.headers, secret_headers),
        "response_headers": redact_headers(headers, by_pattern=False),
    }


def _upstream_spec(
    call: UpstreamCall, tap: _Tap, target: Target, native: Any, body_name: str
) -> dict[str, Any]:
    """The case's `upstream`: the URL path, the plain headers and the native request to
    check, and the recorded reply to answer with."""
    api_base = target.api_base.rstrip("/")
    suffix = call.url[len(api_base) :] if api_base and call.url.startswith(api_base) else None
    spec: dict[str, Any] = {"match": "exact"}
    if suffix:
        query = parse_qsl(urlsplit(suffix).query, keep_blank_values=True)
        # Keep a query (api-version=…) in the check unless it carries a credential.
        secret_query = any(_is_secret_name(k, frozenset()) for k, _ in query)
        spec["url"] = urlsplit(suffix).path if secret_query else suffix
    secret_headers = frozenset(getattr(call, "secret_headers", frozenset()))
    # Signed requests carry per-call headers (x-amz-date…): a case must not pin those.
    plain_headers = {
        k: v for k, v in call.headers.items()
        if not _is_secret_name(k, secret_headers) and k.lower() != "content-type"
        and not k.lower().startswith("x-amz-")
    }  # fmt: skip
    if plain_headers:
        spec["headers"] = plain_headers
    if native is not None:
        spec["request"] = native
    reply_spec: dict[str, Any] = {"status": tap.status, "fixture": f"./{body_name}"}
    retry = next((v for k, v in tap.headers if k.lower() == "retry-after"), None)
    if retry is not None:
        reply_spec["headers"] = {"retry-after": retry}
    spec["response"] = reply_spec
    return spec


def _case(body: dict[str, Any], target: Target, upstream_spec: dict[str, Any]) -> dict[str, Any]:
    case: dict[str, Any] = {
        "description": f"Recorded by `turnout record` from {target.provider} on "
        f"{time.strftime('%Y-%m-%d')}; edit the expectations down to what matters.",
        "request": {**body, "model": f"{target.provider}/{target.model}"},
        "upstream": upstream_spec,
    }
    declared = target.mapping.defaults.get("settings") or {}
    case_settings = {k: v for k, v in target.settings.items() if k in declared and v is not None}
    if case_settings:  # settings the URL or body depend on (project, region, api_version)
        case["settings"] = case_settings
    return case
