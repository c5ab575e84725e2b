"""Named filters: the only code a mapping file can call.

Each filter is small, generic (no provider names inside) and unit-tested once in
``tests/test_filters.py``. Adding a provider should never need a new filter; adding a *kind of
translation* may.

``turns(entries, roles)``
    group canonical entries into provider turns: consecutive entries whose mapped role is equal
    share one turn (``roles`` maps user/assistant/tool to the provider's role names)
``split_turns(entries, roles, alone)``
    like ``turns`` but entries of a role in ``alone`` each get a turn of their own (Chat
    ``tool`` messages)
``only(entries, *kinds)``
    entries of those kinds
``without(entries, *kinds)``
    entries not of those kinds
``lead_with(turns, role, text)``
    the turns, led by a turn of ``role`` holding one text entry when the first turn is of another
    role: for providers whose conversation must open with a user turn (no turns stay none)
``texts(entries, sep="")``
    the text of the text entries joined with ``sep`` (None when there is none)
``from_json(text)``
    parse a JSON string (tool arguments); invalid JSON is a client error
``to_json(value)``
    compact JSON text, keys in order, no HTML escaping
``data_url(entry)``
    ``data:<media_type>;base64,<data>`` for an image/file entry, or its URL
``as_object(value, key)``
    the value when it is a JSON object, else ``{key: value}`` (Gemini functionResponse)
``pick(mapping, key, default)``
    ``mapping[key]`` or default: a lookup table lookup that never fails
``readable(entries, provider, native_blobs=False)``
    drops reasoning the provider cannot read (minted by another provider, or opaque unless
    ``native_blobs``: the upstream's own encrypted_content)
``omit(mapping, *keys)``
    a copy of a mapping without those top-level keys
``responses_input(entries)``
    canonical entries back to Responses input items (for Responses-native upstreams), one message
    item per message the client sent, with its ``phase``
``path_segment(text, safe="")``
    percent-encode one URL path segment (``/`` always: ARNs in a path; ``safe`` keeps characters)
``strip_keys(obj, *keys)``
    a copy of a JSON schema without those keys anywhere (providers that reject
    ``additionalProperties``, ``strict``…)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import orjson

from turnout.engine.errors import RequestError

__all__ = ["FILTERS", "GLOBALS"]

Entry = Mapping[str, Any]


def turns(entries: Iterable[Entry], roles: Mapping[str, str]) -> list[dict[str, Any]]:
    grouped: list[dict[str, Any]] = []
    for entry in entries:
        role = roles.get(entry["role"])
        if role is None:
            continue
        if grouped and grouped[-1]["role"] == role:
            grouped[-1]["entries"].append(entry)
        else:
            grouped.append({"role": role, "entries": [entry]})
    return grouped


def split_turns(
    entries: Iterable[Entry], roles: Mapping[str, str], alone: Iterable[str] = ()
) -> list[dict[str, Any]]:
    solitary = set(alone)
    grouped: list[dict[str, Any]] = []
    for entry in entries:
        role = roles.get(entry["role"])
        if role is None:
            continue
        if grouped and grouped[-1]["role"] == role and role not in solitary:
            grouped[-1]["entries"].append(entry)
        else:
            grouped.append({"role": role, "entries": [entry]})
    return grouped


def lead_with(turns: Iterable[Mapping[str, Any]], role: str, text: str) -> list[Any]:
    out = list(turns)
    if not out or out[0].get("role") == role:
        return out
    return [{"role": role, "entries": [{"role": role, "kind": "text", "text": text}]}, *out]


def only(entries: Iterable[Entry], *kinds: str) -> list[Entry]:
    return [e for e in entries if e["kind"] in kinds]


def without(entries: Iterable[Entry], *kinds: str) -> list[Entry]:
    return [e for e in entries if e["kind"] not in kinds]


def texts(entries: Iterable[Entry], sep: str = "") -> str | None:
    parts = [e["text"] for e in entries if e["kind"] == "text"]
    return sep.join(parts) if parts else None


def from_json(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    if text.strip() == "":
        return {}
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise RequestError(
            400,
            f"function_call arguments are not valid JSON: {text[:80]!r}",
            param="input",
            code="invalid_function_arguments",
        ) from None


def to_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def data_url(entry: Entry) -> str | None:
    if entry.get("data") is not None:
        return (
            f"data:{entry.get('media_type') or 'application/octet-stream'};base64,{entry['data']}"
        )
    url = entry.get("url")
    return url if isinstance(url, str) else None


def as_object(value: Any, key: str = "result") -> Any:
    if isinstance(value, str):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return {key: value}
        # Only a JSON object is unpacked: tool output "42" stays the string, never 42.
        return parsed if isinstance(parsed, dict) else {key: value}
    return value if isinstance(value, dict) else {key: value}


def pick(mapping: Mapping[Any, Any], key: Any, default: Any = None) -> Any:
    if key is None:
        return default
    return mapping.get(key, default)


def readable(entries: Iterable[Entry], provider: str, native_blobs: bool = False) -> list[Entry]:
    # Opaque state only means something to the provider that minted it; sending another
    # provider's signature is a 400 at best. The visible history stays. `native_blobs` keeps
    # reasoning whose encrypted_content the upstream minted itself (OpenAI's own format).
    def keep(e: Entry) -> bool:
        if e["kind"] != "reasoning":
            return True
        if e.get("provider") is None:
            return native_blobs and bool(e.get("encrypted_content"))
        return bool(e.get("provider") == provider)

    return [e for e in entries if keep(e)]


def omit(mapping: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k not in keys}


def _content_part(entry: Entry) -> dict[str, Any]:
    kind, role = entry["kind"], entry["role"]
    if kind == "text":
        if role == "assistant":
            return {"type": "output_text", "text": entry["text"], "annotations": []}
        return {"type": "input_text", "text": entry["text"]}
    if kind == "refusal":
        return {"type": "refusal", "refusal": entry["text"]}
    if kind == "image":
        part: dict[str, Any] = {"type": "input_image", "detail": entry.get("detail") or "auto"}
        if entry.get("file_id"):
            part["file_id"] = entry["file_id"]
        else:
            part["image_url"] = data_url(entry)
        return part
    part = {"type": "input_file"}
    if entry.get("file_id"):
        part["file_id"] = entry["file_id"]
    elif entry.get("data") is not None:
        part["file_data"] = data_url(entry)
    else:
        part["file_url"] = entry.get("url")
    if entry.get("filename"):
        part["filename"] = entry["filename"]
    return part


def responses_input(entries: Iterable[Entry]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    last_message: Any = None
    for entry in entries:
        kind = entry["kind"]
        if kind in ("text", "refusal", "image", "file"):
            # The parts of one client message share its `message` number: each message goes
            # back as an item of its own (two assistant messages stay two, each with its phase).
            role, message = entry["role"], entry.get("message")
            last = items[-1] if items else None
            if (
                last is not None
                and last.get("type") == "message"
                and last["role"] == role
                and last_message == message
            ):
                last["content"].append(_content_part(entry))
            else:
                item: dict[str, Any] = {"type": "message", "role": role}
                if entry.get("phase") is not None:
                    item["phase"] = entry["phase"]
                item["content"] = [_content_part(entry)]
                items.append(item)
            last_message = message
        elif kind == "function_call":
            call = {"type": "function_call", "call_id": entry["call_id"], "name": entry["name"],
                    "arguments": entry["arguments"]}  # fmt: skip
            if entry.get("namespace"):  # OpenAI takes namespaces as they are
                call["name"], call["namespace"] = entry["plain_name"], entry["namespace"]
            items.append(call)
        elif kind == "function_call_output":
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": entry["call_id"],
                    "output": entry["output"],
                }
            )
        elif kind == "reasoning" and entry.get("encrypted_content"):
            summary = [{"type": "summary_text", "text": entry["text"]}] if entry["text"] else []
            items.append(
                {
                    "type": "reasoning",
                    "id": entry["id"],
                    "encrypted_content": entry["encrypted_content"],
                    "summary": summary,
                }
            )
        elif kind == "compaction":  # the upstream's own compaction blob goes back as it was
            items.append({"type": "compaction", "encrypted_content": entry["encrypted_content"]})
    return items


def path_segment(text: Any, safe: str = "") -> str:
    return quote(str(text), safe=safe)


def strip_keys(obj: Any, *keys: str) -> Any:
    if isinstance(obj, dict):
        return {k: strip_keys(v, *keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [strip_keys(v, *keys) for v in obj]
    return obj


FILTERS: dict[str, Callable[..., Any]] = {
    "turns": turns,
    "split_turns": split_turns,
    "lead_with": lead_with,
    "only": only,
    "without": without,
    "texts": texts,
    "from_json": from_json,
    "to_json": to_json,
    "data_url": data_url,
    "as_object": as_object,
    "pick": pick,
    "strip_keys": strip_keys,
    "path_segment": path_segment,
    "readable": readable,
    "omit": omit,
    "responses_input": responses_input,
}

GLOBALS: dict[str, Any] = {}
