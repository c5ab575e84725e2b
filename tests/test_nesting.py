"""engine.nesting: the path to JSON nested past the limit, found without recursion."""

from __future__ import annotations

from typing import Any

from turnout.engine.nesting import MAX_DEPTH, deep_path, param_of


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for i in range(levels):
        value = {"a": value} if i % 2 else [value]
    return value


def test_the_value_itself_is_level_one() -> None:
    assert deep_path(_nested(MAX_DEPTH)) is None
    assert deep_path(_nested(MAX_DEPTH + 1)) is not None
    assert deep_path({}, limit=1) is None
    assert deep_path({"a": []}, limit=1) == ["a"]


def test_the_path_leads_to_the_first_container_past_the_limit() -> None:
    body = {"model": "m", "tools": [{"type": "function", "parameters": {"x": {"y": {}}}}]}
    assert deep_path(body, limit=5) == ["tools", 0, "parameters", "x", "y"]
    assert deep_path(body, limit=6) is None


def test_scalars_never_count() -> None:
    assert deep_path("x" * 10_000) is None
    assert deep_path([1, "a", None, 2.5, True], limit=1) is None


def test_far_deeper_than_python_recursion_is_fine() -> None:
    assert deep_path(_nested(50_000)) is not None


def test_param_names_three_segments_in_openai_style() -> None:
    assert param_of(["tools", 0, "parameters", "a", "a"]) == "tools[0].parameters"
    assert param_of(["text", "format", "schema", "a"]) == "text.format.schema"
    assert param_of(["input", 0, 0, 0]) == "input[0][0]"
    assert param_of(["metadata"]) == "metadata"
