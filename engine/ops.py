"""The canonical op vocabulary, as data.

Mappings turn provider payloads into ops (dicts ``{"op": name, ...fields}``); the builder turns ops
into Responses events. Keeping the vocabulary as plain data lets the mapping lint check op names and
field names at load time, so a typo fails at start-up instead of mid-stream.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "BLOCK_FAMILIES",
    "FINISH_STATUSES",
    "OPS",
    "OpSpec",
    "check_op",
]


class OpSpec(NamedTuple):
    """Fields of one op. ``family`` is the output block family the op addresses, if any."""

    required: frozenset[str]
    optional: frozenset[str]
    family: str | None


def _spec(required: str = "", optional: str = "", family: str | None = None) -> OpSpec:
    return OpSpec(frozenset(required.split()), frozenset(optional.split()), family)


# Block families the builder keys open blocks by; text and refusal share one message item.
BLOCK_FAMILIES: frozenset[str] = frozenset(
    {"text", "refusal", "reasoning", "tool", "image", "search"}
)

# Exactly the table in docs/internals.md ("Canonical ops"). Change the doc first.
OPS: dict[str, OpSpec] = {
    "start": _spec(optional="id model"),
    "open_text": _spec(optional="index segment", family="text"),
    "text_delta": _spec("text", "index segment", "text"),
    "refusal_delta": _spec("text", "index", "refusal"),
    "open_reasoning": _spec(optional="index", family="reasoning"),
    "reasoning_delta": _spec("text", "index", "reasoning"),
    "reasoning_state": _spec("state", "index encrypted_content", "reasoning"),
    "tool_call_start": _spec("name", "index call_id namespace", "tool"),
    "tool_args_delta": _spec("text", "index call_id name", "tool"),
    "tool_call": _spec("name arguments", "index call_id state namespace", "tool"),
    "image": _spec(
        "b64", "index mime revised_prompt size quality background output_format", "image"
    ),
    "image_partial": _spec(
        "b64", "index partial_index size quality background output_format", "image"
    ),
    "search_start": _spec(optional="index key query", family="search"),
    "search_done": _spec(optional="index key query queries sources error action", family="search"),
    "cite": _spec("url", "index title start end offsets", "text"),
    "close": _spec(optional="index family"),
    "usage": _spec(
        optional="input_tokens cached_tokens cache_write_tokens output_tokens reasoning_tokens "
        "web_searches"
    ),
    "finish": _spec("reason"),
    "error": _spec("message", "code type"),
    "end": _spec(),
}

# What a mapping's ``finish_reasons`` may map a native stop reason to.
FINISH_STATUSES: frozenset[str] = frozenset(
    {"completed", "incomplete/max_output_tokens", "incomplete/content_filter", "failed"}
)


def check_op(name: str, fields: set[str] | frozenset[str]) -> list[str]:
    """Return human-readable problems for an op with these field names (``op`` excluded).

    Used by the mapping lint; empty list means the op is well formed.
    """
    spec = OPS.get(name)
    if spec is None:
        return [f"unknown op {name!r} (known: {', '.join(sorted(OPS))})"]
    problems = [f"op {name!r} needs field {f!r}" for f in sorted(spec.required - fields)]
    allowed = spec.required | spec.optional
    problems += [f"op {name!r} has no field {f!r}" for f in sorted(fields - allowed - {"op"})]
    return problems
