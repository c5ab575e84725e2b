"""ResponseBuilder: canonical ops -> the Responses object and its ``response.*`` event stream.

This module owns the Responses event grammar once (see docs/internals.md "ResponseBuilder" and
shared/reference/responses-api.md section 7.3): ids, ``output_index`` allocation, part open/close,
``sequence_number``, ``.done`` events carrying the accumulated text, and exactly one terminal event.
A non-streamed answer is the same ops fed to the same builder, so stream and non-stream agree.

Block model. Ops address blocks by ``(family, index)``; text and refusal share the message family.
An op without ``index`` addresses the most recently opened block of its family.

* Opening a text/refusal, reasoning, image or search block closes every other open block:
  providers emit these items one after another.
* Opening a tool block closes open text/reasoning/image blocks but not other tool blocks, because
  Chat Completions interleaves parallel tool-call fragments by index.
* ``open_text`` is lazy: the message item appears on the first non-empty delta, so a message item
  is never empty and a tool-only turn has no message item (anchor failure 4).
* A text delta for a closed key opens a new message item. A tool-args delta for a closed tool
  block is dropped and counted in ``dropped_deltas``: appending to an item whose
  ``output_item.done`` was already sent would make the final output disagree with the stream, and
  reopening it would duplicate its ``call_id`` (the SDKs reject both). A tool-args delta with no
  open call to go to auto-opens one only if it carries ``call_id`` or ``name`` (and the call_id is
  not a finished one); otherwise it is dropped and counted the same way.
* A tool-args delta whose ``call_id`` differs from the provider-given call id of the open block
  with the same key starts a new call (some providers reuse index 0 for every parallel call).
  Unindexed calls carrying a ``call_id`` are keyed by it, so their fragments may interleave too.
* A web search (``search_start`` … ``search_done``) is one ``web_search_call`` item. Its
  arguments may stream like a tool call's (``tool_args_delta`` to its index); a ``close`` ends
  only its input (``searching``): the item completes with its results, when another item
  starts, or at the end. A search reported again under a key already seen is skipped (Gemini
  resends its grounding metadata). Its ``sources`` are shown when the request's ``include``
  asks for ``web_search_call.action.sources``, as at OpenAI.
* Citations (``cite``) become ``url_citation`` annotations of the open message's output_text
  part. With ``start``/``end`` they cover those offsets of the part (characters, or UTF-8 bytes
  with ``offsets: utf8``), resolved when the part ends; without, they cover the provider's
  current text ``segment`` (Anthropic cites a whole text block: ``segment`` on the text ops
  names it) and are annotated when the segment ends. ``text[start_index:end_index]`` is the
  cited span; ``response.output_text.annotation.added`` follows the deltas it covers.
* Events and the Response share sub-objects (echoed tools, final items): treat them as immutable.

Hot path: this runs once per upstream event, so events are built as plain dicts directly, nothing
is deep-copied, and text is accumulated in lists joined once at close.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import orjson

from turnout.engine.citations import Span, resolve_spans, search_action, url_citation
from turnout.engine.ids import IdFactory
from turnout.engine.ops import FINISH_STATUSES
from turnout.engine.state import decode_state, encode_state

__all__ = [
    "RESPONSE_ERROR_CODES",
    "Event",
    "ResponseBuilder",
    "decode_reasoning_state",
    "default_echo",
    "make_echo",
    "mint_reasoning_state",
    "response_error",
]

Event = dict[str, Any]
_Op = Mapping[str, Any]

# OAS `ResponseErrorCode` (shared/reference/openai-openapi.responses-subset.yaml). The SDK types
# `error.code` as this Literal, so strict clients reject anything else: provider codes are mapped
# onto it and kept verbatim in the message text instead.
RESPONSE_ERROR_CODES: frozenset[str] = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "data_residency_mismatch",
        "bio_policy",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)
# Substrings of native codes/types that mean "slow down" on the providers we map
# (Anthropic rate_limit_error, Gemini RESOURCE_EXHAUSTED, Bedrock ThrottlingException, ...).
_RATE_LIMIT_HINTS = (
    "rate_limit",
    "ratelimit",
    "throttl",
    "resource_exhausted",
    "too_many",
    "quota",
)

_MIME_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/svg+xml": "svg",
}
_USAGE_FIELDS = (
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "web_searches",  # billed searches: priced, not part of the Response's usage object
)
_SOURCES = "web_search_call.action.sources"
_TERMINAL_TYPES = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}


# Image settings an upstream reports, repeated on partial_image events and the final item.
_IMAGE_OPTIONS = ("size", "quality", "background", "output_format")

# Ops still honoured once an upstream error was seen: the usage that follows it is real spend.
_AFTER_ERROR = frozenset({"usage", "finish", "end", "start", "error"})

# --------------------------------------------------------------------------------------------
# Echo: the request settings a Response object repeats back.


def default_echo() -> dict[str, Any]:
    """OpenAI's defaults for every request setting the Response object echoes."""
    return {
        "background": False,
        "conversation": None,
        "frequency_penalty": 0.0,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "presence_penalty": 0.0,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "prompt_cache_retention": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "user": None,
    }


# Settings echoed verbatim when the client sent a non-null value.
_PLAIN_ECHO = (
    "background",
    "frequency_penalty",
    "instructions",
    "max_output_tokens",
    "max_tool_calls",
    "parallel_tool_calls",
    "presence_penalty",
    "previous_response_id",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "service_tier",
    "store",
    "temperature",
    "top_logprobs",
    "top_p",
    "truncation",
    "user",
)


def _echo_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return dict(tool)  # hosted tools (image_generation, ...) echo as sent
    strict = tool.get("strict")
    # OpenAI echoes every function tool with all four keys; Responses defaults strict to true.
    return {
        "type": "function",
        "name": tool.get("name"),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": True if strict is None else bool(strict),
    }


def _echo_tool_choice(choice: Any) -> Any:
    if choice is None:
        return "auto"
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        if choice.get("type") == "function" and isinstance(fn, Mapping) and "name" not in choice:
            return {"type": "function", "name": fn.get("name")}  # Chat Completions shape
        return dict(choice)
    return choice


