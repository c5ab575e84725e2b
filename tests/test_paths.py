"""engine.paths: fast simple paths and jsonpath_ng paths give jsonpath_ng's answers."""

from __future__ import annotations

import timeit
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonpath_ng.ext.parser import parse

from turnout.engine.paths import CompiledPath, compile_path

DOC: dict[str, Any] = {
    "choices": [{"delta": {"content": "hi", "tool_calls": None}, "index": 0}],
    "x-y": {"z": 1},
    "it's": 2,
    "content": [
        {"type": "text", "text": "a"},
        {"type": "image", "url": "u"},
        {"type": "text", "text": "b"},
    ],
    "s": "string",
    "n": None,
    "t": ({"k": "tuple"},),
}


def jp_values(expr: str, node: object) -> list[object]:
    return [m.value for m in parse(expr).find(node)]


@pytest.mark.parametrize(
    ("expr", "first", "all_"),
    [
        ("$", DOC, [DOC]),
        ("@", DOC, [DOC]),
        ("$.choices[0].delta.content", "hi", ["hi"]),
        ("@.choices[0].delta.content", "hi", ["hi"]),
        ("$.choices[-1].index", 0, [0]),
        ("$['choices'][0][\"delta\"]", DOC["choices"][0]["delta"], [DOC["choices"][0]["delta"]]),
        ('$["x-y"].z', 1, [1]),
        ("$.x-y.z", 1, [1]),
        ('$["it\'s"]', 2, [2]),
        ("$.t[0].k", "tuple", ["tuple"]),
        # present null: first() cannot tell it from missing, all() can
        ("$.n", None, [None]),
        ("$.choices[0].delta.tool_calls", None, [None]),
        # missing
        ("$.nope", None, []),
        ("$.choices[1]", None, []),
        ("$.choices[-2]", None, []),
        ("$.choices.delta", None, []),  # name step on a list
        ("$.s[0]", None, []),  # strings are not indexed
        ("$.s.x", None, []),
        ("$.n.x", None, []),
        ("$.x-y[0]", None, []),  # dicts are not indexed by position
    ],
)
def test_simple(expr: str, first: object, all_: list[object]) -> None:
    p = compile_path(expr)
    assert p.is_simple
    assert p.expr == expr
    assert p.first(DOC) == first
    assert p.all(DOC) == all_
    assert jp_values(expr, DOC) == all_


@pytest.mark.parametrize(
    ("expr", "all_"),
    [
        ("$.content[*].type", ["text", "image", "text"]),
        ("$.content[?type == 'text'].text", ["a", "b"]),
        ("$.content[?(@.type == 'image')].url", ["u"]),
        ("@.content[?type == 'text'].text", ["a", "b"]),
        ("$.content[1:].type", ["image", "text"]),
        ("$..text", ["a", "b"]),
        ("$.content[*].nope", []),
        ("$.nope[*]", []),
        ('$.choices[0].delta["content","nope"]', ["hi"]),
    ],
)
def test_ext(expr: str, all_: list[object]) -> None:
    p = compile_path(expr)
    assert not p.is_simple
    assert p.all(DOC) == all_
    assert p.first(DOC) == (all_[0] if all_ else None)


def test_non_dict_roots() -> None:
    assert compile_path("$[1]").first([10, 20]) == 20
    assert compile_path("$[0]").all("abc") == []
    assert compile_path("$.a").all(None) == []
    assert compile_path("$").first(5) == 5


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("", "must start with"),
        ("a.b", "must start with"),
        ("choices[0]", "must start with"),
        ("$.", "Parse error"),
        ("$[", "Parse error"),
        ("$.a[?(@.b ==", "Parse error"),
        ('$["open', "EOF"),
        ("$.a[?type == text]", "deprecated"),  # jsonpath_ng 2.0 drops unquoted words
        ("$.a | $.b", "deprecated"),
    ],
)
def test_invalid(expr: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        compile_path(expr)
    message = str(info.value)
    assert repr(expr) in message
    assert fragment in message


def test_compiled_once_and_cached() -> None:
    assert compile_path("$.choices[0].delta") is compile_path("$.choices[0].delta")
    assert isinstance(compile_path("$..x"), CompiledPath)
    assert "fast" in repr(compile_path("$.a"))


def test_key_text_is_never_executed() -> None:
    # The fast walker is generated code: hostile keys must stay data.
    for key in ["'); import os #", '"\\n', "a\nb", "{x}", "__import__('os')"]:
        quote = "'" if "'" not in key else '"'
        expr = f"$[{quote}{key}{quote}]"
        if "\\" in key:
            continue
        p = compile_path(expr)
        assert p.is_simple
        assert p.first({key: 1}) == 1


# --- agreement with jsonpath_ng on random documents -----------------------------------------

_NAMES = ["a", "b", "c", "x-y", "_k", "A9", "true", "null"]
_QUOTED = st.text(alphabet="ab -.$[]*@?'", max_size=4)

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(alphabet="ab", max_size=2),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_NAMES) | _QUOTED, inner, max_size=5)
    ),
    max_leaves=25,
)


def _step_text(step: str | int, style: int) -> str:
    if isinstance(step, int):
        return f"[{step}]"
    if style == 0 and step in _NAMES:
        return "." + step
    if "'" in step or style == 1:
        return '["' + step + '"]'
    return "['" + step + "']"


_step = st.one_of(
    st.integers(-4, 4),
    st.sampled_from(_NAMES),
    _QUOTED,
)


@settings(max_examples=250, deadline=None)
@given(
    doc=_json,
    steps=st.lists(st.tuples(_step, st.integers(0, 2)), max_size=5),
    root=st.sampled_from("$@"),
)
def test_simple_paths_agree_with_jsonpath_ng(
    doc: object, steps: list[tuple[str | int, int]], root: str
) -> None:
    expr = root + "".join(_step_text(s, style) for s, style in steps)
    fast = compile_path(expr)
    assert fast.is_simple, expr
    slow = CompiledPath(expr, None, parse(expr))  # the same path through jsonpath_ng
    expected = jp_values(expr, doc)
    assert fast.all(doc) == expected == slow.all(doc)
    assert fast.first(doc) == (expected[0] if expected else None) == slow.first(doc)


@settings(max_examples=150, deadline=None)
@given(
    doc=_json,
    prefix=st.lists(st.sampled_from(_NAMES), max_size=2),
    op=st.sampled_from(["[*]", "..a", "[0:2]", "[?a == 1]", "[?(@.b)]", "[*].c"]),
)
def test_ext_paths_agree_with_jsonpath_ng(doc: object, prefix: list[str], op: str) -> None:
    expr = "$" + "".join("." + p for p in prefix) + op
    p = compile_path(expr)
    assert not p.is_simple
    expected = jp_values(expr, doc)
    assert p.all(doc) == expected
    assert p.first(doc) == (expected[0] if expected else None)


def test_fast_path_is_much_faster_than_jsonpath_ng() -> None:
    # Measured ~200 ns vs ~10 us; a 5x floor keeps this meaningful yet stable on a busy box.
    doc = {"choices": [{"delta": {"content": "hi"}}]}
    fast = compile_path("$.choices[0].delta").first
    slow = parse("$.choices[0].delta").find
    t_fast = min(timeit.repeat(lambda: fast(doc), number=2000, repeat=5))
    t_slow = min(timeit.repeat(lambda: slow(doc), number=2000, repeat=5))
    assert t_fast * 5 < t_slow
