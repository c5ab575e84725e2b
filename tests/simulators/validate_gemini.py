"""What the Gemini API (generativelanguage v1beta) refuses.

Google parses the body as proto3 JSON, which accepts both lowerCamel and the original
snake_case field names (`parameters_json_schema` appears in a recorded request), so every name
check normalises snake_case to camelCase first.

Google Search grounding (`googleSearch`, https://ai.google.dev/api/caching#GoogleSearch) takes
only `timeRangeFilter` (and on Vertex `excludeDomains`); beside function declarations Gemini 2.x
answers 400 "Tool use with function calling is unsupported by the model." (Gemini 3 wants
`toolConfig.includeServerSideToolInvocations`; reported in withceleste/celeste-python#197 and
owndev/Open-WebUI-Functions#159).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import Invalid

__all__ = ["validate_gemini"]

_TOP_LEVEL = frozenset(
    {
        "model", "contents", "systemInstruction", "tools", "toolConfig", "safetySettings",
        "generationConfig", "cachedContent",
    }
)  # fmt: skip
_GENERATION_CONFIG = frozenset(
    {
        "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
        "responseModalities", "candidateCount", "maxOutputTokens", "temperature", "topP", "topK",
        "seed", "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs",
        "enableEnhancedCivicAnswers", "speechConfig", "thinkingConfig", "imageConfig",
        "mediaResolution",
    }
)  # fmt: skip
_THINKING_CONFIG = frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"})
_PART_DATA = frozenset(
    {
        "text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
        "codeExecutionResult",
    }
)  # fmt: skip
_PART_META = frozenset(
    {"thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"}
)
_TOOL_KINDS = frozenset(
    {
        "functionDeclarations", "googleSearch", "googleSearchRetrieval", "codeExecution",
        "urlContext", "computerUse", "fileSearch", "googleMaps",
    }
)  # fmt: skip
_DECLARATION = frozenset(
    {
        "name",
        "description",
        "parameters",
        "parametersJsonSchema",
        "response",
        "responseJsonSchema",
        "behavior",
    }
)
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_MODES = frozenset({"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"})
_GOOGLE_SEARCH = frozenset({"timeRangeFilter", "excludeDomains"})


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _fields(obj: dict[str, Any], allowed: frozenset[str], where: str) -> dict[str, Any]:
    """Reject unknown names the way Google does; return the object with camelCase keys."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _camel(key)
        if name not in allowed:
            at = f" at '{where}'" if where else ""
            raise Invalid(
                f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.'
            )
        out[name] = value
    return out


def _bad(where: str, message: str) -> Invalid:
    return Invalid(f"* GenerateContentRequest.{where}: {message}\n")


def validate_gemini(headers: Mapping[str, str], query: Mapping[str, str], body: Any) -> None:
    if not (headers.get("x-goog-api-key", "").strip() or query.get("key", "").strip()):
        # The brief asks for 401; live Gemini answers a key-less call with 403 PERMISSION_DENIED.
        raise Invalid(
            "Method doesn't allow unregistered callers (callers without established identity)."
            " Please use API Key or other form of API consumer identity to call this API.",
            status=401,
        )
    if not isinstance(body, dict):
        raise Invalid("Invalid JSON payload received. Expected an object.")
    request = _fields(body, _TOP_LEVEL, "")
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _bad("contents", "contents is not specified")
    for i, content in enumerate(contents):
        _check_content(f"contents[{i}]", content, roles=("user", "model"))
        _check_call_turn(i, contents)
    system = request.get("systemInstruction")
    if system is not None:
        if not isinstance(system, dict) or not system.get("parts"):
            raise _bad("system_instruction.parts", "contents.parts must not be empty.")
        _check_content("system_instruction", system, roles=("user", "model", "system", ""))
    config = request.get("generationConfig")
    if config is not None:
        if not isinstance(config, dict):
            raise Invalid("Invalid value at 'generation_config': expected an object")
        config = _fields(config, _GENERATION_CONFIG, "generation_config")
        thinking = config.get("thinkingConfig")
        if thinking is not None:
            _fields(thinking, _THINKING_CONFIG, "generation_config.thinking_config")
    _check_tools(request.get("tools"))
    _check_tool_config(request.get("toolConfig"))


_CALL_KEYS = {"functionCall", "function_call"}


def _check_call_turn(i: int, contents: list[Any]) -> None:
    """A model turn with a function call follows a user turn (text or function responses).

    Gemini's 400 for a history that opens with a call, or has one after another model turn
    (google-gemini/gemini-cli#11814, lobehub/lobehub#10049).
    """
    content = contents[i]
    if content.get("role") != "model":
        return
    calls = [p for p in content.get("parts") or [] if isinstance(p, dict) and _CALL_KEYS & set(p)]
    if not calls:
        return
    if i == 0 or contents[i - 1].get("role", "user") not in ("user", ""):
        raise Invalid(
            "Please ensure that function call turn comes immediately after a user turn or after "
            "a function response turn.",
            kind="INVALID_ARGUMENT",
        )


