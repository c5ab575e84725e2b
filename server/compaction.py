"""`POST /v1/responses/compact`: a long conversation turned into one opaque `compaction` item.

Turnout compacts with the model the client names: one non-streamed summarising call through the
normal create path (the history, then an instruction to summarise), so it is routed, priced,
stored and logged like any response. The reply is OpenAI's `response.compaction` object: its
output is one `compaction` item whose `encrypted_content` is the summary sealed with the
gateway's key (engine/compaction.py), and the usage (with `usage.cost`) of the summarising call.
On a later create, on any provider, engine/canonical.py opens the blob and puts the summary
before the new input; an altered blob, or one sealed by another key, is a 400.

The key: the config's `auth.compaction_key` when set (e.g. `"${TURNOUT_COMPACTION_KEY}"`, the same
on every replica), else derived from the master key, else random per process (compactions then
last as long as the process).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from turnout.engine.canonical import KNOWN_FIELDS, normalize
from turnout.engine.compaction import seal_summary
from turnout.engine.errors import RequestError, UpstreamError
from turnout.engine.ids import IdFactory
from turnout.server.access.admission import Admission
from turnout.server.config import Settings
from turnout.server.history import items, load_chain
from turnout.server.pricing import PriceBook, usage_counts
from turnout.server.replies import JsonReply, StreamReply
from turnout.server.request_context import Caller
from turnout.server.stores.base import ResponseStore
from turnout.server.targets import Targets
from turnout.server.telemetry.hub import CURRENT
from turnout.server.trail import trail_headers
from turnout.server.upstream import Upstream

__all__ = [
    "COMPACT_FIELDS",
    "SUMMARY_INSTRUCTION",
    "Compactor",
    "NativeCompact",
    "compaction_key",
]

# CompactResponseMethodPublicBody's fields (+ `image`, which the SDK sends).
COMPACT_FIELDS = frozenset(
    {
        "model", "input", "instructions", "previous_response_id", "prompt_cache_key",
        "prompt_cache_retention", "prompt_cache_options", "service_tier", "image",
    }
)  # fmt: skip
# Passed on to the summarising create call as they are (the others are OpenAI's cache hints).
_PASSED = ("instructions", "previous_response_id", "prompt_cache_key", "service_tier")

SUMMARY_INSTRUCTION = (
    "You are performing a context checkpoint compaction. Summarise the conversation so far "
    "for your own later use: the user's goals and constraints, the facts, decisions and "
    "results established, names, numbers and identifiers that matter, and what is still open. "
    "Be complete but concise; write only the summary."
)

_NO_USAGE = {
    "input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
    "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0,
}  # fmt: skip

Create = Callable[[Any, Caller], Awaitable[JsonReply | StreamReply]]
# The provider's own compaction, or None when the model's provider has none (`compact:`).
Native = Callable[[dict[str, Any], Caller], Awaitable[JsonReply | None]]


def compaction_key(settings: Settings) -> bytes:
    """The key Turnout seals its compaction blobs with (see the module docstring)."""
    configured = settings.compaction_key
    if configured:
        return hashlib.sha256(configured.encode()).digest()
    if settings.master_key:
        return hmac.new(
            settings.master_key.encode(), b"turnout compaction", hashlib.sha256
        ).digest()
    return secrets.token_bytes(32)


def _bad(message: str, param: str | None, code: str = "invalid_value") -> RequestError:
    return RequestError(400, message, param=param, code=code)


def _summary_call(body: Any) -> dict[str, Any]:
    """The create body of the summarising call, from a compact body (checked here)."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", None, "invalid_type")
    unknown = [k for k in body if k not in COMPACT_FIELDS]
    if unknown:
        raise _bad(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    model = body.get("model")
    if model is None:
        raise _bad("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _bad(
            "Invalid type for 'model': expected a non-empty string.", "model", "invalid_type"
        )
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        items: list[Any] = [{"type": "message", "role": "user", "content": raw_input}]
    elif isinstance(raw_input, list):
        items = list(raw_input)
    elif raw_input is None:
        items = []
    else:
        raise _bad(
            "Invalid type for 'input': expected a string or an array.", "input", "invalid_type"
        )
    if not items and body.get("previous_response_id") is None:
        raise _bad(
            "Nothing to compact: send 'input' or 'previous_response_id'.",
            "input",
            "missing_required_parameter",
        )
    instruction = {"type": "message", "role": "user", "content": SUMMARY_INSTRUCTION}
    call: dict[str, Any] = {"model": model, "input": [*items, instruction], "stream": False}
    call.update((k, body[k]) for k in _PASSED if body.get(k) is not None)
    return call


def _summary(response: dict[str, Any]) -> str:
    """The assistant text of the summarising response; an upstream error when there is none."""
    error = response.get("error")
    if response.get("status") == "failed" and isinstance(error, dict):
        raise UpstreamError(502, str(error.get("message")), code=str(error.get("code")))
    text = "".join(
        part.get("text", "")
        for item in response.get("output") or []
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or []
        if isinstance(part, dict) and part.get("type") == "output_text"
    )
    if not text.strip():
        raise UpstreamError(
            502, "The model returned no summary to compact the conversation into.",
            code="empty_compaction",
        )  # fmt: skip
    return text


class NativeCompact:
    """A provider that compacts itself (its mapping's `compact:`, the Responses dialect): the
    call passes through to it, priced like a response; its compaction item is returned as it
    is (only that provider can read it: on a later turn it goes back there unchanged)."""

    def __init__(
        self,
        store: ResponseStore,
        targets: Targets,
        upstream: Upstream,
        prices: PriceBook,
        key: bytes,
    ) -> None:
        self.store = store
        self.targets = targets
        self.upstream = upstream
        self.prices = prices
        self.key = key
        # The caller's limits and budgets (server/access/admission.py), wired by the gateway:
        # a native compact call is admitted and settled like a response.
        self.admission: Admission | None = None

    async def __call__(self, body: dict[str, Any], caller: Caller) -> JsonReply | None:
        model = str(body["model"])
        target = self.targets.resolve(model)
        mapping = target.mapping
        build = getattr(mapping, "build_compact", None)
        if not getattr(mapping, "compacts", False) or build is None or target.pending:
            return None
        admission = self.admission
        admitted = {} if admission is None else await admission.admit(caller, model)
        chain = await load_chain(self.store, body.get("previous_response_id"))
        create_like = {k: v for k, v in body.items() if k in KNOWN_FIELDS}
        canon = normalize({**create_like, "input": body.get("input") or []}, items(chain),
                          seal_key=self.key)  # fmt: skip
        request = build(
            canon, model=target.model, api_base=target.api_base,
            credentials=target.credentials, settings=target.settings,
        )  # fmt: skip
        reply = await self.upstream.send(request, mapping, read_timeout_s=target.timeout_s)
        try:
            payload = orjson.loads(reply.content)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict) or payload.get("object") != "response.compaction":
            raise UpstreamError(
                502, f"{target.provider} answered the compact call with something else",
                code="upstream_bad_response", type="server_error", provider=target.provider,
            )  # fmt: skip
        usage = payload.get("usage")
        counts = usage_counts(usage)
        price = self.prices.cost(
            target.provider, target.model, counts, alias=model,
            created_at=int(payload.get("created_at") or time.time()),
        )  # fmt: skip
        if isinstance(usage, dict):
            usage["cost"] = None if price is None else price.cost
        if admission is not None:
            admission.settle(caller, None if price is None else price.cost, counts)
        ctx = CURRENT.get()
        if ctx is not None:  # the request's telemetry record, like a response's
            ctx.response_id = str(payload.get("id"))
            ctx.status = "completed"
            ctx.provider = target.provider
            ctx.upstream_model = target.model
            ctx.deployment = target.deployment
            ctx.usage = {
                "input_tokens": counts.input_tokens, "cached_tokens": counts.cached_tokens,
                "cache_write_tokens": counts.cache_write_tokens,
                "output_tokens": counts.output_tokens,
                "reasoning_tokens": counts.reasoning_tokens,
            }  # fmt: skip
            ctx.cost = None if price is None else price.cost
            ctx.cost_source = None if price is None else price.source
        return JsonReply(payload, {**trail_headers(target.deployment or model, 1), **admitted})


class Compactor:
    """Compacts through the provider's own compact call where it has one, else through the
    gateway's own create path (any provider)."""

    def __init__(
        self, create: Create, key: bytes, ids: IdFactory, native: Native | None = None
    ) -> None:
        self.create = create
        self.key = key
        self.ids = ids
        self.native = native

    async def compact(self, body: Any, caller: Caller) -> JsonReply:
        call = _summary_call(body)  # validates the body
        if self.native is not None:
            passed = await self.native(body, caller)
            if passed is not None:
                return passed
        reply = await self.create(call, caller)
        if not isinstance(reply, JsonReply):  # stream is False: a JSON reply by construction
            raise TypeError("the summarising call must not stream")
        response = reply.response
        summary = _summary(response)
        item = {
            "type": "compaction",
            "id": self.ids.new("cmp_"),
            "encrypted_content": seal_summary(summary, self.key),
        }
        compacted = {
            "id": response["id"],
            "object": "response.compaction",
            "created_at": response["created_at"],
            "output": [item],
            "usage": response.get("usage") or dict(_NO_USAGE),
        }
        return JsonReply(compacted, reply.headers)
