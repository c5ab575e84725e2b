"""What Bedrock Converse / ConverseStream refuses.

First the service model's input shape (botocore's `ParamValidator`: unknown members, missing
required members, wrong types, tagged unions with more or less than one key, list/string minimums),
then the rules the real service enforces beyond the shape (messages texts modelled on its errors).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import botocore.session
from botocore.model import Shape
from botocore.validate import ParamValidator

from .errors import Invalid

__all__ = ["converse_input_shape", "validate_bedrock"]

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ROLES = ("user", "assistant")


@cache
def converse_input_shape(stream: bool) -> Shape:
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("ConverseStream" if stream else "Converse").input_shape
    assert shape is not None
    return shape


def _invalid(message: str) -> Invalid:
    return Invalid(message, kind="ValidationException")


def validate_bedrock(model_id: str, body: Any, stream: bool) -> None:
    if not isinstance(body, dict):
        raise _invalid("Malformed input request, please reformat your input and try again.")
    if "modelId" in body:  # a URI member: on the wire it lives only in the path
        raise _invalid('Unknown parameter in input: "modelId" (it belongs in the URL path)')
    report = ParamValidator().validate({"modelId": model_id, **body}, converse_input_shape(stream))
    if report.has_errors():
        lines = report.generate_report().splitlines()
        raise _invalid(f"{len(lines)} validation error(s) detected: " + " ".join(lines))
    _check_inference(body.get("inferenceConfig") or {})
    tool_names = _check_tools(body.get("toolConfig"))
    for i, block in enumerate(body.get("system") or []):
        if "text" in block and not block["text"].strip():
            raise _invalid(
                f"The text field in the SystemContentBlock object at system.{i} is blank. "
                "Add text to the text field, and try again."
            )
    _check_messages(body.get("messages"), tool_names)


def _check_inference(config: dict[str, Any]) -> None:
    for key in ("temperature", "topP"):
        value = config.get(key)
        if value is not None and not 0 <= value <= 1:
            raise _invalid(
                f"1 validation error detected: Value '{value}' at 'inferenceConfig.{key}' failed "
                "to satisfy constraint: Member must have value less than or equal to 1"
            )
    if config.get("maxTokens") is not None and config["maxTokens"] < 1:
        raise _invalid(
            "1 validation error detected: Value at 'inferenceConfig.maxTokens' failed to satisfy "
            "constraint: Member must have value greater than or equal to 1"
        )


def _check_tools(config: dict[str, Any] | None) -> set[str] | None:
    """Tool names declared, or None without a toolConfig."""
    if config is None:
        return None
    names: set[str] = set()
    for i, tool in enumerate(config.get("tools") or []):
        spec = tool.get("toolSpec")
        if spec is None:
            continue
        name = spec["name"]
        if not _TOOL_NAME.match(name):
            raise _invalid(
                f"1 validation error detected: Value '{name}' at "
                f"'toolConfig.tools.{i + 1}.member.toolSpec.name' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+"
            )
        if name in names:
            raise _invalid(f"The toolConfig field contains duplicate tool names: {name}.")
        names.add(name)
    if not config.get("tools"):
        raise _invalid(
            "1 validation error detected: Value '[]' at 'toolConfig.tools' failed to satisfy "
            "constraint: Member must have length greater than or equal to 1"
        )
    choice = (config.get("toolChoice") or {}).get("tool")
    if choice is not None and choice.get("name") not in names:
        raise _invalid(f"The tool {choice.get('name')} in toolChoice is not defined in tools.")
    return names


def _check_messages(messages: Any, tool_names: set[str] | None) -> None:
    if not messages:
        raise _invalid(
            "A conversation must start with a user message. Try again with a conversation that "
            "starts with a user message."
        )
    seen_ids: set[str] = set()
    previous_calls: list[str] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if role not in _ROLES:
            raise _invalid(
                f"1 validation error detected: Value '{role}' at 'messages.{i + 1}.member.role' "
                "failed to satisfy constraint: Member must satisfy enum value set: "
                "[user, assistant]"
            )
        if i == 0 and role != "user":
            raise _invalid(
                "A conversation must start with a user message. Try again with a conversation "
                "that starts with a user message."
            )
        if i and role == messages[i - 1]["role"]:
            raise _invalid(
                "A conversation must alternate between user and assistant roles. Make sure the "
                "conversation alternates between user and assistant roles and try again."
            )
        content = message["content"]
        if not content:
            raise _invalid(
                f"The content field in the Message object at messages.{i} is empty. Add a "
                "ContentBlock object to the content field and try again."
            )
        calls: list[str] = []
        results: list[str] = []
        for j, block in enumerate(content):
            where = f"messages.{i}.content.{j}"
            if "text" in block and not block["text"].strip():
                raise _invalid(
                    f"The text field in the ContentBlock object at {where} is blank. Add text "
                    "to the text field, and try again."
                )
            if ("toolUse" in block or "toolResult" in block) and tool_names is None:
                raise _invalid(
                    "The toolConfig field must be defined when using toolUse and toolResult "
                    "content blocks."
                )
            if "toolUse" in block:
                if role != "assistant":
                    raise _invalid(f"{where}: toolUse blocks are only allowed in assistant turns.")
                call_id = block["toolUse"]["toolUseId"]
                if call_id in seen_ids:  # anchor 9: a replayed call re-added to the history
                    raise _invalid(f"{where}: `tool_use` ids must be unique: {call_id}")
                seen_ids.add(call_id)
                calls.append(call_id)
            if "toolResult" in block:
                if role != "user":
                    raise _invalid(f"{where}: toolResult blocks are only allowed in user turns.")
                results.append(block["toolResult"]["toolUseId"])
            if "reasoningContent" in block and role != "assistant":
                raise _invalid(f"{where}: reasoningContent is only allowed in assistant turns.")
        if role == "user":
            _match_results(i, results, previous_calls)
        previous_calls = calls


def _match_results(i: int, results: list[str], calls: list[str]) -> None:
    where = f"messages.{i}.content"
    if len(results) > len(calls):
        raise _invalid(
            f"The number of toolResult blocks at {where} exceeds the number of toolUse blocks "
            "of previous turn."
        )
    for result in results:
        if result not in calls:
            raise _invalid(
                f"{where}: unexpected `toolUseId` found in `toolResult` blocks: {result}. Each "
                "`toolResult` block must have a corresponding `toolUse` block in the previous "
                "message."
            )
    if len(set(results)) != len(results):
        raise _invalid(f"{where}: duplicate toolUseId in toolResult blocks.")
    missing = [c for c in calls if c not in results]
    if missing:
        raise _invalid(
            f"Expected toolResult blocks at {where} for the following Ids: {', '.join(missing)}"
        )