def _check_content(where: str, content: Any, roles: tuple[str, ...]) -> None:
    if not isinstance(content, dict):
        raise Invalid(f"Invalid value at '{where}': expected an object")
    content = _fields(content, frozenset({"role", "parts"}), where)
    role = content.get("role", "")
    if role and role not in roles:
        raise Invalid(
            f"Please use a valid role: {', '.join(r for r in roles if r)}.", kind="INVALID_ARGUMENT"
        )
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _bad(f"{where}.parts", "contents.parts must not be empty.")
    for j, part in enumerate(parts):
        _check_part(f"{where}.parts[{j}]", part)


def _check_part(where: str, part: Any) -> None:
    if not isinstance(part, dict):
        raise Invalid(f"Invalid value at '{where}': expected an object")
    part = _fields(part, _PART_DATA | _PART_META, where)
    data = [k for k in part if k in _PART_DATA]
    if not data:
        raise _bad(f"{where}.data", "required oneof field 'data' must have one initialized field")
    if len(data) > 1:
        raise Invalid(
            f"Invalid value at '{where}' (oneof), oneof field 'data' is already set. "
            f"Cannot set '{data[1]}'"
        )
    kind, value = data[0], part[data[0]]
    if kind == "text" and not isinstance(value, str):
        raise Invalid(f"Invalid value at '{where}.text' (TYPE_STRING)")
    if kind in ("functionCall", "functionResponse"):
        snake = "function_call" if kind == "functionCall" else "function_response"
        if not isinstance(value, dict):
            raise Invalid(f"Invalid value at '{where}.{snake}': expected an object")
        if not isinstance(value.get("name"), str) or not value["name"]:
            raise _bad(f"{where}.{snake}.name", "Name cannot be empty.")
        payload_key = "args" if kind == "functionCall" else "response"
        payload = value.get(payload_key)
        if payload is not None and not isinstance(payload, dict):
            raise Invalid(
                f"Invalid value at '{where}.{snake}.{payload_key}' "
                f"(type.googleapis.com/google.protobuf.Struct), {_short(payload)}"
            )
    if kind == "inlineData" and not (
        isinstance(value, dict)
        and value.get("mimeType", value.get("mime_type"))
        and isinstance(value.get("data"), str)
    ):
        raise _bad(f"{where}.inline_data", "mime_type and data are required")
    if kind == "fileData" and not (
        isinstance(value, dict) and value.get("fileUri", value.get("file_uri"))
    ):
        raise _bad(f"{where}.file_data.file_uri", "file_uri is required")


def _short(value: Any) -> str:
    text = f'"{value}"' if isinstance(value, str) else str(value)
    return text[:60]


def _check_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise Invalid("Invalid value at 'tools': expected a list")
    kinds: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise Invalid(f"Invalid value at 'tools[{i}]': expected an object")
        tool = _fields(tool, _TOOL_KINDS, f"tools[{i}]")
        kinds.update(tool)
        search = tool.get("googleSearch")
        if search is not None:
            if not isinstance(search, dict):
                raise Invalid(f"Invalid value at 'tools[{i}].google_search': expected an object")
            _fields(search, _GOOGLE_SEARCH, f"tools[{i}].google_search")
        for j, decl in enumerate(tool.get("functionDeclarations") or []):
            where = f"tools[{i}].function_declarations[{j}]"
            if not isinstance(decl, dict):
                raise Invalid(f"Invalid value at '{where}': expected an object")
            decl = _fields(decl, _DECLARATION, where)
            name = decl.get("name")
            if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
                raise _bad(
                    f"{where}.name",
                    "Invalid function name. Must start with a letter or an underscore. Must be "
                    "a-z, A-Z, 0-9, or contain underscores, dots, colons and dashes, with a "
                    "maximum length of 64.",
                )
            if "parameters" in decl and "parametersJsonSchema" in decl:
                raise _bad(
                    f"{where}.parameters",
                    "parameters and parameters_json_schema cannot both be set",
                )
    if "googleSearch" in kinds and "functionDeclarations" in kinds:
        raise Invalid(
            "Tool use with function calling is unsupported by the model.", kind="INVALID_ARGUMENT"
        )


def _check_tool_config(config: Any) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise Invalid("Invalid value at 'tool_config': expected an object")
    config = _fields(config, frozenset({"functionCallingConfig", "retrievalConfig"}), "tool_config")
    calling = config.get("functionCallingConfig")
    if calling is None:
        return
    calling = _fields(
        calling, frozenset({"mode", "allowedFunctionNames"}), "tool_config.function_calling_config"
    )
    mode = calling.get("mode")
    if mode is not None and mode not in _MODES:
        raise Invalid(
            "Invalid value at 'tool_config.function_calling_config.mode' "
            f"(type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode),"
            f' "{mode}"'
        )
