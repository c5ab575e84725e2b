"""Every case file under mappings/cases, run through the engine; and the runner's own messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.engine.cases import CASES_DIR, find_cases, load_case, run_case
from turnout.engine.errors import MappingError
from turnout.engine.registry import MappingRegistry

REGISTRY = MappingRegistry.load()
CASE_FILES = find_cases()


def _id(path: Path) -> str:
    return load_case(path).name


@pytest.mark.parametrize("path", CASE_FILES, ids=[_id(p) for p in CASE_FILES])
def test_case(path: Path) -> None:
    failures = run_case(load_case(path), REGISTRY)
    assert not failures, "\n".join(failures)


def test_every_provider_has_cases() -> None:
    for provider in ("openai", "anthropic", "gemini", "groq", "mistral", "deepseek", "openrouter"):
        assert len(list((CASES_DIR / provider).glob("*.yaml"))) >= 3, provider


BASE = """\
request:
  model: anthropic/claude-sonnet-4-5
  input: "What is 1+1? Answer with just the number."
  max_output_tokens: 32000
  stream: true
upstream:
  request:
    max_tokens: {max_tokens}
    messages:
      - role: user
        content: [{{type: text, text: "What is 1+1? Answer with just the number."}}]
  response:
    fixture: anthropic/text_stream.sse
expect:
  status: {status}
  output:
    - {{type: message, text: "{text}"}}
  usage: {{input_tokens: {input_tokens}}}
  events: [{events}]
"""
GOOD = {
    "max_tokens": 32000, "status": "completed", "text": "2", "input_tokens": 20,
    "events": "response.created, response.output_text.delta, response.completed",
}  # fmt: skip


def _write(tmp_path: Path, text: str, name: str = "case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _run(tmp_path: Path, **changes: object) -> list[str]:
    return run_case(load_case(_write(tmp_path, BASE.format(**{**GOOD, **changes}))), REGISTRY)


def test_the_template_case_passes(tmp_path: Path) -> None:
    assert _run(tmp_path) == []


def test_a_wrong_output_text_names_its_json_path(tmp_path: Path) -> None:
    assert _run(tmp_path, text="3") == ['expect $.output[0].text: expected "3", got "2"']


def test_a_wrong_native_body_names_its_json_path(tmp_path: Path) -> None:
    assert _run(tmp_path, max_tokens=4096) == [
        "upstream.request $.max_tokens: expected 4096, got 32000"
    ]


def test_wrong_status_usage_and_event_order_are_each_reported(tmp_path: Path) -> None:
    failures = _run(
        tmp_path, status="incomplete", input_tokens=21,
        events="response.completed, response.created",
    )  # fmt: skip
    assert failures[0] == 'expect $.status: expected "incomplete", got "completed"'
    assert failures[1] == "expect $.usage.input_tokens: expected 21, got 20"
    assert failures[2].startswith("expect.events $[1]: 'response.created' not emitted after")


def test_exact_match_reports_keys_the_case_does_not_name(tmp_path: Path) -> None:
    text = BASE.format(**GOOD).replace("upstream:\n", "upstream:\n  match: exact\n")
    failures = run_case(load_case(_write(tmp_path, text)), REGISTRY)
    assert 'upstream.request $.model: unexpected key (got "claude-sonnet-4-5")' in failures
    assert "upstream.request $.stream: unexpected key (got true)" in failures


def test_an_expected_error_that_does_not_happen_fails(tmp_path: Path) -> None:
    text = BASE.format(**GOOD) + "  error: {status: 400, param: temperature}\n"
    failures = run_case(load_case(_write(tmp_path, text)), REGISTRY)
    assert "expect.error: the reply was accepted, no error was raised" in failures


def test_a_wrong_error_param_is_named(tmp_path: Path) -> None:
    text = """\
request: {model: anthropic/claude-sonnet-4-5, input: Hi, reasoning: {effort: low}, temperature: 0.5}
expect:
  error: {status: 400, param: top_p}
"""
    failures = run_case(load_case(_write(tmp_path, text)), REGISTRY)
    assert failures == ['expect.error $.param: expected "top_p", got "temperature"']


def test_a_broken_case_file_reports_file_line_col(tmp_path: Path) -> None:
    text = BASE.format(**GOOD).replace("  status: completed", "  status: done")
    path = _write(tmp_path, text)
    with pytest.raises(MappingError) as info:
        load_case(path)
    problem = info.value.problems[0]
    assert (problem.line, problem.key_path) == (15, "expect.status")
    assert str(problem).startswith(f"{path}:15:3: expect.status: unallowed value 'done'")


def test_an_unknown_key_is_reported_with_a_hint(tmp_path: Path) -> None:
    text = BASE.format(**GOOD).replace("expect:\n", "expcet: {}\nexpect:\n")
    with pytest.raises(MappingError) as info:
        load_case(_write(tmp_path, text))
    assert any(p.key_path == "expcet" for p in info.value.problems)
