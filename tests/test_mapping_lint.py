"""Mapping lint: shipped mappings are clean; broken ones fail with file:line:col: key.path: why."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from turnout.engine.diagnostics import Problem
from turnout.engine.errors import MappingError
from turnout.engine.registry import DEFAULT_MAPPINGS_DIR, MappingRegistry, lint_dir

FORMAT = re.compile(r"^[^:]+:\d+:\d+: \S+: .+")

# A small self-contained mapping; every case below changes one line of it.
BASE = """\
version: 1
description: lint fixture
request:
  url: "{{ api_base }}/v1/chat"
  headers:
    authorization: "Bearer {{ credentials.api_key }}"
  rejects:
    openai_only:
      when: "{{ req.prompt or req.context_management or req.moderation }}"
      param: prompt
      message: OpenAI's own fields
  body:
    model: "{{ model }}"
    max_tokens: "{{ req.max_output_tokens }}"
    messages:
      $map: "{{ req.entries }}"
      each(e): {role: "{{ e.role }}", content: "{{ e.text }}"}
response:
  - {op: start, id: $.id}
  - {op: text_delta, text: $.text}
  - {op: finish, reason: $.stop}
stream:
  framing: sse
  key: [$.type]
  events:
    delta: {op: text_delta, text: $.delta.text}
    stop: {op: finish, reason: $.reason}
  ignore: [ping]
finish_reasons:
  stop: completed
  length: incomplete/max_output_tokens
errors:
  code: $.error.code
  message: $.error.message
