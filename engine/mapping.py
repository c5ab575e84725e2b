"""One provider mapping file: loaded strictly, validated, linted and compiled once.

File layout (see ``mappings/README.md`` for the reference)::

    version: 1
    extends: _dialects/anthropic_messages    # deep-merged below this file; None deletes a key
    provider: {api_base, api_base_path, api_key_env, auth,   # connection defaults
               pricing_id, context_window_errors, native_state}   # read by the server
    request: {method, url, headers, body, rejects}
    response: [rules]                         # whole non-streamed reply → ops
    stream: {framing, key, events, default, ignore}
    finish_reasons: {native: completed | incomplete/max_output_tokens | ...}
    errors: {code, message, type, retry_after, status}
    count_tokens: {url, omit | keep, body, tokens}   # POST /v1/responses/input_tokens
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from turnout.engine import rules as rule_mod
from turnout.engine.api_base import BaseNormalizer, compile_base_path
from turnout.engine.canonical import OPENAI_ONLY_FIELDS, VIEW_FIELDS, CanonicalRequest
from turnout.engine.diagnostics import Problem, nearest
from turnout.engine.errors import (
    InternalError,
    MappingError,
    RequestError,
    UpstreamError,
    type_for_status,
)
from turnout.engine.expressions import Expression, TextTemplate, attribute_uses, compile_leaf
from turnout.engine.framing import FRAMINGS, FrameDecoder, make_decoder
from turnout.engine.ops import FINISH_STATUSES
from turnout.engine.schema_check import check, load_schema
from turnout.engine.template import Node, TemplateProblem, compile_template
from turnout.engine.yamlstrict import LoadedYaml, load_yaml

__all__ = [
    "CompiledMapping",
    "CountSpec",
    "StreamDecoder",
    "UpstreamRequest",
    "load_mapping",
    "provider_section",
]

# Headers a signer adds that must never be logged or stored.
_SIGNING_SECRETS = frozenset({"authorization", "x-amz-security-token"})

Op = dict[str, Any]
KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool
    # Header names whose values are secrets: never logged, never stored.
    secret_headers: frozenset[str] = field(default=frozenset())


@dataclass(frozen=True)
class CountSpec:
    """A mapping's `count_tokens:` section, compiled: where the provider counts a request's
    input tokens, how its body derives from the rendered create body, where the number is."""

    url: Node
    omit: frozenset[str] | None
    keep: frozenset[str] | None
    body: Node | None
    tokens: rule_mod.Getter


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _deep_merge(merged[key], value)
            else:
                merged[key] = value
        return merged
    return over


class _Sources:
    """Where each key path came from, so a problem in merged data points at the right file."""

    def __init__(self, files: list[LoadedYaml]) -> None:
        self.files = files  # most specific first

    def problem(self, path: KeyPath, message: str, hint: str | None = None) -> Problem:
        """At the file that writes the longest part of ``path`` (a dialect's `request.body.x`
        is its own, even when the provider file has a `request:` of its own); on a tie, the
        most specific file."""
        best: tuple[int, LoadedYaml] | None = None
        for loaded in self.files:
            for cut in range(len(path), 0, -1):
                if tuple(path[:cut]) in loaded.marks:
                    if best is None or cut > best[0]:
                        best = (cut, loaded)
                    break
        return (best[1] if best is not None else self.files[0]).problem(path, message, hint)


# Ops whose `text` is appended to the output: a provider sending a number or an object there
# sent a reply of the wrong shape (502), not one the builder should fail on later.
_TEXT_OPS = frozenset({"text_delta", "refusal_delta", "reasoning_delta", "tool_args_delta"})


def _bad_shape(provider: str, op: str) -> UpstreamError:
    return UpstreamError(
        502,
        f"{provider} answered with text of the wrong type ({op}); the reply is not usable",
        code="upstream_bad_response",
        type="server_error",
        provider=provider,
    )


class StreamDecoder:
    """Bytes of one streamed reply → ops. One per upstream response."""

    __slots__ = ("_ctx", "_dispatch", "_frames", "_saw_finish", "events", "provider")

    def __init__(
        self, frames: FrameDecoder, dispatch: rule_mod.Dispatch, provider: str = "upstream"
    ) -> None:
        self.provider = provider
        self._frames = frames
        self._dispatch = dispatch
        self._ctx: dict[str, Any] = {}
        self._saw_finish = False
        self.events = 0  # frames decoded so far: how far a cut stream got

    def _ops(self, frames: list[Any]) -> list[Op]:
        out: list[Op] = []
        ctx = self._ctx
        self.events += len(frames)
        for frame in frames:
            payload = frame.payload
            if payload is None:  # `[DONE]`
                continue
            ctx["root"], ctx["event"], ctx["d"] = payload, frame.event, payload
            rules = self._dispatch.rules_for(payload, ctx)
            if rules:
                for rule in rules:
                    rule.run(payload, ctx, out)
        for op in out:
            name = op["op"]
            if name in ("finish", "error"):
                self._saw_finish = True
            elif name in _TEXT_OPS and not isinstance(op.get("text"), str):
                raise _bad_shape(self.provider, name)
        return out

    def feed(self, chunk: bytes) -> list[Op]:
        return self._ops(self._frames.feed(chunk))

    def close(self) -> list[Op]:
        out = self._ops(self._frames.close())
        if not self._saw_finish:
            # Every provider names a stop reason; a stream without one was cut short (the
            # builder puts the provider's name in front, as for its in-band errors).
            n = self.events
            out.append(
                {"op": "error", "code": "server_error",
                 "message": "the upstream stream ended before the response was complete "
                            f"(no stop reason after {n} event{'' if n == 1 else 's'})"}
            )  # fmt: skip
        return out

    @property
    def unknown_events(self) -> dict[str, int]:
        return self._dispatch.unknown


@dataclass
class CompiledMapping:
    provider: str
    path: str
    defaults: dict[str, Any]
    finish_reasons: dict[str, str]
    _method: str
    _url: Node
    _headers: Node
    _body: Node
    _rejects: list[tuple[Expression, _Text, _Text, tuple[str, ...]]]
    _response: list[Any]
    _stream: rule_mod.Dispatch
    _framing: str
    _errors: dict[str, Any]
    _secret_headers: frozenset[str]
    _signing: Node | None = None
    # `compact:` (the provider's own /responses/compact): url and body templates, or None.
    _compact: tuple[Node, Node] | None = None
    variants: list[tuple[re.Pattern[str], str]] = field(default_factory=list)
    # provider.api_base_path: a configured base in the form the url template expects.
    normalize_base: BaseNormalizer = field(default_factory=BaseNormalizer)
    # count_tokens: None when the provider has no counting endpoint.
    _count: CountSpec | None = None

    @property
    def counts_tokens(self) -> bool:
        """Whether the provider can count a request's input tokens (`count_tokens:`)."""
        return self._count is not None

    def build_request(
        self,
        req: CanonicalRequest,
        *,
        model: str,
        api_base: str,
        credentials: Mapping[str, str],
        settings: Mapping[str, Any] | None = None,
        stream: bool | None = None,
    ) -> UpstreamRequest:
        streaming = req.stream if stream is None else stream
        ctx = self._context(req, model, api_base, credentials, settings, streaming)
        return self._render(ctx, self._url, self._body, credentials, streaming)

    def build_count_request(
        self,
        req: CanonicalRequest,
        *,
        model: str,
        api_base: str,
        credentials: Mapping[str, str],
        settings: Mapping[str, Any] | None = None,
    ) -> UpstreamRequest:
        """The provider's request counting `req`'s input tokens: the create body rendered
        (not streamed), reshaped by `count_tokens:`, sent with the same headers and signing."""
        spec = self._count
        if spec is None:
            raise RequestError(
                400,
                f"The provider '{self.provider}' has no endpoint that counts input tokens; "
                "POST /v1/responses/input_tokens works with providers that count them.",
                param="model",
                code="unsupported_endpoint",
            )
        ctx = self._context(req, model, api_base, credentials, settings, False)

        def body(ctx: dict[str, Any]) -> Any:
            created = self._body(ctx)
            if isinstance(created, dict):
                if spec.keep is not None:
                    created = {k: v for k, v in created.items() if k in spec.keep}
                if spec.omit is not None:
                    created = {k: v for k, v in created.items() if k not in spec.omit}
            return created if spec.body is None else spec.body({**ctx, "body": created})

        return self._render(ctx, spec.url, body, credentials, False)

    def parse_count(self, body: bytes) -> int:
        """The input-token count in the counting endpoint's reply (502 when it has none)."""
        spec = self._count
        try:
            payload = orjson.loads(body)
            value = None if spec is None else spec.tokens(payload, {"d": payload, "root": payload})
        except Exception:
            value = None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UpstreamError(
                502,
                f"{self.provider} answered the token count without a count; the reply is not "
                "usable",
                code="upstream_bad_response",
                type="server_error",
                provider=self.provider,
            )
        return value

    def _context(
        self,
        req: CanonicalRequest,
        model: str,
        api_base: str,
        credentials: Mapping[str, str],
        settings: Mapping[str, Any] | None,
        streaming: bool,
    ) -> dict[str, Any]:
        ctx: dict[str, Any] = {
            "req": req.view, "model": model, "stream": streaming,
            "api_base": self.normalize_base(api_base), "credentials": credentials,
            "settings": settings or {}, "provider": self.provider,
        }  # fmt: skip
        view = req.view
        for when, param, message, reads in self._rejects:
            # A reject tests for a parameter the client set: skip it while all it reads is unset.
            if any(view.get(name) for name in reads) and when(ctx):
                raise RequestError(
                    400, _text(message, ctx), param=_text(param, ctx), code="unsupported_parameter"
                )
        return ctx

    @property
    def compacts(self) -> bool:
        """The provider compacts itself (`compact:`): `build_compact` makes the call."""
        return self._compact is not None

    def build_compact(
        self,
        req: CanonicalRequest,
        *,
        model: str,
        api_base: str,
        credentials: Mapping[str, str],
        settings: Mapping[str, Any] | None = None,
    ) -> UpstreamRequest:
        """The provider's own compact call (`compact.url` sees the create call's `url`)."""
        if self._compact is None:
            raise InternalError(
                f"mapping {self.provider!r} has no compact section", code="mapping_error"
            )
        ctx = self._context(req, model, api_base, credentials, settings, False)
        ctx["url"] = str(self._url(ctx))
        url, body = self._compact
        return self._render(ctx, url, body, credentials, False)

    def _render(
        self,
        ctx: dict[str, Any],
        url_node: Node,
        body_node: Node,
        credentials: Mapping[str, str],
        streaming: bool,
    ) -> UpstreamRequest:
        try:
            url = str(url_node(ctx))
            raw_headers = self._headers(ctx) or {}
            body = body_node(ctx)
            signing = self._signing(ctx) if self._signing is not None else None
        except RequestError:
            raise
        except Exception as exc:  # a template fault is ours, never the client's
            raise InternalError(
                f"mapping {self.provider!r} failed to render the request: {type(exc).__name__}",
                code="mapping_error",
                provider=self.provider,
            ) from exc
        headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}
        headers.setdefault("content-type", "application/json")
        payload = orjson.dumps(body)
        secret = self._secret_headers
        if signing is not None:
            from turnout.engine.signing import sign  # only mappings that sign pay for the import

            # Signed last, over the exact bytes that go on the wire.
            added = sign(
                signing, method=self._method, url=url, headers=headers, body=payload,
                credentials=ctx["credentials"], now=datetime.now(UTC),
            )  # fmt: skip
            headers.update(added)
            secret = secret | _SIGNING_SECRETS
        return UpstreamRequest(
            method=self._method,
            url=url,
            headers=headers,
            body=payload,
            stream=streaming,
            secret_headers=secret,
        )

    def parse_response(self, body: bytes) -> list[Op]:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                502,
                f"{self.provider} answered with a body that is not JSON",
                code="upstream_bad_response",
                type="server_error",
                provider=self.provider,
            ) from None
        ctx: dict[str, Any] = {"root": payload, "event": None}
        try:
            ops = rule_mod.run_rules(self._response, payload, ctx)
        except Exception as exc:
            # JSON of the wrong shape (no usage, a number where text goes): the provider's
            # fault, a 502 like any unreadable reply, never a 500 from inside a template.
            raise UpstreamError(
                502,
                f"{self.provider} answered with a body of an unexpected shape "
                f"({type(exc).__name__}); the reply is not usable",
                code="upstream_bad_response",
                type="server_error",
                provider=self.provider,
            ) from None
        for op in ops:
            if op["op"] in _TEXT_OPS and not isinstance(op.get("text"), str):
                raise _bad_shape(self.provider, op["op"])
        if not any(op["op"] in ("finish", "error") for op in ops):
            raise UpstreamError(
                502,
                f"{self.provider} answered without a stop reason; the reply is not usable",
                code="upstream_bad_response",
                type="server_error",
                provider=self.provider,
            )
        return ops

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(make_decoder(self._framing), self._stream, self.provider)

    def parse_error(
        self, status: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> UpstreamError:
        try:
            payload: Any = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            payload = {}
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        ctx: dict[str, Any] = {"d": payload, "root": payload, "h": hdrs, "status": status}
        errors = self._errors
        message = errors["message"](payload, ctx) if "message" in errors else None
        code = errors["code"](payload, ctx) if "code" in errors else None
        retry_after: float | None = None
        if "retry_after" in errors:
            retry_after = _as_seconds(errors["retry_after"](payload, ctx))
        if retry_after is None:
            retry_after = _as_seconds(hdrs.get("retry-after"))
        out_status = errors["status"].get(str(code), errors["status"].get(str(status), status))
        if out_status >= 500 and out_status not in (503, 504):
            out_status = 502
        text = str(message) if message else f"{self.provider} answered HTTP {status}"
        return UpstreamError(
            int(out_status),
            f"{self.provider}: {text}",
            code=str(code) if code is not None else None,
            type=type_for_status(int(out_status)),
            retry_after=retry_after,
            provider=self.provider,
        )


def _as_seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().rstrip("s")
    try:
        return max(0.0, float(text))
    except ValueError:
        return None


_CHECKED: dict[tuple[str, str, int, int], tuple[LoadedYaml, list[Problem]]] = {}


def _read_checked(path: Path, display: str) -> tuple[LoadedYaml, list[Problem]]:
    """A file parsed and schema-checked once per content: every provider that extends a
    dialect would otherwise parse it again (start-up time grows with the provider count)."""
    try:
        stat = path.stat()
        key = (str(path.resolve()), display, stat.st_mtime_ns, stat.st_size)
        found = _CHECKED.get(key)
        if found is not None:
            return found
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError([Problem(display, 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    loaded = load_yaml(text, display)
    result = (loaded, check(loaded, load_schema("mapping"), loaded.filename))
    _CHECKED[key] = result
    return result


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _load_chain(path: Path, root: Path, problems: list[Problem]) -> tuple[Any, list[LoadedYaml]]:
    loaded, found = _read_checked(path, _display(path))
    problems.extend(found)
    data = loaded.data if isinstance(loaded.data, dict) else {}
    parent_name = data.get("extends")
    if not parent_name:
        return data, [loaded]
    parent_path = root / f"{parent_name}.yaml"
    if not parent_path.is_file():
        options = [str(p.relative_to(root))[:-5] for p in root.glob("_dialects/*.yaml")]
        guess = nearest(str(parent_name), options)
        problems.append(
            loaded.problem(
                ("extends",),
                f"no dialect {parent_name!r} under {root}",
                f"did you mean {guess!r}?" if guess else None,
            )
        )
        return data, [loaded]
    parent, files = _load_chain(parent_path, root, problems)
    merged = _deep_merge(copy.deepcopy(parent), {k: v for k, v in data.items() if k != "extends"})
    return merged, [loaded, *files]


def _lint_req_names(tree: Any, path: KeyPath, sources: _Sources, problems: list[Problem]) -> None:
    if isinstance(tree, str):
        for name in attribute_uses(tree, "req") - VIEW_FIELDS:
            guess = nearest(name, sorted(VIEW_FIELDS))
            problems.append(
                sources.problem(
                    path, f"req.{name} is not a field of the canonical request",
                    f"did you mean req.{guess}?" if guess else None,
                )
            )  # fmt: skip
    elif isinstance(tree, dict):
        for key, value in tree.items():
            _lint_req_names(value, (*path, key), sources, problems)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            _lint_req_names(value, (*path, i), sources, problems)


def _compile_or_report(
    tree: Any, path: KeyPath, sources: _Sources, problems: list[Problem]
) -> Node:
    try:
        return compile_template(tree, path)
    except TemplateProblem as exc:
        problems.append(sources.problem(exc.path, exc.message))
        return lambda _ctx: None


def _compile_rules_or_report(
    fn: Any, spec: Any, path: KeyPath, sources: _Sources, problems: list[Problem]
) -> Any:
    try:
        return fn(spec, path)
    except rule_mod.RuleProblem as exc:
        problems.extend(sources.problem(one.path, one.message, one.hint) for one in exc.all)
        return None


def _secret_header_names(headers: Mapping[str, Any]) -> frozenset[str]:
    # A header whose template reads credentials carries a secret: never log or store it.
    return frozenset(
        str(k).lower() for k, v in headers.items() if isinstance(v, str) and "credentials" in v
    )


def provider_section(path: Path, root: Path | None = None) -> dict[str, Any]:
    """The ``provider:`` section of one mapping with its ``extends:`` applied, without compiling
    the rest: what the server reads of a mapping folder it did not load itself (price catalogue
    id, context-window errors, native reasoning state)."""
    problems: list[Problem] = []
    data, _files = _load_chain(path, root or path.parent, problems)
    if problems:
        raise MappingError(problems)
    return dict(data.get("provider") or {})


def load_mapping(
    path: Path, root: Path | None = None, *, provider: str | None = None
) -> CompiledMapping:
    """Load, check and compile one mapping; every problem found is raised at once.

    ``provider`` names the provider id when it is not the file stem (a variant file).
    """
    root = root or path.parent
    problems: list[Problem] = []
    data, files = _load_chain(path, root, problems)
    sources = _Sources(files)
    if problems:
        raise MappingError(problems)
    for key in ("request", "response", "stream", "finish_reasons"):
        if key not in data:
            problems.append(sources.problem((), f"missing required section {key!r}"))
    if problems:
        raise MappingError(problems)
    request = data["request"]
    _lint_req_names(data, (), sources, problems)
    url = _compile_or_report(request.get("url"), ("request", "url"), sources, problems)
    headers = _compile_or_report(
        request.get("headers", {}), ("request", "headers"), sources, problems
    )
    body = _compile_or_report(request.get("body", {}), ("request", "body"), sources, problems)
    rejects = _compile_rejects(request.get("rejects") or {}, sources, problems)
    _check_openai_only(request.get("body", {}), rejects, sources, problems)
    response = _compile_rules_or_report(
        rule_mod.compile_rules, data["response"], ("response",), sources, problems
    )
    framing, stream = _compile_stream(data["stream"], sources, problems)
    finish = _finish_reasons(data["finish_reasons"], sources, problems)
    errors = _compile_errors(data.get("errors") or {}, sources, problems)
    signing = _compile_signing(request.get("signing"), sources, problems)
    compact = _compile_compact(data.get("compact"), sources, problems)
    variants = _compile_variants(data.get("variants") or [], root, sources, problems)
    provider_defaults = dict(data.get("provider") or {})
    normalize_base = _compile_base(provider_defaults, sources, problems)
    count = _compile_count(data.get("count_tokens"), sources, problems)
    if problems:
        raise MappingError(problems)
    return CompiledMapping(
        provider=provider or path.stem,
        path=files[0].filename,
        defaults=provider_defaults,
        finish_reasons=finish,
        _method=str(request.get("method", "POST")),
        _url=url,
        _headers=headers,
        _body=body,
        _rejects=rejects,
        _response=response,
        _stream=stream,
        _framing=framing,
        _errors=errors,
        _secret_headers=_secret_header_names(request.get("headers") or {}),
        _signing=signing,
        _compact=compact,
        variants=variants,
        normalize_base=normalize_base,
        _count=count,
    )


def _compile_compact(
    spec: Any, sources: _Sources, problems: list[Problem]
) -> tuple[Node, Node] | None:
    if not spec:
        return None
    url = _compile_or_report(spec.get("url"), ("compact", "url"), sources, problems)
    body = _compile_or_report(spec.get("body", {}), ("compact", "body"), sources, problems)
    return (url, body)


# Each step below compiles one section of a mapping, adding what is wrong to `problems` (so one
# run reports every problem of the file) and returning what compiled.


# A reject's `param` and `message` may name what was refused: `tools[{{ … .index }}]`.
_Text = str | TextTemplate | Expression


def _text(value: _Text, ctx: Mapping[str, Any]) -> str:
    return value if isinstance(value, str) else str(value(ctx))


def _compile_rejects(
    spec: Mapping[str, Any], sources: _Sources, problems: list[Problem]
) -> list[tuple[Expression, _Text, _Text, tuple[str, ...]]]:
    rejects: list[tuple[Expression, _Text, _Text, tuple[str, ...]]] = []
    for name, rej in spec.items():
        where = ("request", "rejects", name, "when")
        reads = tuple(sorted(attribute_uses(rej["when"], "req")))
        if not reads:
            problems.append(
                sources.problem(where, "a reject must test a req.* field the client sets")
            )
        try:
            param, message = compile_leaf(rej["param"]), compile_leaf(rej["message"])
            rejects.append((Expression(rej["when"]), param, message, reads))
        except ValueError as exc:
            problems.append(sources.problem(where, str(exc)))
    return rejects


def _req_reads(tree: Any) -> set[str]:
    """Every `req.<field>` a template tree reads."""
    if isinstance(tree, str):
        return attribute_uses(tree, "req")
    if isinstance(tree, dict):
        return {name for value in tree.values() for name in _req_reads(value)}
    if isinstance(tree, list):
        return {name for value in tree for name in _req_reads(value)}
    return set()


def _check_openai_only(
    body: Any,
    rejects: Sequence[tuple[Expression, _Text, _Text, tuple[str, ...]]],
    sources: _Sources,
    problems: list[Problem],
) -> None:
    """An OpenAI-only field is sent (the body reads it, or the whole raw request) or refused (a
    reject reads it): a mapping that does neither would drop it silently."""
    sent = _req_reads(body)
    if "raw" in sent:
        return
    refused = {name for _, _, _, reads in rejects for name in reads}
    for name in OPENAI_ONLY_FIELDS:
        if name not in sent and name not in refused:
            problems.append(
                sources.problem(
                    ("request",),
                    f"the OpenAI-only field req.{name} is neither sent (request.body) nor "
                    "refused (request.rejects): it would be dropped silently",
                    "extend _dialects/not_openai, or add a reject that tests it",
                )
            )


def _compile_stream(
    stream_spec: Mapping[str, Any], sources: _Sources, problems: list[Problem]
) -> tuple[str, Any]:
    """(framing name, compiled event dispatch) of the `stream` section."""
    framing = str(stream_spec.get("framing", "sse"))
    if framing not in FRAMINGS:
        problems.append(
            sources.problem(("stream", "framing"), f"unknown framing {framing!r}",
                            f"known: {', '.join(sorted(FRAMINGS))}")
        )  # fmt: skip
    spec = {k: v for k, v in stream_spec.items() if k != "framing"}
    stream = _compile_rules_or_report(
        rule_mod.compile_dispatch, spec, ("stream",), sources, problems
    )
    return framing, stream


def _finish_reasons(
    spec: Mapping[str, Any], sources: _Sources, problems: list[Problem]
) -> dict[str, str]:
    finish = {str(k): str(v) for k, v in spec.items()}
    for native, status in finish.items():
        if status not in FINISH_STATUSES:
            problems.append(
                sources.problem(("finish_reasons", native), f"unknown status {status!r}",
                                f"one of: {', '.join(sorted(FINISH_STATUSES))}")
            )  # fmt: skip
    return finish


def _compile_errors(
    spec: Mapping[str, Any], sources: _Sources, problems: list[Problem]
) -> dict[str, Any]:
    errors: dict[str, Any] = {"status": {}}
    for key, value in spec.items():
        if key == "status":
            errors["status"] = {str(k): int(v) for k, v in value.items()}
            continue
        try:
            errors[key] = rule_mod._getter(value, ("errors", key))
        except rule_mod.RuleProblem as exc:
            problems.append(sources.problem(exc.path, exc.message))
    return errors


def _compile_signing(spec: Any, sources: _Sources, problems: list[Problem]) -> Node | None:
    if not spec:
        return None
    from turnout.engine.signing import SIGNERS

    if spec.get("type") not in SIGNERS:
        problems.append(
            sources.problem(
                ("request", "signing", "type"),
                f"unknown signer {spec.get('type')!r}",
                f"known: {', '.join(sorted(SIGNERS))}",
            )
        )
    return _compile_or_report(spec, ("request", "signing"), sources, problems)


def _compile_variants(
    spec: Sequence[Any], root: Path, sources: _Sources, problems: list[Problem]
) -> list[tuple[re.Pattern[str], str]]:
    variants: list[tuple[re.Pattern[str], str]] = []
    for i, variant in enumerate(spec):
        try:
            variants.append((re.compile(str(variant["model"])), str(variant["use"])))
        except re.error as exc:
            problems.append(sources.problem(("variants", i, "model"), f"bad regex: {exc}"))
        if not (root / f"{variant['use']}.yaml").is_file():
            problems.append(
                sources.problem(
                    ("variants", i, "use"), f"no mapping {variant['use']!r} under {root}"
                )
            )
    return variants


def _compile_base(
    provider_defaults: Mapping[str, Any], sources: _Sources, problems: list[Problem]
) -> BaseNormalizer:
    try:
        return compile_base_path(provider_defaults.get("api_base_path"))
    except re.error as exc:
        problems.append(
            sources.problem(("provider", "api_base_path", "hosts"), f"bad host regex: {exc}")
        )
        return BaseNormalizer()


def _compile_count(spec: Any, sources: _Sources, problems: list[Problem]) -> CountSpec | None:
    if not spec:
        return None
    where = ("count_tokens",)
    for key in ("url", "tokens"):
        if not spec.get(key):
            problems.append(sources.problem(where, f"count_tokens needs {key!r}"))
    url = _compile_or_report(spec.get("url"), (*where, "url"), sources, problems)
    body = spec.get("body")
    node = None if body is None else _compile_or_report(body, (*where, "body"), sources, problems)
    try:
        tokens = rule_mod._getter(spec.get("tokens"), (*where, "tokens"))
    except rule_mod.RuleProblem as exc:
        problems.append(sources.problem(exc.path, exc.message))
        tokens = rule_mod._getter(None, (*where, "tokens"))
    omit, keep = spec.get("omit"), spec.get("keep")
    return CountSpec(
        url=url,
        omit=None if omit is None else frozenset(omit),
        keep=None if keep is None else frozenset(keep),
        body=node,
        tokens=tokens,
    )
