"""Any user text reaches every provider byte-exact, at that provider's place for it.

For every mapping in the registry, text given as the user input, as instructions (or a
developer message), as function-call arguments and as a function-call output is found again
after ``orjson.loads`` of the rendered upstream body. User data is data: never re-parsed,
never type-converted ("42" stays a string), never escaped twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.formats import MAPPINGS_ROOT, Facts, facts, format_of
from turnout.engine.canonical import normalize
from turnout.engine.registry import MappingRegistry

REGISTRY = MappingRegistry.load(MAPPINGS_ROOT)
PROVIDERS = REGISTRY.providers

EXAMPLES = [
    "say \"hi\" and 'bye'",
    "back\\slash \\n \\\\ \\u0041 \\x00",
    "line1\nline2\r\nline3\ttab",
    "{{ req.model }}",
    "{{ 7 * 7 }} {% if true %}x{% endif %} {# comment #}",
    "{% raw %}{{ x }}{% endraw %}",
    '{ "json": [1, 2] }',
    "emoji 🦜 👩🏽‍🚀 🏳️‍🌈 and RTL \u202e mark",
    "42",
    "true",
    "null",
    "1.5e3",
    "[]",
    "<b>&amp;</b> </script>",
    "\x00\x1f\x7f\u2028\u2029",
    "$null",
    " ",
]

ARGS = {"q": "placeholder"}  # replaced by the text under test
# Every credential any mapping declares, so signed and token-authenticated providers render too.
CREDENTIALS = {
    "api_key": "sk-test",
    "access_key_id": "AKIDEXAMPLE",
    "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "access_token": "ya29.test",
}
SETTINGS = {"region": "us-east-1", "project": "p", "location": "us-east5", "api_version": "v"}


# Each mapping's wire format, from its own `extends:` chain, and where that format keeps the user
# text, the instructions, a call and its output (tests/simulators/formats.yaml `facts:`).
DIALECTS = {p: format_of(p) for p in PROVIDERS if REGISTRY.get(p) is not None}
FACTS: dict[str, Facts] = {p: facts(f) for p, f in DIALECTS.items()}


def _body(provider: str, request: dict[str, Any]) -> dict[str, Any]:
    mapping = REGISTRY.get(provider)
    assert mapping is not None
    upstream = mapping.build_request(
        normalize(request), model="some-model", api_base="http://upstream",
        credentials=CREDENTIALS, settings=SETTINGS,
    )  # fmt: skip
    body = orjson.loads(upstream.body)
    assert isinstance(body, dict)
    return body


def _expected_output(fmt: Facts, text: str) -> Any:
    if not fmt.output_is_struct:
        return text
    # A Struct output (Gemini's functionResponse.response): a JSON-object output is sent as that
    # object, any other text is wrapped as {"result": text}, still the exact string.
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"result": text}


# --- the checks -------------------------------------------------------------------------------


def _check_user_and_instructions(provider: str, text: str) -> None:
    fmt = FACTS[provider]
    body = _body(provider, {"model": "client-model", "input": text, "instructions": text})
    got = fmt.user_text(body)
    assert isinstance(got, str)
    assert got == text
    assert fmt.instructions(body) == text


def _check_developer_message(provider: str, text: str) -> None:
    fmt = FACTS[provider]
    body = _body(
        provider,
        {"model": "m", "input": [
            {"role": "developer", "content": text},
            {"role": "user", "content": [{"type": "input_text", "text": text}]},
        ]},
    )  # fmt: skip
    assert fmt.instructions(body) == text
    assert fmt.user_text(body) == text


def _tool_turns(arguments: str, output: str) -> dict[str, Any]:
    return {
        "model": "m",
        "input": [
            {"role": "user", "content": "use the tool"},
            {"type": "function_call", "call_id": "call_1", "name": "lookup",
             "arguments": arguments},
            {"type": "function_call_output", "call_id": "call_1", "output": output},
        ],
    }  # fmt: skip


def _call_arguments(fmt: Facts, body: dict[str, Any]) -> Any:
    """The arguments as the provider carries them (a JSON string, or the parsed object), after
    checking the call and its output name the call the client made."""
    call_id, name, arguments = fmt.call(body)
    assert name == "lookup" and call_id in ("call_1", None)  # None: matched by name
    output_id, output_name, _value = fmt.call_output(body)
    assert output_id == "call_1" or (output_id is None and output_name == "lookup")
    return arguments


def _check_tool_round_trip(provider: str, text: str) -> None:
    fmt = FACTS[provider]
    arguments = orjson.dumps({"q": text, "n": 42, "s": "42"}).decode()
    body = _body(provider, _tool_turns(arguments, text))
    got_args = _call_arguments(fmt, body)
    if isinstance(got_args, str):
        assert got_args == arguments  # the exact string the client sent
    else:
        assert got_args == {"q": text, "n": 42, "s": "42"}
        assert isinstance(got_args["s"], str)
    assert fmt.call_output(body)[2] == _expected_output(fmt, text)


_CHECKS: dict[str, Callable[[str, str], None]] = {
    "user_and_instructions": _check_user_and_instructions,
    "developer_message": _check_developer_message,
    "tool_round_trip": _check_tool_round_trip,
}


def test_every_dialect_is_covered() -> None:
    assert set(DIALECTS) == set(PROVIDERS)
    assert set(DIALECTS.values()) >= {"anthropic", "gemini", "chat", "responses", "bedrock"}


# An empty string as instructions means "no instructions" (nothing is sent), so that one
# combination has no round trip to check; it is left out rather than skipped.
_EXAMPLE_CASES = [
    (provider, text, check)
    for provider in PROVIDERS
    for text in EXAMPLES
    for check in _CHECKS
    if text or check != "user_and_instructions"
]


@pytest.mark.parametrize(("provider", "text", "check"), _EXAMPLE_CASES)
def test_examples(provider: str, text: str, check: str) -> None:
    _CHECKS[check](provider, text)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_empty_instructions_send_no_system_prompt(provider: str) -> None:
    body = _body(provider, {"model": "client-model", "input": "hi", "instructions": ""})
    text = orjson.dumps(body).decode()
    assert '"system"' not in text and "systemInstruction" not in text
    assert '"instructions":""' not in text


_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("provider", PROVIDERS)
@_SETTINGS
@given(text=st.text(min_size=1))
@example(text="{{ req }}")
def test_any_text_as_input_and_instructions(provider: str, text: str) -> None:
    _check_user_and_instructions(provider, text)


@pytest.mark.parametrize("provider", PROVIDERS)
@_SETTINGS
@given(text=st.text(min_size=1))
def test_any_text_as_developer_message(provider: str, text: str) -> None:
    _check_developer_message(provider, text)


@pytest.mark.parametrize("provider", PROVIDERS)
@_SETTINGS
@given(text=st.text())
@example(text='{"nested": {"a": [1, "2"]}}')
@example(text="")
def test_any_text_through_function_calls(provider: str, text: str) -> None:
    _check_tool_round_trip(provider, text)


@pytest.mark.parametrize("provider", PROVIDERS)
@_SETTINGS
@given(
    args=st.dictionaries(
        st.text(), st.text() | st.integers(-(2**63), 2**63 - 1) | st.booleans(), max_size=4
    )
)
def test_any_arguments_object(provider: str, args: dict[str, Any]) -> None:
    arguments = orjson.dumps(args).decode()
    got = _call_arguments(FACTS[provider], _body(provider, _tool_turns(arguments, "ok")))
    assert got == (arguments if isinstance(got, str) else args)
