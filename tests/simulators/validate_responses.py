"""What OpenAI's Responses API (POST /v1/responses) refuses; fields from responses-api.md §3."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import Invalid, require_bearer

__all__ = ["validate_responses"]

_FIELDS = frozenset(
    {
        "model", "input", "instructions", "previous_response_id", "conversation", "tools",
        "tool_choice", "parallel_tool_calls", "max_tool_calls", "text", "reasoning",
        "max_output_tokens", "temperature", "top_p", "top_logprobs", "truncation", "store",
        "background", "stream", "stream_options", "include", "metadata", "user",
        "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
        "prompt_cache_options", "service_tier", "prompt", "moderation", "context_management",
        "client_metadata",  # the Codex CLI's; OpenAI accepts it (the recorded request got a 200)
    }
)  # fmt: skip
_ROLES = ("user", "assistant", "system", "developer")


def _missing(param: str) -> Invalid:
    return Invalid(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    return str(int(value)) if _is_num(value) and value == int(value) else str(value)


def _range(body: dict[str, Any], key: str, low: float, high: float | None, integer: bool) -> None:
    value = body.get(key)
    if value is None:
        return
    kind = "integer" if integer else "decimal"
    if not _is_num(value) or (integer and not isinstance(value, int)):
        expected = "an integer" if integer else "a number"
        raise Invalid(
            f"Invalid type for '{key}': expected {expected}, but got {type(value).__name__} "
            "instead.",
            param=key,
            code="invalid_type",
        )
    if value < low:
        raise Invalid(
            f"Invalid '{key}': {kind} below minimum value. Expected a value >= {_fmt(low)}, "
            f"but got {_fmt(value)} instead.",
            param=key,
            code=f"{kind}_below_min_value",
        )
    if high is not None and value > high:
        raise Invalid(
            f"Invalid '{key}': {kind} above maximum value. Expected a value <= {_fmt(high)}, "
            f"but got {_fmt(value)} instead.",
            param=key,
            code=f"{kind}_above_max_value",
        )


def validate_responses(headers: Mapping[str, str], body: Any) -> None:
    require_bearer(headers)
    if not isinstance(body, dict):
        raise Invalid("We could not parse the JSON body of your request.")
    for key in body:
        if key not in _FIELDS:
            raise Invalid(f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
    if "prompt" not in body and not isinstance(body.get("model"), str):
        raise _missing("model")
    if "input" not in body:
        raise _missing("input")
    _range(body, "temperature", 0, 2, False)
    _range(body, "top_p", 0, 1, False)
    _range(body, "max_output_tokens", 16, None, True)
    _range(body, "top_logprobs", 0, 20, True)
    _check_input(body["input"])
    _check_tools(body.get("tools"))


def _check_input(source: Any) -> None:
    if isinstance(source, str):
        return
    if not isinstance(source, list):
        raise Invalid(
            "Invalid type for 'input': expected one of a string or array of objects.",
            param="input",
            code="invalid_type",
        )
    for i, item in enumerate(source):
        at = f"input[{i}]"
        if not isinstance(item, dict):
            raise Invalid(
                f"Invalid type for '{at}': expected an object.", param=at, code="invalid_type"
            )
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in _ROLES:
                raise Invalid(
                    f"Invalid value: '{item.get('role')}'. Supported values are: 'user', "
                    "'assistant', 'system', and 'developer'.",
                    param=f"{at}.role",
                    code="invalid_value",
                )
            if "content" not in item:
                raise _missing(f"{at}.content")
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise _missing(f"{at}.{key}")
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _missing(f"{at}.call_id")
            if "output" not in item:
                raise _missing(f"{at}.output")


def _check_tools(tools: Any) -> None:
    for i, tool in enumerate(tools or []):
        at = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _missing(f"{at}.type")
        if tool["type"] == "function" and not isinstance(tool.get("name"), str):
            # The Chat Completions shape ({"function": {...}}) lands here.
            raise _missing(f"{at}.name")


# POST /responses/compact: CompactResponseMethodPublicBody (OpenAI refuses anything else).
_COMPACT_FIELDS = frozenset(
    {
        "model", "input", "instructions", "previous_response_id", "prompt_cache_key",
        "prompt_cache_retention", "prompt_cache_options", "service_tier", "image",
    }
)  # fmt: skip


def validate_compact(headers: Mapping[str, str], body: Any) -> None:
    if "api-key" not in headers:  # Azure's key header; OpenAI's is a bearer token
        require_bearer(headers)
    if not isinstance(body, dict):
        raise Invalid("We could not parse the JSON body of your request.")
    for key in body:
        if key not in _COMPACT_FIELDS:
            raise Invalid(f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
    if not isinstance(body.get("model"), str):
        raise _missing("model")
    if body.get("input") is not None:
        _check_input(body["input"])
