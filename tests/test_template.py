"""Request templates: trees that build data; user text is data and is never re-parsed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from turnout.engine.template import TemplateProblem, compile_template, render

TRICKY = [
    "\"quoted\" and 'single'",
    "line one\nline two\r\n\ttabbed",
    "back\\slash \\n \\u0041",
    "{ braces } {{ not a template }} {% raw %}x{% endraw %} {# c #}",
    "{{ req.model }}",
    "{% for x in y %}{{ x }}{% endfor %}",
    "emoji 🦜🏳️\u200d🌈 and RTL \u202e",
    "42",
    "true",
    "null",
    "",
    "$null",
]


def _render(tree: Any, **ctx: Any) -> Any:
    return render(compile_template(tree), dict(ctx))


def _problem(tree: Any) -> TemplateProblem:
    with pytest.raises(TemplateProblem) as info:
        compile_template(tree, ("request", "body"))
    return info.value


# --- whole-leaf expressions keep native types -------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "42",
        "true",
        "null",
        "1.5",
        "[1, 2]",
        42,
        1.5,
        True,
        False,
        {"a": [1, {"b": None}]},
        [1, "2"],
    ],
)
def test_whole_leaf_keeps_native_type(value: Any) -> None:
    out = _render({"v": "{{ x }}"}, x=value)
    assert out == {"v": value}
    assert type(out["v"]) is type(value)


def test_whole_leaf_concatenation_stays_a_string() -> None:
    # NativeEnvironment would literal_eval "1" ~ "2" into the int 12.
    assert _render("{{ a ~ b }}", a="1", b="2") == "12"
    assert _render("{{ a + b }}", a="1", b="2") == "12"


def test_whole_leaf_builds_a_dict() -> None:
    out = _render({"v": "{{ {'k': x, 'n': [x, 1]} }}"}, x="42")
    assert out == {"v": {"k": "42", "n": ["42", 1]}}


def test_whole_leaf_with_surrounding_blanks_is_still_native() -> None:
    assert _render({"v": "  {{ x }}\n"}, x=7) == {"v": 7}


def test_plain_literals_pass_through() -> None:
    tree = {"s": "plain", "i": 3, "f": 0.5, "b": False, "l": ["a", 1]}
    assert _render(tree) == tree


# --- mixed strings render as text -------------------------------------------------------------


def test_mixed_string_renders_as_text() -> None:
    out = _render({"url": "{{ base }}/v1/{{ n }}"}, base="http://h", n=42)
    assert out == {"url": "http://h/v1/42"}
    assert isinstance(out["url"], str)


def test_mixed_string_with_none_renders_empty() -> None:
    assert _render("a{{ x }}b", x=None) == "ab"


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], ("t",)])
def test_container_inside_text_raises(value: Any) -> None:
    node = compile_template({"h": "Bearer {{ v }}"})
    with pytest.raises(TypeError, match="cannot be rendered inside text"):
        render(node, {"v": value})


# --- None drops, $null keeps ------------------------------------------------------------------


def test_none_drops_keys_and_list_elements() -> None:
    tree = {
        "keep": "{{ a }}",
        "gone": "{{ missing }}",
        "also_gone": "{{ none }}",
        "zero": "{{ 0 }}",
        "empty": "{{ '' }}",
        "list": ["{{ a }}", "{{ none }}", "{{ missing.deeper.still }}", 5],
    }
    assert _render(tree, a="x") == {
        "keep": "x",
        "zero": 0,
        "empty": "",
        "list": ["x", 5],
    }


def test_dollar_null_is_a_literal_null() -> None:
    out = _render({"a": "$null", "b": ["$null", 1], "c": {"d": "$null"}, "e": "{{ none }}"})
    assert out == {"a": None, "b": [None, 1], "c": {"d": None}}
    assert "a" in out
    assert "e" not in out


def test_dollar_null_inside_map() -> None:
    tree = {"$map": "{{ xs }}", "each(x)": {"v": "{{ x }}", "n": "$null"}}
    assert _render(tree, xs=[1, 2]) == [{"v": 1, "n": None}, {"v": 2, "n": None}]


# --- $map ---------------------------------------------------------------------------------------


def test_map_binds_each_element() -> None:
    tree = {"items": {"$map": "{{ xs }}", "each(x)": {"v": "{{ x.n }}", "t": "#{{ x.n }}"}}}
    out = _render(tree, xs=[{"n": 1}, {"n": "2"}])
    assert out == {"items": [{"v": 1, "t": "#1"}, {"v": "2", "t": "#2"}]}


def test_map_drops_none_elements_and_none_source() -> None:
    tree = {"$map": "{{ xs }}", "each(x)": "{{ x if x > 1 else none }}"}
    assert _render(tree, xs=[1, 2, 3]) == [2, 3]
    assert _render({"a": tree}) == {}  # undefined source drops the key


def test_nested_map_sees_outer_variable() -> None:
    tree = {
        "$map": "{{ turns }}",
        "each(t)": {"$map": "{{ t.parts }}", "each(p)": "{{ t.role }}:{{ p }}"},
    }
    out = _render(tree, turns=[{"role": "u", "parts": ["a", "b"]}, {"role": "m", "parts": []}])
    assert out == [["u:a", "u:b"], []]


def test_map_does_not_leak_the_loop_variable() -> None:
    tree = {"l": {"$map": "{{ xs }}", "each(x)": "{{ x }}"}, "after": "{{ x }}"}
    assert _render(tree, xs=[1], x="outer") == {"l": [1], "after": "outer"}


# --- $if / $switch / $merge -------------------------------------------------------------------


def test_if_then_else() -> None:
    tree = {"v": {"$if": "{{ flag }}", "then": {"yes": 1}, "else": {"no": "{{ n }}"}}}
    assert _render(tree, flag=True) == {"v": {"yes": 1}}
    assert _render(tree, flag=False, n="42") == {"v": {"no": "42"}}
    assert _render(tree, n=0) == {"v": {"no": 0}}


def test_if_without_else_drops_the_key() -> None:
    assert _render({"v": {"$if": "{{ flag }}", "then": 1}, "w": 2}, flag=[]) == {"w": 2}


def test_switch_picks_case_and_default() -> None:
    tree = {
        "$switch": "{{ kind }}",
        "text": {"type": "text", "text": "{{ t }}"},
        "image": {"type": "image"},
        "$default": {"type": "other"},
    }
    assert _render(tree, kind="text", t="hi") == {"type": "text", "text": "hi"}
    assert _render(tree, kind="image") == {"type": "image"}
    assert _render(tree, kind="audio") == {"type": "other"}


def test_switch_without_default_gives_none() -> None:
    tree = {"v": {"$switch": "{{ kind }}", "a": 1}, "w": 2}
    assert _render(tree, kind="b") == {"w": 2}


def test_merge_left_to_right_skipping_none() -> None:
    tree = {
        "$merge": [
            "{{ base }}",
            {"b": 2, "c": "{{ c }}"},
            "{{ none }}",
            {"$if": "{{ more }}", "then": {"a": "override"}},
        ]
    }
    assert _render(tree, base={"a": 1, "b": 1}, c=3, more=False) == {"a": 1, "b": 2, "c": 3}
    assert _render(tree, base={"a": 1}, more=True) == {"a": "override", "b": 2}


def test_merge_of_a_non_mapping_raises() -> None:
    node = compile_template({"$merge": ["{{ x }}"]})
    with pytest.raises(TypeError, match="not a mapping"):
        render(node, {"x": [1]})


def test_concat_splices_lists_appends_values_and_skips_none() -> None:
    tree = {
        "$concat": [
            {"$map": "{{ xs }}", "each(x)": {"n": "{{ x }}"}},
            {"$if": "{{ extra }}", "then": {"kind": "extra"}},
            "{{ none }}",
            "{{ tail }}",
        ]
    }
    got = _render(tree, xs=[1, 2], extra=True, tail=[3])
    assert got == [{"n": 1}, {"n": 2}, {"kind": "extra"}, 3]
    assert _render(tree, xs=[], extra=False, tail=None) == []


def test_concat_takes_only_a_list() -> None:
    problem = _problem({"a": {"$concat": "{{ x }}"}})
    assert "$concat takes a list" in problem.message


# --- compile-time problems name the key path --------------------------------------------------


def test_unknown_operator_names_its_path() -> None:
    problem = _problem({"a": [{"x": 1}, {"$each": "{{ y }}"}]})
    assert problem.path == ("request", "body", "a", 1, "$each")
    assert "unknown operator '$each'" in problem.message


@pytest.mark.parametrize(
    ("tree", "path", "needle"),
    [
        ({"m": {"$map": "{{ xs }}"}}, ("m",), "each(name)"),
        ({"m": {"$map": "{{ xs }}", "each(x)": 1, "other": 2}}, ("m",), "each(name)"),
        ({"m": {"$map": "{{ xs }}", "each(1x)": 1}}, ("m",), "each(name)"),
        ({"m": {"$map": "xs", "each(x)": 1}}, ("m", "$map"), "not a single"),
        ({"m": {"$map": ["{{ xs }}"], "each(x)": 1}}, ("m", "$map"), "expression"),
        ({"m": {"$map": "{{ xs ( }}", "each(x)": 1}}, ("m", "$map"), "does not parse"),
        ({"m": [{"$map": "{{ xs }}", "each(x)": "{{ x + }}"}]}, ("m", 0, "each(x)"), "parse"),
    ],
)
def test_malformed_map(tree: Any, path: tuple[Any, ...], needle: str) -> None:
    problem = _problem(tree)
    assert problem.path == ("request", "body", *path)
    assert needle in problem.message


def test_two_operators_in_one_mapping() -> None:
    problem = _problem({"a": {"$if": "{{ x }}", "$switch": "{{ y }}"}})
    assert problem.path == ("request", "body", "a")
    assert "only one of" in problem.message


def test_if_with_stray_key() -> None:
    problem = _problem({"a": {"$if": "{{ x }}", "then": 1, "otherwise": 2}})
    assert problem.path == ("request", "body", "a")
    assert "otherwise" in problem.message


def test_merge_needs_a_list() -> None:
    problem = _problem({"a": {"$merge": {"x": 1}}})
    assert problem.path == ("request", "body", "a")


def test_bad_leaf_expression_names_its_path() -> None:
    problem = _problem({"a": {"b": ["ok", "{{ 1 + }}"]}})
    assert problem.path == ("request", "body", "a", "b", 1)
    assert "does not parse" in problem.message


def test_bad_text_template_names_its_path() -> None:
    problem = _problem({"h": "Bearer {{ key "})
    assert problem.path == ("request", "body", "h")


# --- user data is data ------------------------------------------------------------------------

_BODY = {
    "whole": "{{ t }}",
    "mixed": "<{{ t }}>",
    "nested": {"parts": [{"text": "{{ t }}"}]},
    "mapped": {"$map": "{{ [t, t] }}", "each(x)": {"text": "{{ x }}"}},
    "switched": {"$switch": "{{ 'a' }}", "a": "{{ t }}"},
    "merged": {"$merge": [{"text": "{{ t }}"}]},
}
_COMPILED = compile_template(_BODY)


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_user_text_survives(text: str) -> None:
    _check_user_text(text)


@given(st.text())
@example("{{ 7 * 7 }}")
@example("{% if true %}x{% endif %}")
@example("{{ t }}")
def test_any_user_text_survives(text: str) -> None:
    _check_user_text(text)


def _check_user_text(text: str) -> None:
    out = render(_COMPILED, {"t": text})
    assert out["whole"] == text
    assert isinstance(out["whole"], str)
    assert out["mixed"] == f"<{text}>"
    assert out["nested"] == {"parts": [{"text": text}]}
    assert out["mapped"] == [{"text": text}, {"text": text}]
    assert out["switched"] == text
    assert out["merged"] == {"text": text}


@given(st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=4))
def test_user_dict_is_kept_verbatim(value: dict[str, str]) -> None:
    node = compile_template({"whole": "{{ t }}", "in": [{"v": "{{ t }}"}]})
    assert render(node, {"t": value}) == {"whole": value, "in": [{"v": value}]}
