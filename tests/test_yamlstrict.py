"""The strict YAML loader: YAML 1.1 surprises stay strings, duplicates fail, marks are right."""

from __future__ import annotations

import pytest
import yaml

from turnout.engine.diagnostics import Problem
from turnout.engine.errors import MappingError
from turnout.engine.yamlstrict import load_yaml


def _problems(text: str) -> list[Problem]:
    with pytest.raises(MappingError) as info:
        load_yaml(text, "f.yaml")
    return info.value.problems


def test_dates_stay_strings() -> None:
    data = load_yaml("v: 2023-06-01\nt: 2001-12-14t21:59:43.10-05:00\n", "f.yaml").data
    assert data == {"v": "2023-06-01", "t": "2001-12-14t21:59:43.10-05:00"}


@pytest.mark.parametrize("word", ["on", "off", "yes", "no", "y", "n", "Yes", "NO", "On"])
def test_yaml11_booleans_stay_strings(word: str) -> None:
    assert load_yaml(f"a: {word}\n{word}: 1\n", "f.yaml").data == {"a": word, word: 1}


@pytest.mark.parametrize(("word", "value"), [("true", True), ("False", False), ("TRUE", True)])
def test_only_true_false_are_booleans(word: str, value: bool) -> None:
    assert load_yaml(f"a: {word}", "f.yaml").data["a"] is value


def test_numbers() -> None:
    data = load_yaml("a: [1, -2, 1.5, 1e3, 0x1f, 0o17, 1:30, 0123, .inf]", "f.yaml").data
    assert data["a"][:6] == [1, -2, 1.5, 1000.0, 31, 15]
    assert data["a"][6:8] == ["1:30", "0123"]  # no base-60, no leading-zero octal
    assert data["a"][8] == float("inf")


def test_global_safe_loader_untouched() -> None:
    load_yaml("a: yes", "f.yaml")
    assert yaml.safe_load("a: yes") == {"a": True}


def test_duplicate_keys_name_both_lines() -> None:
    problems = _problems("a: 1\nb:\n  c: 1\n  d: 2\n  c: 3\n")
    assert [str(p) for p in problems] == [
        "f.yaml:5:3: b.c: duplicate key 'c' (first at line 3, again at line 5)"
    ]


def test_duplicate_keys_all_reported_in_order() -> None:
    problems = _problems("x: 1\nx: 2\nl:\n  - {k: 1, k: 2}\n")
    assert [(p.line, p.key_path) for p in problems] == [(2, "x"), (4, "l[0].k")]


def test_anchors_aliases_and_merge_keys() -> None:
    text = "base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\nlist: [*b]\n"
    loaded = load_yaml(text, "f.yaml")
    assert loaded.data["use"] == {"x": 1, "y": 3}  # overriding a merged key is not a duplicate
    assert loaded.data["list"] == [{"x": 1, "y": 2}]
    assert loaded.position(("use", "y")) == (4, 3)
    assert loaded.position(("use", "x")) == (1, 11)  # where the merged value is written


def test_recursive_alias_rejected() -> None:
    (problem,) = _problems("a: &x [1, *x]\n")
    assert problem.key_path == "a[1]"
    assert "recursive" in problem.message


def test_marks_are_one_based_key_positions() -> None:
    text = "# comment\nrequest:\n  body:\n    messages:\n      - role: user\n        n: 2\n"
    loaded = load_yaml(text, "f.yaml")
    assert loaded.marks[("request",)] == (2, 1)
    assert loaded.marks[("request", "body", "messages")] == (4, 5)
    assert loaded.marks[("request", "body", "messages", 0)] == (5, 9)
    assert loaded.marks[("request", "body", "messages", 0, "n")] == (6, 9)


def test_position_falls_back_to_nearest_ancestor() -> None:
    loaded = load_yaml("a:\n  b:\n    c: 1\n", "f.yaml")
    assert loaded.position(("a", "b", "missing", 3)) == (2, 3)
    assert loaded.position(("nope",)) == (1, 1)
    assert loaded.problem(("a", "b", "x"), "bad").line == 2


def test_syntax_error_carries_yaml_mark() -> None:
    (problem,) = _problems("a: 1\nb: c: d\n")
    assert (problem.file, problem.line, problem.col) == ("f.yaml", 2, 5)
    assert str(problem).startswith("f.yaml:2:5: <root>: mapping values are not allowed here")


def test_unclosed_flow_sequence_points_at_it() -> None:
    (problem,) = _problems("a: [1, 2\nb: 3\n")
    assert problem.line >= 2
    assert problem.hint is not None and "line 1" in problem.hint


def test_non_plain_tags_rejected() -> None:
    (problem,) = _problems("a: !!binary aGk=\n")
    assert (problem.line, problem.col) == (1, 4)
    assert "constructor" in problem.message


def test_control_character_located() -> None:
    (problem,) = _problems("a: 1\nb: x\x07\n")
    assert (problem.line, problem.col) == (2, 5)


def test_multiple_documents_rejected() -> None:
    (problem,) = _problems("a: 1\n---\nb: 2\n")
    assert problem.line == 2


def test_empty_document() -> None:
    loaded = load_yaml("# nothing\n", "f.yaml")
    assert loaded.data is None
    assert loaded.position(("x",)) == (1, 1)