def make_echo(body: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a client request body into the echo dict the builder repeats in every snapshot."""
    echo = default_echo()
    for key in _PLAIN_ECHO:
        value = body.get(key)
        if value is not None:
            echo[key] = value
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping):
        echo["metadata"] = dict(metadata)
    conversation = body.get("conversation")  # an id, or {"id": ...}: echoed as {"id": ...}
    if isinstance(conversation, Mapping):
        conversation = conversation.get("id")
    if isinstance(conversation, str):
        echo["conversation"] = {"id": conversation}
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping):
        summary = reasoning.get("summary") or reasoning.get("generate_summary")
        echo["reasoning"] = {"effort": reasoning.get("effort"), "summary": summary}
    text = body.get("text")
    if isinstance(text, Mapping):
        fmt = text.get("format")
        echo["text"] = {
            "format": dict(fmt) if isinstance(fmt, Mapping) else {"type": "text"},
            "verbosity": text.get("verbosity") or "medium",
        }
    tools = body.get("tools")
    if isinstance(tools, list):
        echo["tools"] = [_echo_tool(t) for t in tools if isinstance(t, Mapping)]
    echo["tool_choice"] = _echo_tool_choice(body.get("tool_choice"))
    return echo


# --------------------------------------------------------------------------------------------
# Reasoning state blobs and error codes.


# Kept under the builder's names for callers that think in reasoning items.
mint_reasoning_state = encode_state
decode_reasoning_state = decode_state


def response_error(
    code: Any, message: Any, type_: Any = None, *, provider: str | None = None
) -> dict[str, str]:
    """Map a native error onto ``{code: ResponseErrorCode, message}``.

    The native code (or type) survives as a ``[native]`` prefix of the message so operators and
    clients still see e.g. ``"[overloaded_error] Overloaded"``; a provider's own failure names
    the provider first (``"anthropic: [overloaded_error] Overloaded"``): behind an alias the
    client cannot tell otherwise who failed.
    """
    native = str(code) if code not in (None, "") else ""
    if not native and type_ not in (None, ""):
        native = str(type_)
    if native in RESPONSE_ERROR_CODES:
        mapped = native
    else:
        probe = f"{native} {type_ or ''}".lower()
        rate = native == "429" or any(h in probe for h in _RATE_LIMIT_HINTS)
        mapped = "rate_limit_exceeded" if rate else "server_error"
    text = str(message) if message not in (None, "") else "upstream error"
    if native and native != mapped:
        text = f"[{native}] {text}"
    if provider:
        text = f"{provider}: {text}"
    return {"code": mapped, "message": text}


def _compact_json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        # orjson refuses ints beyond 64 bits, which json.loads happily produces.
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# Blocks.


class _Block:
    """One open output item. A single slotted class keeps the per-delta path free of dispatch."""

    __slots__ = (
        "action",
        "buf",
        "call_given",
        "call_id",
        "chars",
        "error",
        "family",
        "image_options",
        "index",
        "item_id",
        "key",
        "kind",
        "name",
        "namespace",
        "native",
        "notes",
        "output_format",
        "output_index",
        "partials",
        "parts",
        "pending",
        "queries",
        "query",
        "result",
        "revised_prompt",
        "searching",
        "seg_cites",
        "seg_start",
        "segment",
        "slot",
        "sources",
        "spans",
        "state",
    )

    def __init__(self, family: str, index: Hashable, slot: Hashable) -> None:
        # "text" (message: text + refusal), "reasoning", "tool", "image", "search"
        self.family = family
        self.index = index  # the provider's native key, matched by `close`
        self.slot = slot  # key in ResponseBuilder._open: index, or ("call", call_id) for tools
        self.item_id = ""
        self.image_options: dict[str, Any] = {}
        self.output_index = -1
        self.buf: list[str] = []
        self.pending = False  # message announced by open_text but not yet emitted
        self.kind: str | None = None  # open content part: "output_text" | "refusal" | "summary"
        self.parts: list[dict[str, Any]] = []
        self.call_id = ""
        self.call_given = False
        self.name = ""
        self.namespace: str | None = None  # a namespace tool's call (engine/namespaces.py)
        self.state: dict[str, Any] | None = None
        self.native: str | None = None
        self.partials = 0
        self.result: str | None = None
        self.revised_prompt: str | None = None
        self.output_format: str | None = None
        # Citations of the open output_text part: its length so far, the provider's text block
        # being written (`segment`, from `seg_start`) and its citations, explicit spans, and the
        # annotations already added.
        self.chars = 0
        self.segment: Any = None
        self.seg_start = 0
        self.seg_cites: list[tuple[str, str]] = []
        self.spans: list[Span] = []
        self.notes: list[dict[str, Any]] = []
        # A web search: its key (the provider's id), what it searched and found.
        self.key: str | None = None
        self.query: Any = None
        self.queries: Any = None
        self.sources: list[str] | None = None
        self.error: Any = None
        self.action: dict[str, Any] | None = None  # a Responses upstream's own, passed on
        self.searching = False


# --------------------------------------------------------------------------------------------


class ResponseBuilder:
    """Feed canonical ops, get Responses events; ``response`` is the Response object.

    Counters for operators: ``unknown_finish_reasons`` (native reasons missing from the mapping's
    ``finish_reasons``), ``dropped_deltas`` (tool-args deltas with no call to go to),
    ``dropped_citations`` (citations with no text to annotate), ``unknown_ops``.
    ``web_searches`` is the number of searches the provider bills (the ``usage`` op's
    ``web_searches``), priced by the server. ``internal_error`` holds an exception raised while
    handling an op (the stream was then ended with ``response.failed`` so it stays valid).
    ``call_state`` maps a call_id to the ``state`` of a whole ``tool_call`` op (e.g. Gemini
    thought signatures), which has no field on the wire and must be stored by the server to
    replay it.
    """

    def __init__(
        self,
        response_id: str,
        created_at: int,
        echo: Mapping[str, Any],
        finish_reasons: Mapping[str, str],
        model: str,
        ids: IdFactory | None = None,
        *,
        provider: str | None = None,
        clock: Callable[[], float] = time.time,
        max_image_bytes: int | None = None,
        namespaces: Mapping[str, tuple[str, str]] | None = None,
        include: Iterable[str] = (),
    ) -> None:
        self.response_id = response_id
        # The request's `include`: a web search's sources are shown only when asked for.
        self._with_sources = _SOURCES in include
        # Flat upstream name -> (namespace, name) of the request's namespace tools.
        self._namespaces = namespaces or {}
        # Base64 length of the largest image accepted (4 characters per 3 bytes).
        self._max_image_b64 = None if max_image_bytes is None else (max_image_bytes + 2) // 3 * 4
        self.created_at = int(created_at)
        self.model = model
        self.provider = provider
        self._finish_reasons = finish_reasons
        self._ids = ids if ids is not None else IdFactory()
        self._clock = clock
        merged = default_echo()
        merged.update((k, v) for k, v in echo.items() if k in merged)
        self._echo = merged
        self._seq = 0
        self._started = False
        # Background responses start "queued"; response.in_progress follows once work begins.
        self._status = "in_progress"
        self._final: dict[str, Any] | None = None
        self._open: dict[tuple[str, Hashable], _Block] = {}  # insertion order = open order
        self._output: list[dict[str, Any] | None] = []  # None while the item is in flight
        self._usage: dict[str, int] = {}
        self._outcome = "completed"
        self._error: dict[str, str] | None = None
        self.finish_reason: Any = None
        self.upstream_id: Any = None
        self.upstream_model: Any = None
        self.ended = False
        self.unknown_finish_reasons = 0
        self.dropped_deltas = 0
        self.dropped_citations = 0
        self.unknown_ops = 0
        self.internal_error: BaseException | None = None
        self.call_state: dict[str, Any] = {}
        self._closed_calls: set[str] = set()
        self._searches: set[str] = set()  # keys of the searches seen
        self._handlers: dict[str, Callable[[_Op, list[Event]], None]] = {
            "start": self._op_start,
            "open_text": self._op_open_text,
            "text_delta": self._op_text_delta,
            "refusal_delta": self._op_refusal_delta,
            "open_reasoning": self._op_open_reasoning,
            "reasoning_delta": self._op_reasoning_delta,
            "reasoning_state": self._op_reasoning_state,
            "tool_call_start": self._op_tool_call_start,
            "tool_args_delta": self._op_tool_args_delta,
            "tool_call": self._op_tool_call,
            "image": self._op_image,
            "image_partial": self._op_image_partial,
            "search_start": self._op_search_start,
            "search_done": self._op_search_done,
            "cite": self._op_cite,
            "close": self._op_close,
            "usage": self._op_usage,
            "finish": self._op_finish,
            "error": self._op_error,
            "end": self._op_end,
        }

    # ---- public API ------------------------------------------------------------------------

    @property
    def terminal(self) -> bool:
        return self._final is not None

    @property
    def response(self) -> dict[str, Any]:
        """The final Response once terminal (the very dict the terminal event carries); before
        that an in-progress snapshot whose output holds the items already done."""
        if self._final is not None:
            return self._final
        return self._snapshot(self._status, [it for it in self._output if it is not None])

    def start(self) -> list[Event]:
        """response.created and response.in_progress; after `queue()`, response.in_progress."""
        out: list[Event] = []
        self._ensure_started(out)
        return out

    def queue(self) -> list[Event]:
        """A background response's opening: response.created and response.queued, both with
        status "queued". The next call of any other method emits response.in_progress first."""
        out: list[Event] = []
        if not self._started:
            self._started = True
            self._status = "queued"
            for typ in ("response.created", "response.queued"):
                out.append(
                    {
                        "type": typ,
                        "sequence_number": self._next(),
                        "response": self._snapshot("queued", []),
                    }
                )
        return out

    def route(self, finish_reasons: Mapping[str, str], provider: str | None) -> None:
        """Name the mapping that will answer, once it is known (a background response is
        queued before its upstream attempt picks a deployment)."""
        self._finish_reasons = finish_reasons
        self.provider = provider

    def cancel(self) -> dict[str, Any]:
        """End a background response as "cancelled" (there is no event for it: clients see it
        through GET or the cancel call). Items still in flight are left out."""
        if self._final is None:
            resp = self._snapshot("cancelled", [it for it in self._output if it is not None])
            if self._usage:
                resp["usage"] = self._usage_obj()
            self._open.clear()
            self._final = resp
        return self._final

    def feed(self, ops: Iterable[_Op]) -> list[Event]:
        out: list[Event] = []
        if self._final is not None:
            return out  # ops after the terminal event cannot change a finished response
        self._ensure_started(out)  # keep the grammar valid even if the caller skipped start()
        handlers = self._handlers
        try:
            for op in ops:
                name = str(op.get("op"))
                if self._error is not None and name not in _AFTER_ERROR:
                    continue  # after a failure only the accounting may still change
                handler = handlers.get(name)
                if handler is None:
                    # The mapping lint rejects unknown ops at load; never break a live stream.
                    self.unknown_ops += 1
                    continue
                handler(op, out)
                if self._final is not None:
                    break
        except Exception as exc:
            # Events already appended consumed sequence numbers: return them and end the stream
            # cleanly with response.failed rather than losing them to an exception.
            self.internal_error = exc
            # The exception text stays in internal_error for the server's log, never the client.
            err = response_error("server_error", "the gateway failed to translate the reply")
            self._terminate(out, "failed", err)
        return out

    def finish(self) -> list[Event]:
        out: list[Event] = []
        if self._final is not None:
            return out
        self._ensure_started(out)
        self._emit_call_state(out)
        outcome = self._outcome
        if self._error is not None:
            self._terminate(out, "failed", self._error)
        elif outcome == "completed":
            self._terminate(out, "completed")
        elif outcome == "failed":
            reason = self.finish_reason
            err = response_error(
                reason, f"upstream stopped with finish reason {reason!r}", provider=self.provider
            )
            self._terminate(out, "failed", err)
        else:  # "incomplete/<reason>"
            self._terminate(out, "incomplete", None, {"reason": outcome.partition("/")[2]})
        return out

    def _emit_call_state(self, out: list[Event]) -> None:
        """Opaque per-call state (Gemini thought signatures) rides in one reasoning item.

        The Responses function_call item has no place for it; a reasoning item's
        encrypted_content does, and canonical.normalize puts it back on the calls next turn.
        """
        if not self.call_state:
            return
        signatures = {
            call_id: state["signature"]
            for call_id, state in self.call_state.items()
            if isinstance(state, Mapping) and state.get("signature")
        }
        if signatures:
            index = ("call_state",)
            self._op_reasoning_state(
                {"op": "reasoning_state", "index": index, "state": {"call_signatures": signatures}},
                out,
            )
            self._op_close({"op": "close", "index": index}, out)

    def fail(self, code: str, message: str) -> list[Event]:
        out: list[Event] = []
        if self._final is not None:
            return out
        self._ensure_started(out)
        self._terminate(out, "failed", response_error(code, message))
        return out

    # ---- snapshots ---------------------------------------------------------------------------

    def _snapshot(self, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        e = self._echo
        snapshot = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": e["background"],
            "completed_at": None,
            "conversation": e.get("conversation"),
            "error": None,
            "frequency_penalty": e["frequency_penalty"],
            "incomplete_details": None,
            "instructions": e["instructions"],
            "max_output_tokens": e["max_output_tokens"],
            "max_tool_calls": e["max_tool_calls"],
            "model": self.model,
            "output": output,
            "parallel_tool_calls": e["parallel_tool_calls"],
            "presence_penalty": e["presence_penalty"],
            "previous_response_id": e["previous_response_id"],
            "prompt_cache_key": e["prompt_cache_key"],
            "prompt_cache_retention": e["prompt_cache_retention"],
            "reasoning": e["reasoning"],
            "safety_identifier": e["safety_identifier"],
            "service_tier": e["service_tier"],
            "store": e["store"],
            "temperature": e["temperature"],
            "text": e["text"],
            "tool_choice": e["tool_choice"],
            "tools": e["tools"],
            "top_logprobs": e["top_logprobs"],
            "top_p": e["top_p"],
            "truncation": e["truncation"],
            "usage": None,
            "metadata": e["metadata"],
        }
        # OpenAI's schema types the deprecated `user` as a string, not nullable: omit it unset.
        if e["user"] is not None:
            snapshot["user"] = e["user"]
        return snapshot

    def _ensure_started(self, out: list[Event]) -> None:
        if not self._started:
            self._start(out)
        elif self._status == "queued":
            self._status = "in_progress"
            out.append(
                {
                    "type": "response.in_progress",
                    "sequence_number": self._next(),
                    "response": self._snapshot("in_progress", []),
                }
            )

    def _start(self, out: list[Event]) -> None:
        self._started = True
        # Two separate snapshots: events may be serialised later, and must not alias each other.
        for typ in ("response.created", "response.in_progress"):
            out.append(
                {
                    "type": typ,
                    "sequence_number": self._next(),
                    "response": self._snapshot("in_progress", []),
                }
            )

    @property
    def web_searches(self) -> int:
        """The searches the provider bills for this response (0 when it said nothing)."""
        return self._usage.get("web_searches", 0)

    @property
    def usage(self) -> dict[str, Any]:
        """The usage object as fed so far (what the terminal event will carry)."""
        return self._usage_obj()

    def _usage_obj(self) -> dict[str, Any]:
        u = self._usage
        inp = u.get("input_tokens", 0)
        outp = u.get("output_tokens", 0)
        return {
            "input_tokens": inp,
            "input_tokens_details": {
                "cached_tokens": u.get("cached_tokens", 0),
                "cache_write_tokens": u.get("cache_write_tokens", 0),
            },
            "output_tokens": outp,
            "output_tokens_details": {"reasoning_tokens": u.get("reasoning_tokens", 0)},
            "total_tokens": inp + outp,
        }

    def _terminate(
        self,
        out: list[Event],
        status: str,
        error: dict[str, str] | None = None,
        incomplete: dict[str, str] | None = None,
    ) -> None:
        # Close what is still open first so every .added has its .done before the terminal event.
        item_status = "completed" if status == "completed" else "incomplete"
        for blk in list(self._open.values()):
            self._close(blk, out, item_status)
        resp = self._snapshot(status, [it for it in self._output if it is not None])
        if status == "completed":
            # OpenAI sets completed_at only for completed responses.
            resp["completed_at"] = max(self.created_at, int(self._clock()))
        resp["error"] = error
        resp["incomplete_details"] = incomplete
        resp["usage"] = self._usage_obj()
        self._final = resp
        out.append(
            {"type": _TERMINAL_TYPES[status], "sequence_number": self._next(), "response": resp}
        )

    def _next(self) -> int:
        n = self._seq
        self._seq = n + 1
        return n

    # ---- block bookkeeping ---------------------------------------------------------------------

    def _find(self, family: str, index: Hashable) -> _Block | None:
        if index is not None:
            return self._open.get((family, index))
        for blk in reversed(self._open.values()):  # a handful of open blocks at most
            if blk.family == family:
                return blk
        return None

    def _new_block(
        self, family: str, index: Hashable, out: list[Event], slot: Hashable = None
    ) -> _Block:
        for blk in list(self._open.values()):
            if family != "tool" or blk.family != "tool":
                self._close(blk, out, "completed")
        if slot is None:
            slot = index
        old = self._open.get((family, slot))
        if old is not None:  # same tool key re-used by a new call
            self._close(old, out, "completed")
        blk = _Block(family, index, slot)
        self._open[(family, slot)] = blk
        return blk

    def _add_item(self, blk: _Block, item_id: str, item: dict[str, Any], out: list[Event]) -> None:
        blk.item_id = item_id
        blk.output_index = len(self._output)
        self._output.append(None)
        out.append(
            {
                "type": "response.output_item.added",
                "sequence_number": self._next(),
                "output_index": blk.output_index,
                "item": item,
            }
        )

    def _item_done(self, blk: _Block, item: dict[str, Any], out: list[Event]) -> None:
        self._output[blk.output_index] = item
        out.append(
            {
                "type": "response.output_item.done",
                "sequence_number": self._next(),
                "output_index": blk.output_index,
                "item": item,
            }
        )

    def _close(self, blk: _Block, out: list[Event], status: str) -> None:
        del self._open[(blk.family, blk.slot)]
        fam = blk.family
        if blk.output_index < 0 and not blk.pending:
            return  # registered but never announced (only after an internal error)
        if fam == "text":
            self._close_message(blk, out, status)
        elif fam == "reasoning":
            self._close_reasoning(blk, out, status)
        elif fam == "tool":
            self._close_tool(blk, out, status)
        elif fam == "search":
            self._close_search(blk, out, status)
        else:
            self._close_image(blk, out, status)

    # ---- message (text + refusal) ---------------------------------------------------------------

    def _op_open_text(self, op: _Op, out: list[Event]) -> None:
        index = op.get("index")
        blk = self._find("text", index)
        if blk is None:
            blk = self._new_block("text", index, out)
            blk.pending = True
        self._enter_segment(blk, op, out)

    def _op_text_delta(self, op: _Op, out: list[Event]) -> None:
        self._message_delta(op, out, "output_text")

    def _op_refusal_delta(self, op: _Op, out: list[Event]) -> None:
        self._message_delta(op, out, "refusal")

    def _message_delta(self, op: _Op, out: list[Event], kind: str) -> None:
        text = op.get("text")
        if not text:
            return  # an empty delta must not create (or open a part in) a message
        index = op.get("index")
        blk = self._find("text", index)
        if blk is None:
            blk = self._new_block("text", index, out)
            blk.pending = True
        self._enter_segment(blk, op, out)
        if blk.pending:
            blk.pending = False
            item_id = self._ids.message()
            item = {
                "id": item_id,
                "type": "message",
                "status": "in_progress",
                "content": [],
                "role": "assistant",
            }
            self._add_item(blk, item_id, item, out)
        if blk.kind != kind:
            if blk.kind is not None:
                self._close_part(blk, out)
            self._open_part(blk, kind, out)
        blk.buf.append(text)
        if kind == "output_text":
            blk.chars += len(text)
            out.append(
                {
                    "type": "response.output_text.delta",
                    "sequence_number": self._next(),
                    "item_id": blk.item_id,
                    "output_index": blk.output_index,
                    "content_index": len(blk.parts),
                    "delta": text,
                    "logprobs": [],
                }
            )
        else:
            out.append(
                {
                    "type": "response.refusal.delta",
                    "sequence_number": self._next(),
                    "item_id": blk.item_id,
                    "output_index": blk.output_index,
                    "content_index": len(blk.parts),
                    "delta": text,
                }
            )

    def _open_part(self, blk: _Block, kind: str, out: list[Event]) -> None:
        blk.kind = kind
        part: dict[str, Any] = (
            {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            if kind == "output_text"
            else {"type": "refusal", "refusal": ""}
        )
        out.append(
            {
                "type": "response.content_part.added",
                "sequence_number": self._next(),
                "item_id": blk.item_id,
                "output_index": blk.output_index,
                "content_index": len(blk.parts),
                "part": part,
            }
        )

    def _close_part(self, blk: _Block, out: list[Event]) -> None:
        text = "".join(blk.buf)
        blk.buf = []
        ci = len(blk.parts)
        part: dict[str, Any]
        if blk.kind == "output_text":
            self._end_segment(blk, out)
            for note in resolve_spans(text, blk.spans):
                self._annotate(blk, note, out)
            blk.spans = []
            part = {"type": "output_text", "text": text, "annotations": blk.notes, "logprobs": []}
            blk.notes, blk.chars, blk.seg_start = [], 0, 0
            out.append(
                {
                    "type": "response.output_text.done",
                    "sequence_number": self._next(),
                    "item_id": blk.item_id,
                    "output_index": blk.output_index,
                    "content_index": ci,
                    "text": text,
                    "logprobs": [],
                }
            )
        else:
            part = {"type": "refusal", "refusal": text}
            out.append(
                {
                    "type": "response.refusal.done",
                    "sequence_number": self._next(),
                    "item_id": blk.item_id,
                    "output_index": blk.output_index,
                    "content_index": ci,
                    "refusal": text,
                }
            )
        out.append(
            {
                "type": "response.content_part.done",
                "sequence_number": self._next(),
                "item_id": blk.item_id,
                "output_index": blk.output_index,
                "content_index": ci,
                "part": part,
            }
        )
        blk.parts.append(part)
        blk.kind = None

    def _close_message(self, blk: _Block, out: list[Event], status: str) -> None:
        if blk.kind is not None:
            self._close_part(blk, out)
        # Citations of text that never came (or of a refusal) annotate nothing.
        self.dropped_citations += len(blk.seg_cites) + len(blk.spans)
        if blk.pending:
            return  # opened but never written to: no item was announced, nothing to close
        item = {
            "id": blk.item_id,
            "type": "message",
            "status": status,
            "content": blk.parts,
            "role": "assistant",
        }
        self._item_done(blk, item, out)

    # ---- citations ---------------------------------------------------------------------------

    def _enter_segment(self, blk: _Block, op: _Op, out: list[Event]) -> None:
        """A text op naming another `segment` (the provider's text block) ends the current one."""
        if "segment" in op and op["segment"] != blk.segment:
            self._end_segment(blk, out)
            blk.segment = op["segment"]
            blk.seg_start = blk.chars

    def _end_segment(self, blk: _Block, out: list[Event]) -> None:
        """The current segment's citations cover the text written to it."""
        cites, blk.seg_cites = blk.seg_cites, []
        if blk.kind != "output_text" or blk.chars <= blk.seg_start:
            self.dropped_citations += len(cites)
            return
        for url, title in cites:
            self._annotate(blk, url_citation(url, title, blk.seg_start, blk.chars), out)

    def _annotate(self, blk: _Block, note: dict[str, Any], out: list[Event]) -> None:
        out.append(
            {
                "type": "response.output_text.annotation.added",
                "sequence_number": self._next(),
                "item_id": blk.item_id,
                "output_index": blk.output_index,
                "content_index": len(blk.parts),
                "annotation_index": len(blk.notes),
                "annotation": note,
            }
        )
        blk.notes.append(note)

    def _op_cite(self, op: _Op, out: list[Event]) -> None:
        blk = self._find("text", op.get("index"))
        url = op.get("url")
        if blk is None or not isinstance(url, str) or not url:
            self.dropped_citations += 1
            return
        title = op.get("title")
        # OpenAI's url_citation requires a title: a source without one is named by its URL.
        title = title if isinstance(title, str) and title else url
        end = op.get("end")
        if end is None:
            blk.seg_cites.append((url, title))
            return
        try:
            span = Span(
                url, title, int(op.get("start") or 0), int(end), op.get("offsets") == "utf8"
            )
        except (TypeError, ValueError):
            self.dropped_citations += 1
            return
        blk.spans.append(span)

    # ---- web search ----------------------------------------------------------------------------

    def _open_search(self, index: Hashable, key: str | None, out: list[Event]) -> _Block:
        blk = self._new_block("search", index, out)
        blk.key = key
        if key is not None:
            self._searches.add(key)
        item_id = self._ids.web_search()
        item = {
            "id": item_id,
            "type": "web_search_call",
            "status": "in_progress",
            "action": {"type": "search"},  # required by the schema, even in flight
        }
        self._add_item(blk, item_id, item, out)
        self._search_event(blk, "response.web_search_call.in_progress", out)
        return blk

    def _search_event(self, blk: _Block, typ: str, out: list[Event]) -> None:
        out.append(
            {
                "type": typ,
                "sequence_number": self._next(),
                "item_id": blk.item_id,
                "output_index": blk.output_index,
            }
        )

    def _searching(self, blk: _Block, out: list[Event]) -> None:
        if not blk.searching:
            blk.searching = True
            self._search_event(blk, "response.web_search_call.searching", out)

    def _open_search_for(self, key: str | None, index: Hashable) -> _Block | None:
        for blk in self._open.values():
            if blk.family == "search" and (
                blk.key == key if key is not None else (index is None or blk.index == index)
            ):
                return blk
        return None

    def _search(self, op: _Op, out: list[Event]) -> _Block | None:
        """The open search `op` addresses, a new one, or None for a search already reported."""
        key = None if op.get("key") is None else str(op["key"])
        blk = self._open_search_for(key, op.get("index"))
        if blk is None:
            if key is not None and key in self._searches:
                return None
            blk = self._open_search(op.get("index"), key, out)
        for field in ("query", "queries"):
            if op.get(field) is not None:
                setattr(blk, field, op[field])
        return blk

    def _op_search_start(self, op: _Op, out: list[Event]) -> None:
        self._search(op, out)

    def _op_search_done(self, op: _Op, out: list[Event]) -> None:
        blk = self._search(op, out)
        if blk is None:
            return
        sources = op.get("sources")
        if isinstance(sources, list):
            blk.sources = [s for s in sources if isinstance(s, str) and s]
        if op.get("error") is not None:
            blk.error = op["error"]
        if isinstance(op.get("action"), dict):
            blk.action = dict(op["action"])
        self._close(blk, out, "completed")

    def _close_search(self, blk: _Block, out: list[Event], status: str) -> None:
        ok = status == "completed" and blk.error is None
        if ok:
            self._searching(blk, out)
            self._search_event(blk, "response.web_search_call.completed", out)
        sources = (blk.sources or []) if self._with_sources else None
        action = blk.action
        if action is None:
            action = search_action(blk.query, blk.queries, "".join(blk.buf), sources)
        elif not self._with_sources:
            action.pop("sources", None)
        item = {
            "id": blk.item_id,
            "type": "web_search_call",
            # The schema has no "incomplete" search: one cut short or refused has failed.
            "status": "completed" if ok else "failed",
            "action": action,
        }
        self._item_done(blk, item, out)

    # ---- reasoning ---------------------------------------------------------------------------

    def _open_reasoning(self, index: Hashable, out: list[Event]) -> _Block:
        blk = self._new_block("reasoning", index, out)
        item_id = self._ids.reasoning()
        self._add_item(blk, item_id, {"id": item_id, "type": "reasoning", "summary": []}, out)
        return blk

    def _op_open_reasoning(self, op: _Op, out: list[Event]) -> None:
        index = op.get("index")
        if self._find("reasoning", index) is None:
            self._open_reasoning(index, out)

    def _op_reasoning_delta(self, op: _Op, out: list[Event]) -> None:
        text = op.get("text")
        if not text:
            return
        index = op.get("index")
        blk = self._find("reasoning", index) or self._open_reasoning(index, out)
        if blk.kind is None:
            blk.kind = "summary"
            out.append(
                {
                    "type": "response.reasoning_summary_part.added",
                    "sequence_number": self._next(),
                    "item_id": blk.item_id,
                    "output_index": blk.output_index,
                    "summary_index": len(blk.parts),
                    "part": {"type": "summary_text", "text": ""},
                }
            )
        blk.buf.append(text)
        out.append(
            {
                "type": "response.reasoning_summary_text.delta",
                "sequence_number": self._next(),
                "item_id": blk.item_id,
                "output_index": blk.output_index,
                "summary_index": len(blk.parts),
                "delta": text,
            }
        )

    def _op_reasoning_state(self, op: _Op, out: list[Event]) -> None:
        index = op.get("index")
        # State arriving with no open reasoning block (e.g. a bare signature) gets its own item
        # rather than being lost: an empty-summary reasoning item is valid.
        blk = self._find("reasoning", index) or self._open_reasoning(index, out)
        native = op.get("encrypted_content")
        if isinstance(native, str) and native:
            blk.native = native
        state = op.get("state")
        if isinstance(state, Mapping) and state:
            if blk.state is None:
                blk.state = {}
            blk.state.update(state)

    def _close_reasoning(self, blk: _Block, out: list[Event], status: str) -> None:
        if blk.kind is not None:
            text = "".join(blk.buf)
            blk.buf = []
            si = len(blk.parts)
            part = {"type": "summary_text", "text": text}
            out.append(
                {
                    "type": "response.reasoning_summary_text.done",
                    "sequence_number": self._next(),
                    "item_id": blk.item_id,
                    "output_index": blk.output_index,
                    "summary_index": si,
                    "text": text,
                }
            )
            out.append(
                {
                    "type": "response.reasoning_summary_part.done",
                    "sequence_number": self._next(),
                    "item_id": blk.item_id,
                    "output_index": blk.output_index,
                    "summary_index": si,
                    "part": part,
                }
            )
            blk.parts.append(part)
            blk.kind = None
        item: dict[str, Any] = {"id": blk.item_id, "type": "reasoning", "summary": blk.parts}
        if blk.native is not None:
            item["encrypted_content"] = blk.native
        elif blk.state is not None:
            item["encrypted_content"] = mint_reasoning_state(self.provider, blk.state)
        if status != "completed":
            item["status"] = status  # OpenAI omits status on finished reasoning items
        self._item_done(blk, item, out)

    # ---- function calls ------------------------------------------------------------------------

    def _set_name(self, blk: _Block, name: Any, namespace: Any = None) -> None:
        """The call's name; a flat namespaced name (engine/namespaces.py) split back into its
        name and namespace, unless the upstream named the namespace itself."""
        text = str(name) if name else ""
        found = None if namespace else self._namespaces.get(text)
        if found is not None:
            blk.namespace, blk.name = found
        else:
            blk.namespace, blk.name = (str(namespace) if namespace else None), text

    def _open_tool(
        self, index: Hashable, call_id: Any, name: Any, out: list[Event], namespace: Any = None
    ) -> _Block:
        # Unindexed calls that carry a call_id are keyed by it, so their fragments may interleave.
        slot = ("call", str(call_id)) if index is None and call_id else None
        blk = self._new_block("tool", index, out, slot)
        blk.call_given = bool(call_id)
        blk.call_id = str(call_id) if call_id else self._ids.call()
        self._set_name(blk, name, namespace)
        item_id = self._ids.function_call()
        item = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": blk.call_id,
            "name": blk.name,
        }
        if blk.namespace:
            item["namespace"] = blk.namespace
        self._add_item(blk, item_id, item, out)
        return blk

    def _args_delta(self, blk: _Block, text: str, out: list[Event]) -> None:
        blk.buf.append(text)
        out.append(
            {
                "type": "response.function_call_arguments.delta",
                "sequence_number": self._next(),
                "item_id": blk.item_id,
                "output_index": blk.output_index,
                "delta": text,
            }
        )

    def _call_block(self, call_id: Any) -> _Block | None:
        cid = str(call_id)
        for blk in self._open.values():
            if blk.family == "tool" and blk.call_id == cid:
                return blk
        return None

    def _op_tool_call_start(self, op: _Op, out: list[Event]) -> None:
        index = op.get("index")
        call_id = op.get("call_id")
        if call_id and str(call_id) in self._closed_calls:
            return  # re-announcing a finished call: a second item would duplicate its call_id
        if index is not None:
            blk = self._open.get(("tool", index))
        else:
            blk = self._call_block(call_id) if call_id else None
        if blk is not None and (
            (call_id and blk.call_id == call_id) or (not call_id and index is not None)
        ):
            # Re-announcement of the call already open under this key (Chat Completions repeats
            # fragments per index): keep it, learn the name if we did not have it.
            if not blk.name and op.get("name"):
                self._set_name(blk, op["name"], op.get("namespace"))
            return
        self._open_tool(index, call_id, op.get("name"), out, op.get("namespace"))

    def _op_tool_args_delta(self, op: _Op, out: list[Event]) -> None:
        text = op.get("text")
        index = op.get("index")
        call_id = op.get("call_id")
        name = op.get("name")
        blk: _Block | None
        search = self._open.get(("search", index)) if index is not None else None
        if search is not None:  # a web search's arguments (its query), streamed like a call's
            if text:
                search.buf.append(str(text))
            return
        if index is not None:
            blk = self._open.get(("tool", index))
        elif call_id:
            blk = self._call_block(call_id)
        else:
            blk = self._find("tool", None)
        if blk is not None and call_id and blk.call_given and blk.call_id != call_id:
            blk = None  # a different call reusing the key: _open_tool closes the old one
        if blk is None:
            if (not call_id and not name) or (call_id and str(call_id) in self._closed_calls):
                # Nowhere valid to put it: the call it belongs to is finished or unknown.
                if text:
                    self.dropped_deltas += 1
                return
            blk = self._open_tool(index, call_id, name, out)
        elif name and not blk.name:
            self._set_name(blk, name)
        if text:
            self._args_delta(blk, text, out)

    def _op_tool_call(self, op: _Op, out: list[Event]) -> None:
        args = op.get("arguments")
        if args is None:
            args = ""
        elif not isinstance(args, str):
            args = _compact_json(args)
        blk = self._open_tool(
            op.get("index"), op.get("call_id"), op.get("name"), out, op.get("namespace")
        )
        if args:
            self._args_delta(blk, args, out)
        state = op.get("state")
        if state:
            self.call_state[blk.call_id] = state
        self._close(blk, out, "completed")

    def _close_tool(self, blk: _Block, out: list[Event], status: str) -> None:
        if blk.call_given:
            self._closed_calls.add(blk.call_id)
        if not blk.buf and status == "completed":
            # A call without arguments (Anthropic streams no input for `{}`) still carries a
            # JSON object: clients json.loads() the arguments, and "" is not JSON.
            self._args_delta(blk, "{}", out)
        args = "".join(blk.buf)
        out.append(
            {
                "type": "response.function_call_arguments.done",
                "sequence_number": self._next(),
                "item_id": blk.item_id,
                "output_index": blk.output_index,
                "name": blk.name,
                "arguments": args,
            }
        )
        item = {
            "id": blk.item_id,
            "type": "function_call",
            "status": status,
            "arguments": args,
            "call_id": blk.call_id,
            "name": blk.name,
        }
        if blk.namespace:
            item["namespace"] = blk.namespace
        self._item_done(blk, item, out)

    # ---- images --------------------------------------------------------------------------------

    def _image_block(self, index: Hashable, out: list[Event]) -> _Block:
        blk = self._find("image", index)
        if blk is not None:
            return blk
        blk = self._new_block("image", index, out)
        item_id = self._ids.image()
        # `result` is a required (nullable) key of the item in OpenAI's schema, even in flight.
        item = {
            "id": item_id,
            "type": "image_generation_call",
            "status": "in_progress",
            "result": None,
        }
        self._add_item(blk, item_id, item, out)
        for typ in (
            "response.image_generation_call.in_progress",
            "response.image_generation_call.generating",
        ):
            out.append(
                {
                    "type": typ,
                    "sequence_number": self._next(),
                    "item_id": item_id,
                    "output_index": blk.output_index,
                }
            )
        return blk

    def _image_too_large(self, blk: _Block, b64: Any, out: list[Event]) -> bool:
        if self._max_image_b64 is None or not isinstance(b64, str):
            return False
        if len(b64) <= self._max_image_b64:
            return False
        # A clear failure instead of pushing megabytes a client did not agree to take.
        self._error = response_error(
            "image_too_large",
            f"the generated image is {len(b64) * 3 // 4} bytes, over the gateway's limit of "
            f"{self._max_image_b64 * 3 // 4} bytes (limits.max_image_bytes)",
        )
        self._close(blk, out, "failed")
        return True

    @staticmethod
    def _take_image_options(blk: _Block, op: _Op) -> None:
        for key in _IMAGE_OPTIONS:
            value = op.get(key)
            if value is not None:
                blk.image_options[key] = value
        if "output_format" in blk.image_options:
            blk.output_format = str(blk.image_options["output_format"])

    def _op_image_partial(self, op: _Op, out: list[Event]) -> None:
        blk = self._image_block(op.get("index"), out)
        b64 = op.get("b64") or ""
        if self._image_too_large(blk, b64, out):
            return
        self._take_image_options(blk, op)
        pidx = op.get("partial_index")
        if not isinstance(pidx, int):
            pidx = blk.partials
        blk.partials = max(blk.partials, pidx + 1)
        blk.result = b64 or blk.result  # the latest partial stands in if no final image comes
        ev: Event = {
            "type": "response.image_generation_call.partial_image",
            "sequence_number": self._next(),
            "item_id": blk.item_id,
            "output_index": blk.output_index,
            "partial_image_index": pidx,
            "partial_image_b64": b64,
        }
        ev.update(blk.image_options)
        if blk.output_format is not None:
            ev["output_format"] = blk.output_format
        out.append(ev)

    def _op_image(self, op: _Op, out: list[Event]) -> None:
        blk = self._image_block(op.get("index"), out)
        if self._image_too_large(blk, op.get("b64"), out):
            return
        self._take_image_options(blk, op)
        blk.result = op.get("b64") or blk.result
        prompt = op.get("revised_prompt")
        if prompt is not None:
            blk.revised_prompt = str(prompt)
        mime = op.get("mime")
        if isinstance(mime, str):
            blk.output_format = _MIME_FORMATS.get(mime.lower())
        self._close(blk, out, "completed")

    def _close_image(self, blk: _Block, out: list[Event], status: str) -> None:
        # image_generation_call has no "incomplete" status: anything unfinished is "failed".
        ok = status == "completed" and blk.result is not None
        if ok:
            out.append(
                {
                    "type": "response.image_generation_call.completed",
                    "sequence_number": self._next(),
                    "item_id": blk.item_id,
                    "output_index": blk.output_index,
                }
            )
        item: dict[str, Any] = {
            "id": blk.item_id,
            "type": "image_generation_call",
            "status": "completed" if ok else "failed",
            "result": blk.result,
        }
        if blk.revised_prompt is not None:
            item["revised_prompt"] = blk.revised_prompt
        item.update(blk.image_options)
        if blk.output_format is not None:
            item["output_format"] = blk.output_format
        self._item_done(blk, item, out)

    # ---- control ops ---------------------------------------------------------------------------

    def _op_start(self, op: _Op, out: list[Event]) -> None:
        self.upstream_id = op.get("id")  # informational: Turnout never exposes provider ids
        self.upstream_model = op.get("model")

    def _op_close(self, op: _Op, out: list[Event]) -> None:
        index = op.get("index")
        family = op.get("family")
        if family == "refusal":
            family = "text"
        for blk in list(self._open.values()):
            if (index is None or blk.index == index) and (family is None or blk.family == family):
                if blk.family == "search":
                    self._searching(blk, out)  # its input is complete; it ends with its results
                    continue
                self._close(blk, out, "completed")

    def _op_usage(self, op: _Op, out: list[Event]) -> None:
        usage = self._usage
        for field in _USAGE_FIELDS:
            value = op.get(field)
            if value is not None:
                # A malformed count must not end the stream; keep the last good one.
                with contextlib.suppress(TypeError, ValueError):
                    usage[field] = int(value)

    def _op_finish(self, op: _Op, out: list[Event]) -> None:
        reason = op.get("reason")
        if reason is None:
            return
        self.finish_reason = reason
        outcome = self._finish_reasons.get(str(reason))
        if outcome not in FINISH_STATUSES:
            self.unknown_finish_reasons += 1
            outcome = "completed"
        self._outcome = outcome

    def _op_error(self, op: _Op, out: list[Event]) -> None:
        # The failure is final, but providers still send usage after it (OpenRouter does), and
        # the tokens were spent: close the items now, emit response.failed at finish().
        if self._error is None:
            self._error = response_error(
                op.get("code"), op.get("message"), op.get("type"), provider=self.provider
            )
        for blk in list(self._open.values()):
            self._close(blk, out, "incomplete")

    def _op_end(self, op: _Op, out: list[Event]) -> None:
        # The terminal event waits for finish(): some providers send usage after their stop event.
        self.ended = True
