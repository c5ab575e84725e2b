"""The web search tool of a Responses request, checked and normalised for the mappings.

OpenAI names it `web_search` (dated `web_search_2025_08_26`) or `web_search_preview` (dated
`web_search_preview_2025_03_11`); every spelling becomes one `req.web_search`:

    {index, type, allowed_domains: [str] | None, user_location: {city, region, country,
     timezone} | None, search_context_size: str | None, external_web_access: bool | None}

`index` is the tool's place in `tools`, so a mapping that cannot honour an option names
`tools[i]…`. A hosted tool entry (`req.hosted_tools`) carries `kind`: `web_search` for every
spelling, else its type, so a dialect refuses "every hosted tool but web search" with one test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turnout.engine.errors import RequestError

__all__ = ["WEB_SEARCH_TYPES", "hosted_entry", "hosted_view", "web_search_tool"]

WEB_SEARCH_TYPES = frozenset(
    {"web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11"}
)
_LOCATION = ("city", "region", "country", "timezone")
_CONTEXT_SIZES = ("low", "medium", "high")


def _bad(message: str, param: str, code: str = "invalid_type") -> RequestError:
    return RequestError(400, message, param=param, code=code)


def _object(value: Any, param: str) -> Mapping[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise _bad(f"Invalid type for '{param}': expected an object.", param)
    return value


def _location(value: Any, param: str) -> dict[str, str] | None:
    found = _object(value, param)
    if found is None:
        return None
    kind = found.get("type")
    if kind is not None and kind != "approximate":
        raise _bad(
            f"Invalid value for '{param}.type': expected 'approximate'.", f"{param}.type",
            "invalid_value",
        )  # fmt: skip
    out: dict[str, str] = {}
    for key in _LOCATION:
        part = found.get(key)
        if part is not None and not isinstance(part, str):
            raise _bad(f"Invalid type for '{param}.{key}': expected a string.", f"{param}.{key}")
        if part:
            out[key] = part
    return out or None


def _domains(filters: Any, param: str) -> list[str] | None:
    found = _object(filters, param)
    if found is None:
        return None
    domains = found.get("allowed_domains")
    where = f"{param}.allowed_domains"
    if domains is None:
        return None
    if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
        raise _bad(f"Invalid type for '{where}': expected an array of strings.", where)
    return [d for d in domains if d] or None


def web_search_tool(tool: Mapping[str, Any], index: int, where: str) -> dict[str, Any]:
    """`req.web_search` for the tool at `tools[index]` (`where`); 400 naming a wrong field."""
    size = tool.get("search_context_size")
    if size is not None and size not in _CONTEXT_SIZES:
        raise _bad(
            f"Invalid value for '{where}.search_context_size': expected one of 'low', "
            "'medium', 'high'.",
            f"{where}.search_context_size",
            "invalid_value",
        )
    access = tool.get("external_web_access")
    if access is not None and not isinstance(access, bool):
        raise _bad(
            f"Invalid type for '{where}.external_web_access': expected a boolean.",
            f"{where}.external_web_access",
        )
    return {
        "index": index,
        "type": tool["type"],
        "allowed_domains": _domains(tool.get("filters"), f"{where}.filters"),
        "user_location": _location(tool.get("user_location"), f"{where}.user_location"),
        "search_context_size": size,
        "external_web_access": access,
    }


def hosted_entry(tool: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A hosted tool as `req.hosted_tools` holds it: as sent, with its `index` and `kind`."""
    kind = "web_search" if tool["type"] in WEB_SEARCH_TYPES else tool["type"]
    return {**tool, "index": index, "kind": kind}


def hosted_view(hosted: list[dict[str, Any]], web_search: dict[str, Any] | None) -> dict[str, Any]:
    """The `req` fields that follow from the hosted tools (also when an alias drops some)."""
    kept = {t["index"] for t in hosted}
    return {
        "hosted_tools": hosted,
        "image_tool": next((t for t in hosted if t.get("type") == "image_generation"), None),
        "web_search": web_search
        if web_search is not None and web_search["index"] in kept
        else None,
    }
