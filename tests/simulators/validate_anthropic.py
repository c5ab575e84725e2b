"""What the Anthropic Messages API refuses (messages modelled on its real error texts).

The web search server tool's fields are those the docs list
(https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/web-search-tool, "Tool definition"):
`type`, `name` (exactly `web_search`), `max_uses` (> 0), `allowed_domains` or
`blocked_domains` (not both), `user_location` (`type: approximate` with `city`, `region`,
`country`, `timezone`), `cache_control`; anything else is refused as Pydantic refuses it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import Invalid

__all__ = ["validate_anthropic"]

_TOP_LEVEL = frozenset(
    {
        "model", "messages", "max_tokens", "system", "tools", "tool_choice", "temperature",
        "top_p", "top_k", "stop_sequences", "stream", "metadata", "thinking", "output_config",
        "output_format", "service_tier", "container", "mcp_servers", "context_management",
    }
)  # fmt: skip
_EFFORTS = ("high", "low", "max", "medium")
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
_WEB_SEARCH_TYPES = frozenset({"web_search_20250305", "web_search_20260209"})
_WEB_SEARCH_FIELDS = frozenset(
    {"type", "name", "max_uses", "allowed_domains", "blocked_domains", "user_location",
     "cache_control", "allowed_callers"}
)  # fmt: skip
_LOCATION_FIELDS = frozenset({"type", "city", "region", "country", "timezone"})
# Block types by the role allowed to send them.
_USER_BLOCKS = frozenset({"text", "image", "document", "tool_result"})
_ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
_ALL_BLOCKS = _USER_BLOCKS | _ASSISTANT_BLOCKS


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_anthropic(headers: Mapping[str, str], body: Any) -> None:
    if not headers.get("x-api-key", "").strip():
        raise Invalid("x-api-key header is required", status=401)
    if not headers.get("anthropic-version", "").strip():
        raise Invalid("anthropic-version: header is required")
    if not isinstance(body, dict):
        raise Invalid("Input should be a valid dictionary or object to extract fields from")
    for key in body:
        if key not in _TOP_LEVEL:
            raise Invalid(f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise Invalid("max_tokens: Field required")
    if not _is_int(max_tokens):
        raise Invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    _check_sampling(body)
    _check_thinking(body, max_tokens)
    _check_system(body.get("system"))
    _check_tools(body.get("tools"), body.get("tool_choice"))
    _check_messages(body.get("messages"))
    effort = (body.get("output_config") or {}).get("effort")
    if effort is not None and effort not in _EFFORTS:
        raise Invalid(
            f"This model does not support effort level '{effort}'. "
            f"Supported levels: {', '.join(_EFFORTS)}."
        )
    if "stream" in body and not isinstance(body["stream"], bool):
        raise Invalid("stream: Input should be a valid boolean")


def _check_sampling(body: dict[str, Any]) -> None:
    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_num(temperature):
            raise Invalid("temperature: Input should be a valid number")
        if not 0 <= temperature <= 1:
            raise Invalid("temperature: Input should be less than or equal to 1")
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        raise Invalid("stop_sequences: Input should be a valid list of strings")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        raise Invalid("metadata: only `user_id` is permitted")


def _check_thinking(body: dict[str, Any], max_tokens: int) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "disabled", "adaptive"):
        raise Invalid("thinking: Input tag does not match any of 'enabled', 'disabled', 'adaptive'")
    if kind == "disabled":
        return
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not _is_int(budget):
            raise Invalid("thinking.enabled.budget_tokens: Field required")
        if budget < 1024:
            raise Invalid(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if budget >= max_tokens:
            raise Invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise Invalid("`temperature` may only be set to 1 when thinking is enabled.")
    if body.get("top_k") is not None:
        raise Invalid("`top_k` may not be set when thinking is enabled.")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        raise Invalid("Thinking may not be enabled when tool_choice forces tool use.")


def _check_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise Invalid("system: Input should be a valid string or list of text blocks")
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Invalid(f"system.{i}.type: Input should be 'text'")
        if not isinstance(block.get("text"), str) or not block["text"]:
            raise Invalid("system: text content blocks must be non-empty")


def _check_tools(tools: Any, choice: Any) -> None:
    names: set[str] = set()
    if tools is not None:
        if not isinstance(tools, list):
            raise Invalid("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise Invalid(f"tools.{i}: Input should be a valid dictionary")
            if tool.get("type") in _WEB_SEARCH_TYPES:
                _check_web_search(i, tool)
                if tool["name"] in names:
                    raise Invalid("tools: Tool names must be unique.")
                names.add(tool["name"])
                continue
            if tool.get("type", "custom") != "custom":
                continue  # other server tools carry their own shapes
            name = tool.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise Invalid(
                    f"tools.{i}.custom.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
                )
            if name in names:
                raise Invalid("tools: Tool names must be unique.")
            names.add(name)
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                raise Invalid(f"tools.{i}.custom.input_schema: Field required")
            if schema.get("type") != "object":
                raise Invalid(f"tools.{i}.custom.input_schema.type: Input should be 'object'")
            extra = set(tool) - {"name", "description", "input_schema", "cache_control", "type"}
            if extra:
                raise Invalid(
                    f"tools.{i}.custom.{sorted(extra)[0]}: Extra inputs are not permitted"
                )
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise Invalid("tool_choice: Input tag does not match any of 'auto', 'any', 'tool', 'none'")
    if kind == "tool" and not isinstance(choice.get("name"), str):
        raise Invalid("tool_choice.tool.name: Field required")


def _check_web_search(i: int, tool: dict[str, Any]) -> None:
    at = f"tools.{i}.{tool['type']}"
    extra = sorted(set(tool) - _WEB_SEARCH_FIELDS)
    if extra:
        raise Invalid(f"{at}.{extra[0]}: Extra inputs are not permitted")
    if "name" not in tool:
        raise Invalid(f"{at}.name: Field required")
    if tool["name"] != "web_search":
        raise Invalid(f"{at}.name: Input should be 'web_search'")
    uses = tool.get("max_uses")
    if uses is not None and (not _is_int(uses) or uses <= 0):
        raise Invalid(f"{at}.max_uses: Input should be greater than 0")
    for key in ("allowed_domains", "blocked_domains"):
        domains = tool.get(key)
        if domains is not None and not (
            isinstance(domains, list) and all(isinstance(d, str) for d in domains)
        ):
            raise Invalid(f"{at}.{key}: Input should be a valid list")
    if tool.get("allowed_domains") is not None and tool.get("blocked_domains") is not None:
        raise Invalid("Cannot specify both allowed_domains and blocked_domains.")
    location = tool.get("user_location")
    if location is None:
        return
    if not isinstance(location, dict):
        raise Invalid(f"{at}.user_location: Input should be a valid dictionary")
    extra = sorted(set(location) - _LOCATION_FIELDS)
    if extra:
        raise Invalid(f"{at}.user_location.{extra[0]}: Extra inputs are not permitted")
    if location.get("type") != "approximate":
        raise Invalid(f"{at}.user_location.type: Input should be 'approximate'")
    for key in ("city", "region", "country", "timezone"):
        if key in location and not isinstance(location[key], str):
            raise Invalid(f"{at}.user_location.{key}: Input should be a valid string")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise Invalid("messages: Field required")
    if not messages:
        raise Invalid("messages: at least one message is required")
    seen_tool_ids: set[str] = set()
    previous: dict[str, Any] | None = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise Invalid(f"messages.{i}: Input should be a valid dictionary")
        for key in message:
            if key not in ("role", "content"):
                raise Invalid(f"messages.{i}.{key}: Extra inputs are not permitted")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise Invalid('messages: first message must use the "user" role')
        if previous is not None and previous["role"] == role:
            # The live API merges same-role turns; a translator must not rely on that.
            raise Invalid(
                f'messages: roles must alternate between "user" and "assistant" '
                f'(messages.{i - 1} and messages.{i} are both "{role}")'
            )
        is_last = i == len(messages) - 1
        blocks = _check_content(i, role, message.get("content"), is_last)
        if role == "assistant":
            for j, block in enumerate(blocks):
                if block["type"] == "tool_use":
                    if block["id"] in seen_tool_ids:
                        raise Invalid(f"messages.{i}.content.{j}: `tool_use` ids must be unique")
                    seen_tool_ids.add(block["id"])
        _check_tool_pairing(i, previous, message, blocks)
        previous = {"role": role, "blocks": blocks}


def _check_tool_pairing(
    i: int,
    previous: dict[str, Any] | None,
    message: dict[str, Any],
    blocks: list[dict[str, Any]],
) -> None:
    """tool_result ids must answer the tool_use blocks of the message just before, all of them."""
    offered = (
        [b["id"] for b in previous["blocks"] if b["type"] == "tool_use"]
        if previous is not None and previous["role"] == "assistant"
        else []
    )
    answered = [(j, b) for j, b in enumerate(blocks) if b["type"] == "tool_result"]
    for j, block in answered:
        if block["tool_use_id"] not in offered:
            raise Invalid(
                f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` "
                f"blocks: {block['tool_use_id']}. Each `tool_result` block must have a "
                "corresponding `tool_use` block in the previous message."
            )
    if message["role"] == "user" and offered:
        missing = [t for t in offered if t not in {b["tool_use_id"] for _, b in answered}]
        if missing:
            raise Invalid(
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message."
            )


def _check_content(i: int, role: str, content: Any, is_last: bool) -> list[dict[str, Any]]:
    where = f"messages.{i}"
    if isinstance(content, str):
        if not content and not (is_last and role == "assistant"):
            raise Invalid(
                f"{where}: all messages must have non-empty content except for the optional "
                "final assistant message"
            )
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise Invalid(f"{where}.content: Input should be a valid string or list")
    if not content and not (is_last and role == "assistant"):
        raise Invalid(
            f"{where}: all messages must have non-empty content except for the optional final "
            "assistant message"
        )
    allowed = _USER_BLOCKS if role == "user" else _ASSISTANT_BLOCKS
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in _ALL_BLOCKS:
            raise Invalid(
                f"{at}: Input tag '{kind}' found using 'type' does not match any of "
                f"the expected tags: {', '.join(sorted(_ALL_BLOCKS))}"
            )
        if kind not in allowed:
            raise Invalid(f"{at}: `{kind}` blocks are not permitted in `{role}` messages")
        _check_block(at, block)
    return content


def _need_str(at: str, block: dict[str, Any], key: str, *, nonempty: bool = False) -> None:
    value = block.get(key)
    if not isinstance(value, str):
        raise Invalid(f"{at}.{key}: Field required")
    if nonempty and not value:
        raise Invalid(f"{at}.{key}: text content blocks must be non-empty")


def _check_block(at: str, block: dict[str, Any]) -> None:
    kind = block["type"]
    if kind == "text":
        _need_str(at, block, "text", nonempty=True)
    elif kind == "image":
        _check_source(at, block.get("source"), image=True)
    elif kind == "document":
        _check_source(at, block.get("source"), image=False)
    elif kind == "tool_use":
        _need_str(at, block, "id")
        _need_str(at, block, "name")
        if not isinstance(block.get("input"), dict):
            raise Invalid(f"{at}.tool_use.input: Input should be a valid dictionary")
    elif kind == "tool_result":
        _need_str(at, block, "tool_use_id")
        result = block.get("content")
        if result is not None and not isinstance(result, str):
            if not isinstance(result, list):
                raise Invalid(f"{at}.tool_result.content: Input should be a valid string or list")
            for k, inner in enumerate(result):
                inner_kind = inner.get("type") if isinstance(inner, dict) else None
                if inner_kind not in ("text", "image", "document", "search_result"):
                    raise Invalid(f"{at}.tool_result.content.{k}: invalid block type")
                _check_block(f"{at}.content.{k}", inner)
        if "is_error" in block and not isinstance(block["is_error"], bool):
            raise Invalid(f"{at}.tool_result.is_error: Input should be a valid boolean")
    elif kind == "thinking":
        _need_str(at, block, "thinking")
        _need_str(at, block, "signature")
    elif kind == "redacted_thinking":
        _need_str(at, block, "data")


def _check_source(at: str, source: Any, *, image: bool) -> None:
    kind = source.get("type") if isinstance(source, dict) else None
    allowed = ("base64", "url", "file") if image else ("base64", "text", "url", "content", "file")
    if kind not in allowed:
        raise Invalid(f"{at}.source: Input tag '{kind}' does not match any of {allowed}")
    assert isinstance(source, dict)
    if kind == "base64":
        _need_str(f"{at}.source", source, "data")
        media = source.get("media_type")
        if image and media not in _IMAGE_TYPES:
            raise Invalid(
                f"{at}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
                "'image/gif' or 'image/webp'"
            )
        if not image and media != "application/pdf":
            raise Invalid(f"{at}.source.base64.media_type: Input should be 'application/pdf'")
    elif kind == "url":
        _need_str(f"{at}.source", source, "url")
    elif kind == "text":
        _need_str(f"{at}.source", source, "data")
    elif kind == "file":
        _need_str(f"{at}.source", source, "file_id")