"""


def _line_of(text: str, needle: str) -> int:
    hits = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} must occur on exactly one line, found {hits}"
    return hits[0]


def _lint_one(tmp_path: Path, text: str, name: str = "prov.yaml") -> list[Problem]:
    (tmp_path / name).write_text(text, encoding="utf-8")
    count, problems = lint_dir(tmp_path)
    assert count >= 1
    for problem in problems:
        assert FORMAT.match(str(problem)), str(problem)
    return problems


def _only_problem(tmp_path: Path, text: str) -> Problem:
    problems = _lint_one(tmp_path, text)
    assert len(problems) == 1, [str(p) for p in problems]
    problem = problems[0]
    assert problem.file.endswith("prov.yaml")
    assert str(problem).startswith(f"{problem.file}:{problem.line}:{problem.col}: ")
    return problem


def _replace(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


# --- the shipped mappings --------------------------------------------------------------------


def test_shipped_mappings_lint_clean() -> None:
    count, problems = lint_dir(DEFAULT_MAPPINGS_DIR)
    assert [str(p) for p in problems] == []
    assert count == len(list(DEFAULT_MAPPINGS_DIR.glob("[!_]*.yaml")))
    assert count > 0


def test_shipped_mappings_load() -> None:
    registry = MappingRegistry.load()
    files = sorted(p.stem for p in DEFAULT_MAPPINGS_DIR.glob("[!_]*.yaml"))
    assert registry.providers == files
    assert len(registry) == len(files)
    for provider in ("anthropic", "gemini", "openai", "openai_chat"):
        assert provider in registry
        mapping = registry.get(provider)
        assert mapping is not None
        assert mapping.provider == provider
    assert registry.get("nope") is None
    assert registry.suggest("anthropc") == "anthropic"


def test_fixture_itself_is_clean(tmp_path: Path) -> None:
    assert _lint_one(tmp_path, BASE) == []
    assert MappingRegistry.load(tmp_path).providers == ["prov"]


# --- one broken thing, one problem, at the right line -----------------------------------------


def test_yaml_syntax_error(tmp_path: Path) -> None:
    text = _replace('  url: "{{ api_base }}/v1/chat"', "  url: [unclosed\n  oops: 1")
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "oops: 1")
    assert "expected" in problem.message
    assert str(problem.line - 1) in (problem.hint or "")  # where the flow sequence started


def test_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    text = _replace("    messages:\n", "    model: again\n    messages:\n")
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "model: again")
    assert problem.key_path == "request.body.model"
    first = _line_of(text, 'model: "{{ model }}"')
    assert f"first at line {first}" in problem.message
    assert f"again at line {problem.line}" in problem.message


def test_unknown_op_with_did_you_mean(tmp_path: Path) -> None:
    text = _replace("delta: {op: text_delta,", "delta: {op: text_delt,")
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "op: text_delt,")
    assert problem.key_path == "stream.events.delta.op"
    assert "unknown op 'text_delt'" in problem.message
    assert problem.hint == "did you mean 'text_delta'?"
    assert str(problem).endswith("(did you mean 'text_delta'?)")


def test_unknown_op_in_response_rules(tmp_path: Path) -> None:
    text = _replace("  - {op: start, id: $.id}", "  - {op: begin, id: $.id}")
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "op: begin")
    assert problem.key_path == "response[0].op"


def test_op_with_a_field_it_does_not_have(tmp_path: Path) -> None:
    text = _replace(
        "stop: {op: finish, reason: $.reason}", "stop: {op: finish, reason: $.r, why: 1}"
    )
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "why: 1")
    assert problem.key_path == "stream.events.stop.why"
    assert "op 'finish' has no field 'why'" in problem.message
    assert "reason" in (problem.hint or "")


def test_op_missing_a_required_field(tmp_path: Path) -> None:
    text = _replace("delta: {op: text_delta, text: $.delta.text}", "delta: {op: text_delta}")
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "delta: {op: text_delta}")
    assert problem.key_path == "stream.events.delta"
    assert "needs text" in problem.message


@pytest.mark.parametrize("path", ["$.stop[", "$.a[?x ==]", '$.a."'])
def test_jsonpath_that_does_not_parse(tmp_path: Path, path: str) -> None:
    text = _replace("reason: $.stop}", f"reason: '{path}'}}")
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "op: finish, reason: '$")
    assert problem.key_path == "response[2].reason"
    assert "JSONPath" in problem.message


def test_expression_that_does_not_parse(tmp_path: Path) -> None:
    text = _replace('model: "{{ model }}"', 'model: "{{ model + }}"')
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "model + ")
    assert problem.key_path == "request.body.model"
    assert "does not parse" in problem.message


def test_expression_in_a_rule_that_does_not_parse(tmp_path: Path) -> None:
    text = _replace("  - {op: start, id: $.id}", '  - {op: start, id: "{{ d.id ) }}"}')
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "d.id )")
    assert problem.key_path == "response[0].id"


def test_req_field_typo_is_caught_with_a_suggestion(tmp_path: Path) -> None:
    text = _replace("req.max_output_tokens", "req.max_output_tokns")
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "max_output_tokns")
    assert problem.key_path == "request.body.max_tokens"
    assert "req.max_output_tokns" in problem.message
    assert problem.hint == "did you mean req.max_output_tokens?"


def test_req_field_typo_by_subscript(tmp_path: Path) -> None:
    text = _replace('"{{ req.entries }}"', "\"{{ req['entires'] }}\"")
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "entires")
    assert problem.hint == "did you mean req.entries?"


def test_unknown_framing(tmp_path: Path) -> None:
    text = _replace("framing: sse", "framing: websocket")
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "framing: websocket")
    assert problem.key_path == "stream.framing"
    assert "unknown framing 'websocket'" in problem.message
    assert "sse" in (problem.hint or "")


def test_unknown_finish_status(tmp_path: Path) -> None:
    text = _replace("stop: completed", "stop: complete")
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "stop: complete")
    assert problem.key_path == "finish_reasons.stop"
    assert "unknown status 'complete'" in problem.message


def test_extends_a_missing_dialect(tmp_path: Path) -> None:
    text = "version: 1\nextends: _dialects/nowhere\n"
    problem = _only_problem(tmp_path, text)
    assert (problem.line, problem.key_path) == (2, "extends")
    assert "_dialects/nowhere" in problem.message


def test_extends_typo_suggests_the_dialect(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_MAPPINGS_DIR / "_dialects", tmp_path / "_dialects")
    text = "# a provider\nversion: 1\nextends: _dialects/openai_chta\n"
    problem = _only_problem(tmp_path, text)
    assert (problem.line, problem.key_path) == (3, "extends")
    assert problem.hint == "did you mean '_dialects/openai_chat'?"


@pytest.mark.parametrize("section", ["request", "response", "stream", "finish_reasons"])
def test_missing_required_section(tmp_path: Path, section: str) -> None:
    lines = BASE.splitlines(keepends=True)
    start = _line_of(BASE, f"{section}:") - 1
    end = start + 1
    while end < len(lines) and lines[end].startswith(" "):
        end += 1
    if section == "response":
        while end < len(lines) and lines[end].startswith("  -"):
            end += 1
    text = "".join(lines[:start] + lines[end:])
    problems = _lint_one(tmp_path, text)
    assert [p.message for p in problems] == [f"missing required section {section!r}"]
    assert problems[0].line == 1


def test_unknown_top_level_key_from_the_schema(tmp_path: Path) -> None:
    text = _replace("description: lint fixture", "descripton: lint fixture")
    problem = _only_problem(tmp_path, text)
    assert problem.line == _line_of(text, "descripton")
    assert problem.key_path == "descripton"


def test_unknown_template_operator_in_the_body(tmp_path: Path) -> None:
    text = _replace("      $map:", "      $mapp:")
    problems = _lint_one(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].key_path == "request.body.messages.$mapp"
    assert problems[0].line == _line_of(text, "$mapp")


def test_problem_in_a_provider_over_a_dialect_points_at_the_provider(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_MAPPINGS_DIR / "_dialects", tmp_path / "_dialects")
    text = (
        "version: 1\n"
        "extends: _dialects/openai_chat\n"
        "provider: {api_base: 'http://x', api_key_env: X_KEY}\n"
        "request:\n"
        "  body:\n"
        '    seed: "{{ req.sed }}"\n'
    )
    problem = _only_problem(tmp_path, text)
    assert (problem.line, problem.key_path) == (6, "request.body.seed")
    assert "req.sed is not a field" in problem.message


def test_several_problems_in_one_file_are_all_reported(tmp_path: Path) -> None:
    text = BASE.replace("framing: sse", "framing: websocket").replace(
        "stop: completed", "stop: done"
    )
    problems = _lint_one(tmp_path, text)
    assert sorted(p.key_path for p in problems) == ["finish_reasons.stop", "stream.framing"]


# --- MappingRegistry.load on a broken folder --------------------------------------------------


def test_registry_load_raises_with_each_problem_once(tmp_path: Path) -> None:
    dialects = tmp_path / "_dialects"
    dialects.mkdir()
    broken_dialect = BASE.replace("framing: sse", "framing: websocket")
    (dialects / "shared.yaml").write_text(broken_dialect, encoding="utf-8")
    for name in ("one", "two", "three"):
        (tmp_path / f"{name}.yaml").write_text(
            "version: 1\nextends: _dialects/shared\n", encoding="utf-8"
        )
    (tmp_path / "solo.yaml").write_text(BASE.replace("stop: completed", "stop: done"))
    with pytest.raises(MappingError) as info:
        MappingRegistry.load(tmp_path)
    lines = [str(p) for p in info.value.problems]
    assert len(lines) == len(set(lines)) == 2, lines
    framing = next(p for p in info.value.problems if p.key_path == "stream.framing")
    assert framing.file.endswith("shared.yaml")
    assert framing.line == _line_of(broken_dialect, "framing: websocket")
    status = next(p for p in info.value.problems if p.key_path == "finish_reasons.stop")
    assert status.file.endswith("solo.yaml")
    text = str(info.value)
    assert text.count("unknown framing") == 1
    assert all(FORMAT.match(line) for line in text.splitlines())


def test_registry_load_of_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(MappingError):
        MappingRegistry.load(tmp_path / "absent")


# --- OpenAI-only fields: sent or refused, never dropped ---------------------------------------


def test_a_mapping_that_drops_openai_only_fields_is_refused(tmp_path: Path) -> None:
    text = _replace(
        '      when: "{{ req.prompt or req.context_management or req.moderation }}"',
        '      when: "{{ req.prompt }}"',
    )
    problems = _lint_one(tmp_path, text)
    assert [p.key_path for p in problems] == ["request", "request"], [str(p) for p in problems]
    messages = " ".join(p.message for p in problems)
    assert "req.context_management is neither sent" in messages
    assert "req.moderation is neither sent" in messages
    assert all(p.line == _line_of(text, "request:") for p in problems)


def test_the_shared_refusals_or_the_raw_request_satisfy_it(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_MAPPINGS_DIR / "_dialects", tmp_path / "_dialects")
    without = BASE.replace(
        "  rejects:\n    openai_only:\n"
        '      when: "{{ req.prompt or req.context_management or req.moderation }}"\n'
        "      param: prompt\n      message: OpenAI's own fields\n",
        "",
    )
    assert "openai_only" not in without
    (tmp_path / "refuses.yaml").write_text(
        without.replace("version: 1\n", "version: 1\nextends: _dialects/not_openai\n"),
        encoding="utf-8",
    )
    (tmp_path / "sends.yaml").write_text(
        without.replace('    model: "{{ model }}"\n', '    model: "{{ model }}"\n'
                        '    extra: "{{ req.raw }}"\n'),
        encoding="utf-8",
    )  # fmt: skip
    count, problems = lint_dir(tmp_path)
    assert count == 2 and problems == [], [str(p) for p in problems]


# --- every occurrence, where it is written ----------------------------------------------------


def test_a_bad_op_in_two_events_is_reported_twice_in_the_dialect(tmp_path: Path) -> None:
    dialect = BASE.replace(
        "delta: {op: text_delta, text: $.delta.text}", "delta: {op: txt_delta, text: $.delta.text}"
    ).replace("stop: {op: finish, reason: $.reason}", "stop: {op: fnish, reason: $.reason}")
    (tmp_path / "_dialects").mkdir()
    (tmp_path / "_dialects" / "base.yaml").write_text(dialect, encoding="utf-8")
    # The provider file has sections of its own: the problems still point into the dialect.
    (tmp_path / "acme.yaml").write_text(
        "version: 1\nextends: _dialects/base\nrequest:\n  headers: {x-acme: '1'}\n"
        "stream:\n  ignore: [ping, pong]\n",
        encoding="utf-8",
    )
    count, problems = lint_dir(tmp_path)
    assert count == 1
    found = sorted((p.key_path, p.line) for p in problems)
    assert found == [
        ("stream.events.delta.op", _line_of(dialect, "txt_delta")),
        ("stream.events.stop.op", _line_of(dialect, "fnish")),
    ], [str(p) for p in problems]
    assert all(p.file.endswith("base.yaml") for p in problems)


def test_a_dialect_body_problem_is_not_blamed_on_the_provider_request(tmp_path: Path) -> None:
    dialect = BASE.replace('max_tokens: "{{ req.max_output_tokens }}"',
                           'max_tokens: "{{ req.max_output_tokenz }}"')  # fmt: skip
    (tmp_path / "_dialects").mkdir()
    (tmp_path / "_dialects" / "base.yaml").write_text(dialect, encoding="utf-8")
    (tmp_path / "acme.yaml").write_text(
        "version: 1\nextends: _dialects/base\nrequest:\n  headers: {x-acme: '1'}\n",
        encoding="utf-8",
    )
    _, problems = lint_dir(tmp_path)
    (problem,) = problems
    assert problem.file.endswith("base.yaml"), str(problem)
    assert problem.line == _line_of(dialect, "max_output_tokenz")


# --- count_tokens ----------------------------------------------------------------------------


def test_count_tokens_without_tokens_is_reported(tmp_path: Path) -> None:
    text = BASE + 'count_tokens:\n  url: "{{ api_base }}/v1/count"\n  omit: [max_tokens]\n'
    problem = _only_problem(tmp_path, text)
    assert problem.key_path == "count_tokens"
    assert "count_tokens needs 'tokens'" in problem.message


def test_count_tokens_with_a_bad_jsonpath_is_reported(tmp_path: Path) -> None:
    text = BASE + 'count_tokens:\n  url: "{{ api_base }}/v1/count"\n  tokens: "$.[bad"\n'
    problem = _only_problem(tmp_path, text)
    assert problem.key_path == "count_tokens.tokens"
    assert problem.line == _line_of(text, "$.[bad")


def test_count_tokens_body_template_reads_only_canonical_fields(tmp_path: Path) -> None:
    text = (
        BASE + 'count_tokens:\n  url: "{{ api_base }}/v1/count"\n  tokens: $.n\n'
        '  body: {wrapped: "{{ body }}", note: "{{ req.instrucions }}"}\n'
    )
    problem = _only_problem(tmp_path, text)
    assert "req.instrucions is not a field" in problem.message
    assert problem.hint == "did you mean req.instructions?"


def test_a_valid_count_tokens_section_compiles(tmp_path: Path) -> None:
    text = BASE + (
        'count_tokens:\n  url: "{{ api_base }}/v1/count"\n  omit: [max_tokens]\n'
        '  body: {wrapped: "{{ body }}"}\n  tokens: $.count\n'
    )
    assert _lint_one(tmp_path, text) == []
    mapping = MappingRegistry.load(tmp_path).get("prov")
    assert mapping is not None and mapping.counts_tokens
    assert mapping.parse_count(b'{"count": 42}') == 42
