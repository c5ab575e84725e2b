"""What OpenAI Chat Completions (and the strict compatible servers) refuse."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import Invalid, require_bearer

__all__ = ["validate_chat"]

_ROLES = ("system", "developer", "user", "assistant", "tool")
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_USER_PARTS = frozenset({"text", "image_url", "input_audio", "file"})
# OpenAI's own fields, then extensions compatible servers document; anything else is refused,
# so a gateway that leaks a foreign field (e.g. Anthropic's `max_tokens_to_sample`) is caught.
_OPENAI_FIELDS = frozenset(
    {
        "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
        "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata",
        "modalities", "n", "parallel_tool_calls", "prediction", "presence_penalty",
        "prompt_cache_key", "prompt_cache_retention", "reasoning_effort", "response_format",
        "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options",
        "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
        "web_search_options",
    }
)  # fmt: skip
_COMPAT_FIELDS = frozenset(
    {
        "random_seed", "safe_prompt", "prompt_mode",  # Mistral
        "reasoning_format", "reasoning", "include_reasoning",  # Groq / OpenRouter
        "provider", "transforms", "models", "route", "usage",  # OpenRouter
        "top_k", "min_p", "repetition_penalty", "chat_template_kwargs",  # vLLM / Together
        "thinking", "enable_thinking",  # DeepSeek / Qwen
    }
)  # fmt: skip


def _error(message: str, param: str | None = None, code: str | None = None) -> Invalid:
    return Invalid(message, param=param, code=code)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_chat(headers: Mapping[str, str], body: Any) -> None:
    require_bearer(headers)
    if not isinstance(body, dict):
        raise _error("We could not parse the JSON body of your request.")
    for key in body:
        if key not in _OPENAI_FIELDS and key not in _COMPAT_FIELDS:
            raise _error(f"Unrecognized request argument supplied: {key}")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _error("you must provide a model parameter")
    temperature = body.get("temperature")
    if temperature is not None and (not _is_num(temperature) or not 0 <= temperature <= 2):
        raise _error(
            f"Invalid 'temperature': decimal out of range. Expected a value between 0 and 2, "
            f"but got {temperature} instead.",
            "temperature",
            "decimal_out_of_range",
        )
    if "stream_options" in body and body.get("stream") is not True:
        raise _error(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
            "invalid_value",
        )
    _check_tools(body.get("tools"))
    _check_messages(body.get("messages"))


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _error("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _error(
                f"Missing required parameter: '{at}.type'.",
                f"{at}.type",
                "missing_required_parameter",
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise _error(
                f"Missing required parameter: '{at}.function'.",
                f"{at}.function",
                "missing_required_parameter",
            )
        name = function.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            raise _error(
                f"Invalid '{at}.function.name': string does not match pattern. Expected a string "
                "that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                f"{at}.function.name",
                "invalid_value",
            )
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise _error(
                f"Invalid type for '{at}.function.parameters': expected an object.",
                f"{at}.function.parameters",
                "invalid_type",
            )


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise _error(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not messages:
        raise _error(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            "messages",
            "empty_array",
        )
    pending: dict[str, int] = {}  # tool_call id -> index of the assistant message offering it
    known: set[str] = set()
    for i, message in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _error(f"Invalid type for '{at}': expected an object.", at, "invalid_type")
        role = message.get("role")
        if role not in _ROLES:
            raise _error(
                f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                "'function', 'tool', and 'developer'.",
                f"{at}.role",
                "invalid_value",
            )
        if role != "tool" and pending:
            raise _unanswered(pending)
        if role == "assistant":
            ids = _check_assistant(at, message)
            known.update(ids)
            pending = dict.fromkeys(ids, i)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise _error(
                    f"Missing required parameter: '{at}.tool_call_id'.",
                    f"{at}.tool_call_id",
                    "missing_required_parameter",
                )
            if call_id not in known:
                raise _error(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"{at}.role",
                )
            pending.pop(call_id, None)
            _check_text_content(at, message.get("content"), allow_parts=True)
        else:
            _check_text_content(at, message.get("content"), allow_parts=True)
    if pending:
        raise _unanswered(pending)


def _unanswered(pending: dict[str, int]) -> Invalid:
    return _error(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to "
        f"each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        f"{', '.join(pending)}",
        f"messages.[{min(pending.values())}].role",
    )


def _check_assistant(at: str, message: dict[str, Any]) -> list[str]:
    calls = message.get("tool_calls")
    content = message.get("content")
    if calls is None and content is None:
        raise _error(
            f"Invalid value for '{at}.content': expected a string, got null.", f"{at}.content"
        )
    if content is not None:
        _check_text_content(at, content, allow_parts=True, allow_empty=True)
    ids: list[str] = []
    for j, call in enumerate(calls or []):
        where = f"{at}.tool_calls[{j}]"
        if not isinstance(call, dict) or not isinstance(call.get("id"), str):
            raise _error(
                f"Missing required parameter: '{where}.id'.",
                f"{where}.id",
                "missing_required_parameter",
            )
        if call.get("type") != "function":
            raise _error(
                f"Missing required parameter: '{where}.type'.",
                f"{where}.type",
                "missing_required_parameter",
            )
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _error(
                f"Missing required parameter: '{where}.function.name'.",
                f"{where}.function.name",
                "missing_required_parameter",
            )
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            kind = "an object" if isinstance(arguments, dict) else type(arguments).__name__
            raise _error(
                f"Invalid type for '{where}.function.arguments': expected a string, but got "
                f"{kind} instead.",
                f"{where}.function.arguments",
                "invalid_type",
            )
        ids.append(call["id"])
    return ids


def _check_text_content(
    at: str, content: Any, *, allow_parts: bool, allow_empty: bool = False
) -> None:
    if isinstance(content, str):
        return
    if content is None:
        raise _error(
            f"Invalid value for '{at}.content': expected a string, got null.", f"{at}.content"
        )
    if not allow_parts or not isinstance(content, list):
        raise _error(
            f"Invalid type for '{at}.content': expected one of a string or array of objects.",
            f"{at}.content",
            "invalid_type",
        )
    if not content and not allow_empty:
        raise _error(f"Invalid '{at}.content': empty array.", f"{at}.content", "empty_array")
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _USER_PARTS and kind != "refusal":
            raise _error(
                f"Invalid value: '{kind}'. Supported values are: 'text', 'image_url', "
                "'input_audio', 'refusal', and 'file'.",
                f"{at}.content[{k}].type",
                "invalid_value",
            )
