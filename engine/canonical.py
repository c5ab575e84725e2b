"""The Responses request, validated and normalised into the canonical request mappings read.

Mappings never parse Responses JSON themselves: they see ``req`` (``CanonicalRequest.view``),
whose fields are listed in ``VIEW_FIELDS`` and documented in ``docs/internals.md``. Client
mistakes raise ``RequestError`` naming the parameter, in OpenAI's words where OpenAI has them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from turnout.engine import state as state_codec
from turnout.engine.compaction import COMPACTION_PREFIX, SUMMARY_LEAD, open_summary
from turnout.engine.errors import RequestError
from turnout.engine.namespaces import flat_name, namespace_map
from turnout.engine.nesting import MAX_DEPTH, deep_path, param_of
from turnout.engine.web_search import WEB_SEARCH_TYPES, hosted_entry, hosted_view, web_search_tool

__all__ = [
    "KNOWN_FIELDS",
    "OPENAI_ONLY_FIELDS",
    "VIEW_FIELDS",
    "CanonicalRequest",
    "History",
    "conversation_of",
    "decode_state",
    "encode_state",
    "extend_history",
    "metadata_of",
    "normalize",
    "normalize_items",
]

# Top-level request fields OpenAI accepts (responses-api.md §3); others are a 400, as at OpenAI.
KNOWN_FIELDS = frozenset(
    {
        "model", "input", "instructions", "previous_response_id", "conversation", "tools",
        "tool_choice", "parallel_tool_calls", "max_tool_calls", "text", "reasoning",
        "max_output_tokens", "temperature", "top_p", "top_logprobs", "truncation", "store",
        "background", "stream", "stream_options", "include", "metadata", "user",
        "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "service_tier",
        "prompt", "moderation", "context_management", "prompt_cache_options",
        # Client bookkeeping OpenAI accepts and that changes no output (the Codex CLI sends
        # it on every request): passed to Responses-API upstreams, ignored by the others.
        "client_metadata",
    }
)  # fmt: skip

# Request fields only OpenAI's own Responses API can honour: a mapping sends them (its body reads
# them, or the raw request) or refuses them (a reject reads them); lint refuses anything else.
OPENAI_ONLY_FIELDS = ("prompt", "context_management", "moderation")

VIEW_FIELDS = frozenset(
    {
        "model", "instructions", "entries", "tools", "hosted_tools", "tool_choice",
        "parallel_tool_calls", "text_format", "reasoning", "max_output_tokens", "temperature",
        "top_p", "top_logprobs", "user", "metadata", "stream", "store", "include", "truncation",
        "service_tier", "raw", "has_reasoning", "previous_response_id", "file_refs",
        "linked_media", "image_tool", "prompt", "context_management", "moderation",
        "tool_namespaces", "native_compaction", "web_search", "max_tool_calls",
    }
)  # fmt: skip

_MEDIA = ("image", "file")
_DETAILS = ("low", "high", "auto", "original")
_PHASES = ("commentary", "final_answer")
_EFFORTS = {None, "none", "minimal", "low", "medium", "high", "xhigh", "max"}
_SUMMARIES = {None, "auto", "concise", "detailed"}


def encode_state(provider: str, state: Mapping[str, Any]) -> str:
    """Opaque provider state as a Responses ``encrypted_content`` string (see engine.state)."""
    return state_codec.encode_state(provider, state)


def decode_state(blob: str | None) -> tuple[str | None, dict[str, Any] | None]:
    decoded = state_codec.decode_state(blob) if blob else None
    if decoded is None or decoded[0] is None:
        return None, None  # state nobody can claim is state nobody may read
    return decoded


def _mint(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _bad(message: str, param: str, code: str = "invalid_value") -> RequestError:
    return RequestError(400, message, param=param, code=code)


def _type_name(value: Any) -> str:
    return {
        str: "string", bool: "boolean", int: "integer", float: "number",
        dict: "object", list: "array", type(None): "null",
    }.get(type(value), type(value).__name__)  # fmt: skip


def _not_a_string(param: str, value: Any) -> RequestError:
    """The 400 for `param` holding `value` where OpenAI takes a string."""
    return _bad(
        f"Invalid type for '{param}': expected a string, but got {_type_name(value)} instead.",
        param,
        "invalid_type",
    )


# OpenAI's IncludeEnum. Turnout returns every stored field anyway; an unknown value is still
# the client's mistake to hear about.
INCLUDABLE = frozenset({
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url",
    "code_interpreter_call.outputs", "reasoning.encrypted_content", "message.output_text.logprobs",
})  # fmt: skip


def _expect(body: Mapping[str, Any], key: str, kinds: tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int subclass: `"temperature": true` must not pass as a number.
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise _bad(
            f"Invalid type for '{key}': expected {what}, but got {_type_name(value)} instead.",
            key,
            "invalid_type",
        )
    return value


def _number_in(body: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = _expect(body, key, (int, float), "a number")
    if value is not None and not low <= value <= high:
        raise _bad(
            f"Invalid '{key}': {value} is not between {low:g} and {high:g}.",
            key,
            "decimal_above_max_value" if value > high else "decimal_below_min_value",
        )
    return float(value) if value is not None else None


@dataclass
class CanonicalRequest:
    """What a mapping translates. ``view`` is the ``req`` mapping templates see."""

    view: dict[str, Any]
    input_items: list[dict[str, Any]] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return str(self.view["model"])

    @property
    def stream(self) -> bool:
        return bool(self.view["stream"])


def _parse_data_url(url: str, param: str) -> tuple[str, str]:
    header, sep, data = url.partition(",")
    if not sep or ";base64" not in header:
        raise _bad(
            "Only base64 data URLs are supported for inline data.", param, "invalid_image_url"
        )
    media_type = header[5:].split(";", 1)[0] or "application/octet-stream"
    return media_type, data


def _part_entries(role: str, content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": role, "kind": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(
            f"Invalid type for '{param}': expected a string or an array of content parts.",
            param,
            "invalid_type",
        )
    out: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        where = f"{param}[{i}]"
        if not isinstance(part, dict):
            raise _bad(f"Invalid type for '{where}': expected an object.", where, "invalid_type")
        ptype = part.get("type")
        if ptype in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"Missing required parameter: '{where}.text'.", f"{where}.text")
            out.append({"role": role, "kind": "text", "text": text})
        elif ptype == "refusal":
            out.append({"role": role, "kind": "refusal", "text": str(part.get("refusal", ""))})
        elif ptype == "input_image":
            out.append(_image_entry(role, part, where))
        elif ptype == "input_file":
            out.append(_file_entry(role, part, where))
        else:
            raise _bad(
                f"Invalid value: '{ptype}'. Supported content part types are: input_text, "
                "input_image, input_file, output_text, refusal.",
                f"{where}.type",
            )
    return out


def _image_entry(role: str, part: Mapping[str, Any], where: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "role": role, "kind": "image", "url": None, "media_type": None, "data": None,
        "file_id": part.get("file_id"), "detail": part.get("detail") or "auto",
    }  # fmt: skip
    if entry["detail"] not in _DETAILS:
        raise _bad(
            f"Invalid value for '{where}.detail': expected one of 'low', 'high', 'auto', "
            "'original'.",
            f"{where}.detail",
            "invalid_value",
        )
    url = part.get("image_url")
    if isinstance(url, str):
        if url.startswith("data:"):
            entry["media_type"], entry["data"] = _parse_data_url(url, f"{where}.image_url")
        elif url.startswith(("http://", "https://")):
            entry["url"] = url
        else:
            raise _bad(
                "Invalid 'image_url': expected an http(s) URL or a base64 data URL.",
                f"{where}.image_url",
                "invalid_image_url",
            )
    elif entry["file_id"] is None:
        raise _bad("input_image needs 'image_url' or 'file_id'.", f"{where}.image_url")
    return entry


def _file_entry(role: str, part: Mapping[str, Any], where: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "role": role, "kind": "file", "file_id": part.get("file_id"), "url": part.get("file_url"),
        "filename": part.get("filename"), "media_type": None, "data": None,
    }  # fmt: skip
    data = part.get("file_data")
    if isinstance(data, str):
        if data.startswith("data:"):
            entry["media_type"], entry["data"] = _parse_data_url(data, f"{where}.file_data")
        else:
            entry["data"] = data
            entry["media_type"] = "application/pdf"
    elif entry["file_id"] is None and entry["url"] is None:
        raise _bad("input_file needs 'file_data', 'file_url' or 'file_id'.", where)
    return entry


def _check_item_fields(item: Mapping[str, Any], where: str) -> None:
    """Fields every item kind shares: ids are strings (they are dict keys and store keys)."""
    for key in ("id", "call_id", "status"):
        value = item.get(key)
        if value is not None and not isinstance(value, str):
            raise _not_a_string(f"{where}.{key}", value)


def _check_depth(value: Any, param: str | None = None) -> None:
    """400 past MAX_DEPTH, naming `param`, or for the body the field the path runs through."""
    path = deep_path(value)
    if path is not None:
        param = param or param_of(path)
        raise _bad(
            f"Invalid '{param}': nested too deeply (at most {MAX_DEPTH} levels of objects and "
            "arrays).",
            param,
            "nesting_too_deep",
        )


def _output_text(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = [p.get("text", "") for p in output if isinstance(p, dict) and "text" in p]
        return "".join(str(t) for t in texts)
    raise _bad(
        f"Invalid type for '{where}.output': expected a string or an array.",
        f"{where}.output",
        "invalid_type",
    )


@dataclass
class _Normalizer:
    """Turns Responses items into (stored item with id, canonical entries)."""

    system: list[str] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    call_names: dict[str, str] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    seen_calls: set[str] = field(default_factory=set)
    seen_outputs: set[str] = field(default_factory=set)
    has_reasoning: bool = False
    messages: int = 0
    # The gateway's key for Turnout's own compaction blobs (engine/compaction.py).
    seal_key: bytes | None = None
    # Where the first provider-native compaction blob is (`input[2].encrypted_content`): only
    # the Responses dialect can send it on, every other refuses it naming this.
    native_compaction: str | None = None

    def add(self, item: Any, where: str, *, keep: list[dict[str, Any]] | None) -> None:
        if not isinstance(item, dict):
            raise _bad(f"Invalid type for '{where}': expected an object.", where, "invalid_type")
        itype = item.get("type", "message" if "role" in item else None)
        if itype is not None and not isinstance(itype, str):
            raise _not_a_string(f"{where}.type", itype)
        item_id = item.get("id")
        # Idempotent merge: a client that replays history it also chains by
        # previous_response_id must not duplicate items (duplicate tool ids are a 400 upstream).
        if isinstance(item_id, str) and item_id in self.seen_ids:
            return
        if keep is not None:  # the client's items; history was checked when it came in
            _check_item_fields(item, where)
        call_id = item.get("call_id")
        if isinstance(call_id, str):  # a list or object is no call id (and not hashable)
            if itype == "function_call" and call_id in self.seen_calls:
                return
            if itype == "function_call_output" and call_id in self.seen_outputs:
                return
        stored = self._entries_for(itype, item, where)
        if keep is not None and stored is not None:
            keep.append(stored)
        if isinstance(stored, dict) and isinstance(stored.get("id"), str):
            self.seen_ids.add(stored["id"])

    def _entries_for(self, itype: Any, item: dict[str, Any], where: str) -> dict[str, Any] | None:
        if itype == "message":
            return self._message(item, where)
        if itype == "function_call":
            return self._function_call(item, where)
        if itype == "function_call_output":
            return self._function_output(item, where)
        if itype == "reasoning":
            return self._reasoning(item, where)
        if itype == "compaction":
            return self._compaction(item, where)
        if itype == "web_search_call":
            return self._web_search_call(item, where)
        if itype == "image_generation_call":
            stored = {**item, "id": item.get("id") or _mint("ig")}
            result = item.get("result")
            if isinstance(result, str) and result:
                # A generated image goes back as an image the next turn can look at and edit
                # ("make it blue"): every provider reads user images, none another's tool items.
                fmt = str(item.get("output_format") or "png")
                self.entries.append(
                    {"role": "user", "kind": "image", "url": None, "file_id": None,
                     "media_type": f"image/{fmt}", "data": result, "detail": "auto"}
                )  # fmt: skip
            return stored
        raise _bad(
            f"Invalid value: '{itype}'. Supported input item types are: message, function_call, "
            "function_call_output, reasoning, compaction, image_generation_call, "
            "web_search_call, item_reference.",
            f"{where}.type",
        )

    def _web_search_call(self, item: dict[str, Any], where: str) -> dict[str, Any]:
        """A past web search is kept in the history as it came, and no provider is sent it:
        the answer it informed (the assistant message after it) carries what was found, and
        no provider can replay another's search (Anthropic wants its own encrypted results)."""
        action = item.get("action")
        if action is not None and not isinstance(action, dict):
            raise _bad(
                f"Invalid type for '{where}.action': expected an object.", f"{where}.action",
                "invalid_type",
            )  # fmt: skip
        return {
            **item,
            "id": item.get("id") or _mint("ws"),
            "status": item.get("status") or "completed",
        }

    def _message(self, item: dict[str, Any], where: str) -> dict[str, Any]:
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise _bad(
                f"Invalid value: '{role}'. Supported values are: 'assistant', 'system', "
                "'developer', and 'user'.",
                f"{where}.role",
            )
        content = item.get("content")
        if content is None:
            raise _bad(f"Missing required parameter: '{where}.content'.", f"{where}.content")
        parts = _part_entries(role, content, f"{where}.content")
        phase = item.get("phase")
        if phase is not None and phase not in _PHASES:
            raise _bad(
                f"Invalid value: '{phase}'. Supported values are: 'commentary' and 'final_answer'.",
                f"{where}.phase",
            )
        if role != "assistant":
            phase = None  # labels assistant messages only
        if role in ("system", "developer"):
            self.system.extend(p["text"] for p in parts if p["kind"] == "text")
        else:
            # The parts of one message share its number (a Responses upstream gets the message
            # back whole, and apart from its neighbours) and its phase.
            self.messages += 1
            for p in parts:
                p["message"] = self.messages
                if phase is not None:
                    p["phase"] = phase
            self.entries.extend(parts)
        stored_content: Any = content
        if isinstance(content, str):
            part: dict[str, Any] = {"type": "input_text", "text": content}
            if role == "assistant":
                part = {"type": "output_text", "text": content, "annotations": []}
            stored_content = [part]
        stored = {
            "type": "message",
            "id": item.get("id") or _mint("msg"),
            "role": role,
            "content": stored_content,
            "status": item.get("status") or "completed",
        }
        if phase is not None:
            stored["phase"] = phase
        return stored

    def _function_call(self, item: dict[str, Any], where: str) -> dict[str, Any]:
        for key in ("call_id", "name", "arguments"):
            value = item.get(key)
            if value is None:
                raise _bad(f"Missing required parameter: '{where}.{key}'.", f"{where}.{key}")
            if not isinstance(value, str):
                raise _not_a_string(f"{where}.{key}", value)
        call_id, name, arguments = item["call_id"], item["name"], item["arguments"]
        namespace = item.get("namespace")
        if namespace is not None and not isinstance(namespace, str):
            raise _bad(
                f"Invalid type for '{where}.namespace': expected a string.",
                f"{where}.namespace",
                "invalid_type",
            )
        # A namespaced call goes upstream under its flat name (engine/namespaces.py).
        upstream_name = flat_name(namespace, name) if namespace else name
        try:
            args = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError:
            args = None
        # Parsed arguments reach the provider body as JSON, like the rest of the request.
        _check_depth(args, f"{where}.arguments")
        self.call_names[call_id] = upstream_name
        self.seen_calls.add(call_id)
        stored = {
            "type": "function_call", "id": item.get("id") or _mint("fc"), "call_id": call_id,
            "name": name, "arguments": arguments, "status": item.get("status") or "completed",
        }  # fmt: skip
        entry = {
            "role": "assistant", "kind": "function_call", "call_id": call_id,
            "name": upstream_name, "arguments": arguments, "args": args, "id": stored["id"],
            "signature": None,
        }  # fmt: skip
        if namespace:
            stored["namespace"] = entry["namespace"] = namespace
            entry["plain_name"] = name  # what a Responses-API upstream is sent
        self.entries.append(entry)
        return stored

    def _function_output(self, item: dict[str, Any], where: str) -> dict[str, Any]:
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise _bad(f"Missing required parameter: '{where}.call_id'.", f"{where}.call_id")
        if "output" not in item:
            raise _bad(f"Missing required parameter: '{where}.output'.", f"{where}.output")
        if call_id not in self.call_names:
            raise _bad(
                f"No tool call found for function call output with call_id {call_id}.",
                "input",
            )
        output = _output_text(item["output"], where)
        self.seen_outputs.add(call_id)
        self.entries.append(
            {"role": "tool", "kind": "function_call_output", "call_id": call_id,
             "name": self.call_names.get(call_id), "output": output}
        )  # fmt: skip
        return {
            "type": "function_call_output",
            "id": item.get("id") or _mint("fco"),
            "call_id": call_id,
            "output": item["output"],
            "status": item.get("status") or "completed",
        }

    def _reasoning(self, item: dict[str, Any], where: str) -> dict[str, Any]:
        summary = item.get("summary") or []
        if not isinstance(summary, list):
            raise _bad(
                f"Invalid type for '{where}.summary': expected an array of summary parts, but "
                f"got {_type_name(summary)} instead.",
                f"{where}.summary",
                "invalid_type",
            )
        text = "".join(
            p.get("text", "")
            for p in summary
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
        encrypted = item.get("encrypted_content")
        provider, state = decode_state(encrypted if isinstance(encrypted, str) else None)
        _check_depth(state, f"{where}.encrypted_content")
        self.has_reasoning = True
        self.entries.append(
            {"role": "assistant", "kind": "reasoning", "id": item.get("id"), "text": text,
             "provider": provider, "state": state,
             "encrypted_content": encrypted if provider is None else None}
        )  # fmt: skip
        stored = {"type": "reasoning", "id": item.get("id") or _mint("rs"), "summary": summary}
        if encrypted is not None:
            stored["encrypted_content"] = encrypted
        return stored

    def _compaction(self, item: dict[str, Any], where: str) -> dict[str, Any]:
        blob = item.get("encrypted_content")
        param = f"{where}.encrypted_content"
        if not isinstance(blob, str) or not blob:
            raise _bad(f"Missing required parameter: '{param}'.", param)
        if blob.startswith(COMPACTION_PREFIX):
            summary = open_summary(blob, self.seal_key)
            if summary is None:
                raise _bad(
                    f"Invalid '{param}': the compaction was altered or was not made by this "
                    "gateway.",
                    param,
                    "invalid_encrypted_content",
                )
            # Turnout's own compaction: the summary goes before what follows, as user text
            # (every provider reads that).
            self.messages += 1
            self.entries.append(
                {"role": "user", "kind": "text", "text": SUMMARY_LEAD + summary,
                 "message": self.messages}
            )  # fmt: skip
        else:
            # A provider's own compaction: only that provider's Responses API can read it.
            if self.native_compaction is None:
                self.native_compaction = param
            self.entries.append(
                {"role": "assistant", "kind": "compaction", "encrypted_content": blob}
            )
        stored = {"type": "compaction", "id": item.get("id") or _mint("cmp"),
                  "encrypted_content": blob}  # fmt: skip
        if isinstance(item.get("created_by"), str):
            stored["created_by"] = item["created_by"]
        return stored

    def attach_call_signatures(self) -> None:
        """Signatures kept per call id (Gemini thoughtSignature) go back onto their calls."""
        signatures: dict[str, str] = {}
        for entry in self.entries:
            if entry["kind"] == "reasoning" and entry["state"]:
                found = entry["state"].get("call_signatures")
                # The state is the client's to send back: only a str -> str map is usable.
                if isinstance(found, dict):
                    signatures.update((k, v) for k, v in found.items() if isinstance(v, str))
        if not signatures:
            return
        for entry in self.entries:
            if entry["kind"] == "function_call" and entry["call_id"] in signatures:
                entry["signature"] = signatures[entry["call_id"]]


def normalize_items(
    items: Iterable[Any],
    history: Iterable[Mapping[str, Any]] = (),
    *,
    seal_key: bytes | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(entries, stored input items, system texts) for history followed by new items."""
    norm, stored = _normalize_items(items, history, seal_key)
    return norm.entries, stored, norm.system


@dataclass(frozen=True)
class History:
    """A history already normalized: what `normalize` would build from its items before the
    request's own input, kept so the next turn of a chain starts from it instead of from the
    first item again (`extend_history`). Never changed once built: `normalize` works on a
    copy."""

    norm: _Normalizer
    by_id: dict[str, Mapping[str, Any]]
    size: int  # how many items it was built from (the `history[i]` of error messages)


def _copy(norm: _Normalizer) -> _Normalizer:
    """A normalizer to carry on from, sharing nothing mutable with `norm`: the entries are
    copied one level deep (later steps set keys on them: attach_call_signatures)."""
    return _Normalizer(
        system=list(norm.system), entries=[dict(e) for e in norm.entries],
        call_names=dict(norm.call_names), seen_ids=set(norm.seen_ids),
        seen_calls=set(norm.seen_calls), seen_outputs=set(norm.seen_outputs),
        has_reasoning=norm.has_reasoning, messages=norm.messages, seal_key=norm.seal_key,
        native_compaction=norm.native_compaction,
    )  # fmt: skip


def extend_history(
    items: Iterable[Mapping[str, Any]],
    base: History | None = None,
    *,
    seal_key: bytes | None = None,
) -> History:
    """`base` (or an empty history) followed by `items`: the same state `normalize` reaches
    after `base`'s items and then these. `seal_key` is `base`'s when it is given."""
    norm = _copy(base.norm) if base is not None else _Normalizer(seal_key=seal_key)
    by_id = dict(base.by_id) if base is not None else {}
    size = _add_history(norm, by_id, items, base.size if base is not None else 0)
    return History(norm, by_id, size)


def _add_history(
    norm: _Normalizer,
    by_id: dict[str, Mapping[str, Any]],
    history: Iterable[Mapping[str, Any]],
    start: int = 0,
) -> int:
    """Adds `history` (already checked when it came in) to `norm`; the count of items so far."""
    i = start
    for item in history:
        if isinstance(item.get("id"), str):
            by_id[item["id"]] = item
        norm.add(dict(item), f"history[{i}]", keep=None)
        i += 1
    return i


def _normalize_items(
    items: Iterable[Any],
    history: Iterable[Mapping[str, Any]] | History,
    seal_key: bytes | None,
) -> tuple[_Normalizer, list[dict[str, Any]]]:
    by_id: dict[str, Mapping[str, Any]]
    if isinstance(history, History):
        norm, by_id = _copy(history.norm), history.by_id  # by_id is only read
    else:
        norm, by_id = _Normalizer(seal_key=seal_key), {}
        _add_history(norm, by_id, history)
    stored: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if isinstance(item, dict) and item.get("type") == "item_reference":
            ref = by_id.get(str(item.get("id")))
            if ref is None:
                raise _bad(
                    f"Item with id '{item.get('id')}' not found.", f"{where}.id", "not_found"
                )
            continue  # already part of the history the chain replays
        norm.add(item, where, keep=stored)
    norm.attach_call_signatures()
    return norm, stored


def _tools(
    body: Mapping[str, Any], prefix: str = "tools"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None]:
    """Function tools (namespaces flattened), the others (each with its `index` in `tools`, so
    a refusal can name it) and the web search tool normalised (engine/web_search.py)."""
    tools = _expect(body, "tools", (list,), "an array")
    functions: list[dict[str, Any]] = []
    hosted: list[dict[str, Any]] = []
    search: dict[str, Any] | None = None
    for i, tool in enumerate(tools or []):
        where = f"{prefix}[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _bad(f"Missing required parameter: '{where}.type'.", f"{where}.type")
        if tool["type"] == "namespace":
            functions.extend(_namespace_functions(tool, where))
            continue
        if tool["type"] != "function":
            if tool["type"] == "image_generation":
                _check_image_tool(tool, where)
            if tool["type"] in WEB_SEARCH_TYPES:
                if search is not None:
                    raise _bad(
                        f"Invalid '{where}': a request takes one web search tool "
                        f"('tools[{search['index']}]' is one).",
                        where,
                    )
                search = web_search_tool(tool, i, where)
            hosted.append(hosted_entry(tool, i))
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"Missing required parameter: '{where}.name'.", f"{where}.name")
        params = tool.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise _bad(
                f"Invalid type for '{where}.parameters': expected an object.",
                f"{where}.parameters",
                "invalid_type",
            )
        functions.append(
            {"name": name, "description": tool.get("description"),
             "parameters": params if params is not None else {"type": "object", "properties": {}},
             "strict": tool.get("strict")}
        )  # fmt: skip
    return functions, hosted, search


def _namespace_functions(tool: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """The functions of a namespace tool, under their flat names (engine/namespaces.py)."""
    namespace = tool.get("name")
    if not isinstance(namespace, str) or not namespace:
        raise _bad(f"Missing required parameter: '{where}.name'.", f"{where}.name")
    inner = tool.get("tools")
    if not isinstance(inner, list):
        raise _bad(
            f"Invalid type for '{where}.tools': expected an array.", f"{where}.tools",
            "invalid_type",
        )  # fmt: skip
    functions, hosted, _ = _tools({"tools": inner}, f"{where}.tools")
    if hosted:
        kind = hosted[0]["type"]
        raise _bad(
            f"Invalid value for '{where}.tools[{hosted[0]['index']}].type': a namespace groups "
            f"function tools here, not '{kind}'.",
            f"{where}.tools[{hosted[0]['index']}].type",
            "invalid_value",
        )
    described = tool.get("description")
    for function in functions:
        function["name"] = flat_name(namespace, function["name"])
        if isinstance(described, str) and described:
            function["description"] = f"[{namespace}: {described}] {function['description'] or ''}"
    return functions


# The image_generation tool's options, typed as OpenAI's ImageGenTool: mappings read them (a
# Gemini aspect ratio from `size`), the builder echoes them on the image item.
_IMAGE_TEXT = ("model", "quality", "size", "output_format", "moderation", "background",
               "input_fidelity", "action")  # fmt: skip
_IMAGE_INTS = {"partial_images": (0, 3), "output_compression": (0, 100)}


def _check_image_tool(tool: Mapping[str, Any], where: str) -> None:
    for key in _IMAGE_TEXT:
        value = tool.get(key)
        if value is not None and not isinstance(value, str):
            raise _not_a_string(f"{where}.{key}", value)
    for key, (low, high) in _IMAGE_INTS.items():
        value = tool.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _bad(
                f"Invalid '{where}.{key}': expected an integer between {low} and {high}.",
                f"{where}.{key}",
                "invalid_value",
            )
    mask = tool.get("input_image_mask")
    if mask is not None and not isinstance(mask, dict):
        raise _bad(
            f"Invalid type for '{where}.input_image_mask': expected an object.",
            f"{where}.input_image_mask",
            "invalid_type",
        )


def _tool_choice(body: Mapping[str, Any], names: set[str]) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise _bad(
                f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
                "tool_choice",
            )
        return {"mode": choice}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str):
            raise _bad(
                "Missing required parameter: 'tool_choice.name'.", "tool_choice.name",
                "missing_required_parameter",
            )  # fmt: skip
        if name not in names:
            raise _bad(f"Tool choice '{name}' not found in 'tools' parameter.", "tool_choice")
        return {"mode": "function", "name": name}
    if isinstance(choice, dict) and isinstance(choice.get("type"), str):
        return {"mode": "hosted", "type": choice["type"]}
    raise _bad("Invalid 'tool_choice'.", "tool_choice", "invalid_type")


def _text_format(body: Mapping[str, Any]) -> dict[str, Any] | None:
    text = _expect(body, "text", (dict,), "an object")
    if not text or text.get("format") is None:
        return None
    fmt = text["format"]
    if not isinstance(fmt, dict):
        raise _bad(
            "Invalid type for 'text.format': expected an object.", "text.format", "invalid_type"
        )
    ftype = fmt.get("type")
    if ftype == "text":
        return None
    if ftype == "json_object":
        return {"type": "json_object"}
    if ftype == "json_schema":
        if not isinstance(fmt.get("name"), str):
            raise _bad("Missing required parameter: 'text.format.name'.", "text.format.name")
        if not isinstance(fmt.get("schema"), dict):
            raise _bad("Missing required parameter: 'text.format.schema'.", "text.format.schema")
        return {
            "type": "json_schema", "name": fmt["name"], "schema": fmt["schema"],
            "strict": fmt.get("strict"), "description": fmt.get("description"),
        }  # fmt: skip
    raise _bad(
        f"Invalid value: '{ftype}'. Supported values are: 'text', 'json_object', 'json_schema'.",
        "text.format.type",
    )


def _reasoning(body: Mapping[str, Any]) -> dict[str, Any] | None:
    reasoning = _expect(body, "reasoning", (dict,), "an object")
    if not reasoning:
        return None
    effort, summary = reasoning.get("effort"), reasoning.get("summary")
    # Membership first needs a hashable value: `"effort": []` is a 400, not a TypeError.
    if not isinstance(effort, (str, type(None))) or effort not in _EFFORTS:
        raise _bad(
            f"Invalid value: '{effort}'. Supported values are: 'none', 'minimal', 'low', "
            "'medium', 'high', 'xhigh' and 'max'.",
            "reasoning.effort",
        )
    if not isinstance(summary, (str, type(None))) or summary not in _SUMMARIES:
        raise _bad(
            f"Invalid value: '{summary}'. Supported values are: 'auto', 'concise' and 'detailed'.",
            "reasoning.summary",
        )
    if effort in (None, "none") and summary is None:
        return None
    return {"effort": None if effort == "none" else effort, "summary": summary}


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if model is None or model == "":
        raise _bad("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    model = _expect(body, "model", (str,), "a string")
    # It names a provider and goes into upstream URLs and a reply header: printable text only.
    if len(model) > 256 or not model.isprintable() or model != model.strip():
        raise _bad(
            "Invalid 'model': expected a model name of up to 256 printable characters "
            "without surrounding spaces.",
            "model",
            "invalid_value",
        )
    return str(model)


# Settings the Response echoes back: a value OpenAI's schema refuses would make the echo invalid
# for strict clients, so it is refused here, naming the parameter.
_ENUMS: dict[str, tuple[str, ...]] = {
    "truncation": ("auto", "disabled"),
    "service_tier": ("auto", "default", "flex", "scale", "priority", "fast", "ultrafast"),
    "prompt_cache_retention": ("in_memory", "24h"),
}
_VERBOSITY = ("low", "medium", "high")


def _check_echoed(body: Mapping[str, Any]) -> None:
    for key, allowed in _ENUMS.items():
        value = _expect(body, key, (str,), "a string")
        if value is not None and value not in allowed:
            raise _bad(
                f"Invalid value for '{key}': '{value}'. Supported values are: "
                + ", ".join(f"'{a}'" for a in allowed)
                + ".",
                key,
                "invalid_value",
            )
    _expect(body, "prompt_cache_key", (str,), "a string")
    safety = _expect(body, "safety_identifier", (str,), "a string")
    if safety is not None and len(safety) > 64:
        raise _bad(
            "Invalid 'safety_identifier': string too long (at most 64 characters).",
            "safety_identifier",
            "string_above_max_length",
        )
    max_tool_calls = _expect(body, "max_tool_calls", (int,), "an integer")
    if max_tool_calls is not None and max_tool_calls < 0:
        raise _bad(
            "Invalid 'max_tool_calls': expected an integer >= 0.", "max_tool_calls",
            "integer_below_min_value",
        )  # fmt: skip
    text = body.get("text")
    verbosity = text.get("verbosity") if isinstance(text, Mapping) else None
    if verbosity is not None and verbosity not in _VERBOSITY:
        raise _bad(
            "Invalid value for 'text.verbosity': expected 'low', 'medium' or 'high'.",
            "text.verbosity",
            "invalid_value",
        )
    include = body.get("include")
    if isinstance(include, list):
        for i, value in enumerate(include):
            if not isinstance(value, str) or value not in INCLUDABLE:
                raise _bad(
                    f"Invalid value for 'include[{i}]': {value!r}. Supported values are: "
                    + ", ".join(f"'{v}'" for v in sorted(INCLUDABLE))
                    + ".",
                    f"include[{i}]",
                    "invalid_value",
                )


def _context_management(body: Mapping[str, Any]) -> Any:
    value = _expect(body, "context_management", (list,), "an array")
    if value is not None and not value:
        raise _bad(
            "Invalid 'context_management': expected at least one entry.",
            "context_management",
            "invalid_value",
        )
    return value


def normalize(
    body: Any,
    history: Iterable[Mapping[str, Any]] | History | None = None,
    *,
    seal_key: bytes | None = None,
) -> CanonicalRequest:
    """Validate a Responses create body and build the canonical request. `seal_key` opens
    Turnout's own compaction blobs (engine/compaction.py); without it they are refused.
    `history`: the items before the input, or the same already normalized (`History`, built
    with the same `seal_key`)."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", "body", "invalid_type")
    unknown = [k for k in body if k not in KNOWN_FIELDS]
    if unknown:
        raise _bad(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    _check_depth(body)
    model = _model(body)
    _check_echoed(body)
    instructions = _expect(body, "instructions", (str,), "a string")
    for key in ("stream", "store", "background", "parallel_tool_calls"):
        _expect(body, key, (bool,), "a boolean")
    max_output, top_logprobs = _token_limits(body)
    metadata = _metadata(body)
    include = _expect(body, "include", (list,), "an array") or []
    _expect(body, "previous_response_id", (str,), "a string")
    _expect(body, "user", (str,), "a string")
    _check_modes(body)
    norm, stored = _normalize_items(_input_items(body), history or (), seal_key)
    entries, system = norm.entries, norm.system
    if not entries and body.get("prompt") is None:  # a stored prompt may carry the input
        raise _bad("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    functions, hosted, search = _tools(body)
    texts = ([instructions] if instructions else []) + system
    view: dict[str, Any] = {
        "model": model,
        "instructions": "\n\n".join(texts) if texts else None,
        "entries": entries,
        "tools": functions,
        # hosted_tools, image_tool and web_search (derived again when an alias drops a tool).
        **hosted_view(hosted, search),
        "max_tool_calls": body.get("max_tool_calls"),
        "tool_choice": _tool_choice(body, {t["name"] for t in functions}),
        "tool_namespaces": namespace_map(body.get("tools")),
        "parallel_tool_calls": body.get("parallel_tool_calls"),
        "text_format": _text_format(body),
        "reasoning": _reasoning(body),
        "max_output_tokens": max_output,
        "temperature": _number_in(body, "temperature", 0, 2),
        "top_p": _number_in(body, "top_p", 0, 1),
        "top_logprobs": top_logprobs,
        "user": body.get("user"),
        "metadata": metadata,
        "stream": bool(body.get("stream")),
        "store": body.get("store", True) is not False,
        "include": include,
        "truncation": body.get("truncation"),
        "service_tier": body.get("service_tier"),
        "previous_response_id": body.get("previous_response_id"),
        # OpenAI-only features: the Responses dialect passes them on, the others refuse them.
        "prompt": _expect(body, "prompt", (dict,), "an object"),
        "context_management": _context_management(body),
        "moderation": _expect(body, "moderation", (dict,), "an object"),
        "has_reasoning": any(e["kind"] == "reasoning" for e in entries),
        # Where a provider's own compaction blob is: the dialects that cannot send it refuse it.
        "native_compaction": norm.native_compaction,
        # Facts mappings' rejects test, computed once here rather than by a filter per request:
        # media sent as an OpenAI file_id, and media only linked by URL (not inline bytes).
        "file_refs": any(e["kind"] in _MEDIA and e.get("file_id") for e in entries),
        "linked_media": any(e["kind"] in _MEDIA and e.get("data") is None for e in entries),
        "raw": body,
    }
    return CanonicalRequest(view=view, input_items=stored, body=body)


def _token_limits(body: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(max_output_tokens, top_logprobs), each within OpenAI's range."""
    max_output = _expect(body, "max_output_tokens", (int,), "an integer")
    if max_output is not None and max_output < 16:
        raise _bad(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
            f"but got {max_output} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    top_logprobs = _expect(body, "top_logprobs", (int,), "an integer")
    if top_logprobs is not None and not 0 <= top_logprobs <= 20:
        raise _bad(
            "Invalid 'top_logprobs': expected an integer between 0 and 20.", "top_logprobs",
            "invalid_value",
        )  # fmt: skip
    return max_output, top_logprobs


def _metadata(body: Mapping[str, Any]) -> dict[str, str] | None:
    """`body["metadata"]` checked as OpenAI does (16 string pairs); None when absent."""
    metadata: dict[str, str] | None = _expect(body, "metadata", (dict,), "an object")
    if metadata is not None and (
        len(metadata) > 16
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in metadata.items()
        )
    ):
        raise _bad(
            "Invalid 'metadata': at most 16 string pairs, keys up to 64 and values up to "
            "512 characters.",
            "metadata",
        )
    return metadata


metadata_of = _metadata  # for the other bodies that carry metadata (conversations)


def _check_modes(body: Mapping[str, Any]) -> None:
    """Combinations of modes Turnout refuses (background without store; a conversation and a
    previous_response_id together), and the shape of `conversation`."""
    if body.get("background") and body.get("store") is False:
        raise _bad(
            "Background mode requires store=true: the response is only reachable through GET.",
            "background",
            "invalid_value",
        )
    conversation_of(body)


def conversation_of(body: Mapping[str, Any]) -> str | None:
    """The conversation id of a create body (`"conv_…"` or `{"id": "conv_…"}`), or None; 400
    for another shape, or beside a `previous_response_id` (OpenAI's rule: one or the other)."""
    raw = body.get("conversation")
    if raw is None:
        return None
    conversation = raw.get("id") if isinstance(raw, dict) else raw
    if not isinstance(conversation, str) or not conversation:
        raise _bad(
            "Invalid type for 'conversation': expected a conversation id string or an object "
            "with an 'id'.",
            "conversation",
            "invalid_type",
        )
    if body.get("previous_response_id") is not None:
        raise _bad(
            "Mutually exclusive parameters: Ensure you are only providing one of: "
            "'previous_response_id' or 'conversation'.",
            "conversation",
            "mutually_exclusive_parameters",
        )
    return conversation


def _input_items(body: Mapping[str, Any]) -> list[Any]:
    """`input` as a list of items: a string is one user message."""
    raw_input = body.get("input")
    if raw_input is None:
        return []
    if isinstance(raw_input, str):
        return [{"type": "message", "role": "user", "content": raw_input}]
    if isinstance(raw_input, list):
        return raw_input
    raise _bad(
        "Invalid type for 'input': expected a string or an array of input items.",
        "input",
        "invalid_type",
    )
