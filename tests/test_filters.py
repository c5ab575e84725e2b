"""Named filters (engine/filters.py): the only code a mapping can call, each tested once."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.engine import filters as f
from turnout.engine.errors import RequestError
from turnout.engine.expressions import Expression

ROLES = {"user": "user", "assistant": "model", "tool": "user"}


def _text(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "kind": "text", "text": text}


def _call(call_id: str, name: str = "get", arguments: str = '{"a": 1}') -> dict[str, Any]:
    return {
        "role": "assistant", "kind": "function_call", "call_id": call_id, "name": name,
        "arguments": arguments, "args": orjson.loads(arguments), "id": f"fc_{call_id}",
        "signature": None,
    }  # fmt: skip


def _output(call_id: str, output: str) -> dict[str, Any]:
    return {
        "role": "tool", "kind": "function_call_output", "call_id": call_id, "name": "get",
        "output": output,
    }  # fmt: skip


def _reasoning(provider: str | None, text: str = "", blob: str | None = None) -> dict[str, Any]:
    return {
        "role": "assistant", "kind": "reasoning", "id": "rs_1", "text": text,
        "provider": provider, "state": {"signature": "s"} if provider else None,
        "encrypted_content": blob,
    }  # fmt: skip


def test_every_filter_is_registered_in_the_environment() -> None:
    names = {
        "turns", "split_turns", "only", "without", "texts", "from_json", "to_json", "data_url",
        "as_object", "pick", "readable", "omit", "responses_input", "strip_keys", "lead_with",
    }  # fmt: skip
    assert names <= set(f.FILTERS)
    assert Expression("{{ [1, 2] | to_json }}")({}) == "[1,2]"


# --- turns / split_turns ----------------------------------------------------------------------


def test_turns_groups_consecutive_entries_by_mapped_role() -> None:
    entries = [
        _text("user", "a"), _text("user", "b"), _call("c1"), _call("c2"),
        _output("c1", "x"), _output("c2", "y"), _text("user", "c"), _text("assistant", "d"),
    ]  # fmt: skip
    out = f.turns(entries, ROLES)
    assert [t["role"] for t in out] == ["user", "model", "user", "model"]
    assert [len(t["entries"]) for t in out] == [2, 2, 3, 1]
    # tool and user both map to "user": outputs and the next user text share a turn
    assert out[2]["entries"][0]["call_id"] == "c1"
    assert out[2]["entries"][2]["text"] == "c"


def test_turns_skips_unmapped_roles_and_keeps_order() -> None:
    entries = [_text("user", "a"), _output("c", "o"), _text("user", "b")]
    out = f.turns(entries, {"user": "user"})
    assert out == [{"role": "user", "entries": [entries[0], entries[2]]}]
    assert f.turns([], ROLES) == []


def test_split_turns_gives_each_solitary_entry_its_own_turn() -> None:
    roles = {"user": "user", "assistant": "assistant", "tool": "tool"}
    entries = [
        _text("user", "a"), _call("c1"), _call("c2"), _output("c1", "x"), _output("c2", "y"),
        _text("user", "b"), _text("user", "c"),
    ]  # fmt: skip
    out = f.split_turns(entries, roles, ["tool"])
    assert [t["role"] for t in out] == ["user", "assistant", "tool", "tool", "user"]
    assert [len(t["entries"]) for t in out] == [1, 2, 1, 1, 2]
    # without `alone` it is exactly turns()
    assert f.split_turns(entries, roles) == f.turns(entries, roles)


# --- only / without / texts -------------------------------------------------------------------


def test_only_and_without() -> None:
    entries = [_text("user", "a"), _call("c1"), _output("c1", "o"), _text("assistant", "b")]
    assert f.only(entries, "function_call") == [entries[1]]
    assert f.only(entries, "text", "function_call_output") == [entries[0], entries[2], entries[3]]
    assert f.only(entries) == []
    assert f.without(entries, "text") == [entries[1], entries[2]]
    assert f.without(entries) == entries


def test_texts_joins_text_entries_only() -> None:
    entries = [_text("user", "a\n"), _call("c1"), _text("user", "{{ b }}")]
    assert f.texts(entries) == "a\n{{ b }}"
    assert f.texts([_call("c1")]) is None
    assert f.texts([]) is None
    assert f.texts([_text("user", "")]) == ""


def test_texts_joins_with_a_separator() -> None:
    entries = [_text("user", "saved number."), _call("c1"), _text("user", "The number is four.")]
    assert f.texts(entries, "\n\n") == "saved number.\n\nThe number is four."
    assert f.texts([_text("user", "one")], "\n\n") == "one"
    assert Expression("{{ e | texts('\\n') }}")({"e": entries}) == (
        "saved number.\nThe number is four."
    )


# --- lead_with --------------------------------------------------------------------------------


def test_lead_with_opens_with_a_placeholder_turn_only_when_needed() -> None:
    model_first = f.turns([_text("assistant", "hi"), _text("user", "and now?")], ROLES)
    led = f.lead_with(model_first, "user", "(conversation continues)")
    assert [t["role"] for t in led] == ["user", "model", "user"]
    assert led[0]["entries"] == [_text("user", "(conversation continues)")]
    assert led[1:] == model_first  # nothing dropped
    user_first = f.turns([_text("user", "a"), _text("assistant", "b")], ROLES)
    assert f.lead_with(user_first, "user", "x") == user_first
    assert f.lead_with([], "user", "x") == []


# --- from_json / to_json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [('{"a": [1, "2"]}', {"a": [1, "2"]}), ("[]", []), ("42", 42), ('"s"', "s"), ("  ", {}),
     ("", {})],
)  # fmt: skip
def test_from_json_parses(text: str, value: Any) -> None:
    assert f.from_json(text) == value


def test_from_json_passes_non_strings_through() -> None:
    obj = {"already": "parsed"}
    assert f.from_json(obj) is obj
    assert f.from_json(None) is None


@pytest.mark.parametrize("text", ["{", "{'a': 1}", "nope", '{"a": 1} trailing', "NaN"])
def test_from_json_invalid_is_a_client_error(text: str) -> None:
    with pytest.raises(RequestError) as info:
        f.from_json(text)
    assert info.value.status == 400
    assert info.value.param == "input"
    assert info.value.code == "invalid_function_arguments"


def test_from_json_error_through_an_expression() -> None:
    with pytest.raises(RequestError):
        Expression("{{ a | from_json }}")({"a": "{bad"})


def test_to_json_is_compact_ordered_and_unescaped() -> None:
    value = {"z": 1, "a": "<b>&'\"</b>", "u": "é🦜", "n": None, "l": [True, 1.5]}
    text = f.to_json(value)
    assert text == '{"z":1,"a":"<b>&\'\\"</b>","u":"é🦜","n":null,"l":[true,1.5]}'
    assert orjson.loads(text) == value


@given(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
))  # fmt: skip
def test_to_json_from_json_round_trip(value: Any) -> None:
    text = f.to_json(value)
    assert isinstance(text, str)
    if isinstance(value, str) and value.strip() == "":
        return
    assert f.from_json(text) == value


# --- data_url / as_object / pick --------------------------------------------------------------


def test_data_url() -> None:
    assert f.data_url({"data": "QUJD", "media_type": "image/png"}) == "data:image/png;base64,QUJD"
    assert f.data_url({"data": "QUJD", "media_type": None}) == (
        "data:application/octet-stream;base64,QUJD"
    )
    assert f.data_url({"data": None, "url": "https://x/y.png"}) == "https://x/y.png"
    # inline data wins over a URL
    assert f.data_url({"data": "QQ", "media_type": "a/b", "url": "https://x"}) == (
        "data:a/b;base64,QQ"
    )
    assert f.data_url({"data": None, "url": None}) is None
    assert f.data_url({}) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"temp": 21}', {"temp": 21}),
        ({"temp": 21}, {"temp": 21}),
        ("sunny", {"result": "sunny"}),
        ("", {"result": ""}),
        # a JSON scalar or array in the text stays the text it was (no "42" -> 42)
        ("42", {"result": "42"}),
        ("null", {"result": "null"}),
        ('"quoted"', {"result": '"quoted"'}),
        ("[1, 2]", {"result": "[1, 2]"}),
        (42, {"result": 42}),
        ([1], {"result": [1]}),
        (None, {"result": None}),
    ],
)
def test_as_object(value: Any, expected: Any) -> None:
    assert f.as_object(value) == expected


def test_as_object_custom_key() -> None:
    assert f.as_object("x", "output") == {"output": "x"}


@given(st.text())
def test_as_object_never_changes_a_string_that_is_not_an_object(text: str) -> None:
    out = f.as_object(text, "result")
    assert isinstance(out, dict)
    if out != {"result": text}:
        assert orjson.loads(text) == out


def test_pick() -> None:
    table = {"low": 1, "high": 3, None: "never"}
    assert f.pick(table, "low") == 1
    assert f.pick(table, "medium", 2) == 2
    assert f.pick(table, "medium") is None
    assert f.pick(table, None, 9) == 9
    assert Expression("{{ {'a': 1} | pick(k, 0) }}")({"k": "b"}) == 0


# --- readable / omit --------------------------------------------------------------------------


def test_readable_keeps_own_reasoning_and_drops_the_rest() -> None:
    own = _reasoning("anthropic", "mine")
    foreign = _reasoning("gemini", "theirs")
    opaque = _reasoning(None, "openai", blob="gAAAA")
    visible = [_text("user", "q"), _call("c1"), _output("c1", "o"), _text("assistant", "a")]
    entries = [visible[0], own, foreign, opaque, *visible[1:]]
    assert f.readable(entries, "anthropic") == [visible[0], own, *visible[1:]]
    assert f.readable(entries, "gemini") == [visible[0], foreign, *visible[1:]]
    assert f.readable(entries, "openai") == visible
    # The upstream's own encrypted reasoning (OpenAI's format) is kept only when asked for.
    assert f.readable(entries, "openai", True) == [visible[0], opaque, *visible[1:]]


def test_omit_is_shallow_and_copies() -> None:
    src = {"model": "m", "input": "i", "nested": {"model": "keep"}, "top_p": 1}
    out = f.omit(src, "model", "input", "absent")
    assert out == {"nested": {"model": "keep"}, "top_p": 1}
    assert src["model"] == "m"  # the original is untouched


# --- responses_input --------------------------------------------------------------------------


def test_responses_input_rebuilds_items() -> None:
    image = {"role": "user", "kind": "image", "url": None, "media_type": "image/png",
             "data": "QUJD", "file_id": None, "detail": "high"}  # fmt: skip
    file_ = {"role": "user", "kind": "file", "file_id": "file_1", "url": None,
             "filename": "a.pdf", "media_type": None, "data": None}  # fmt: skip
    entries = [
        _text("user", "look"),
        image,
        file_,
        _reasoning(None, "thought", blob="gAAAA-opaque"),
        _reasoning(None, "", blob=None),  # nothing to send back
        _text("assistant", "calling"),
        {"role": "assistant", "kind": "refusal", "text": "no"},
        _call("c1", "get", '{"q":"x"}'),
        _output("c1", "42"),
        _text("user", "thanks"),
    ]
    assert f.responses_input(entries) == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "detail": "high", "image_url": "data:image/png;base64,QUJD"},
            {"type": "input_file", "file_id": "file_1", "filename": "a.pdf"},
        ]},
        {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAA-opaque",
         "summary": [{"type": "summary_text", "text": "thought"}]},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "calling", "annotations": []},
            {"type": "refusal", "refusal": "no"},
        ]},
        {"type": "function_call", "call_id": "c1", "name": "get", "arguments": '{"q":"x"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "thanks"}]},
    ]  # fmt: skip


def test_responses_input_image_and_file_by_url_or_id() -> None:
    entries = [
        {"role": "user", "kind": "image", "url": "https://x/a.png", "media_type": None,
         "data": None, "file_id": None, "detail": None},
        {"role": "user", "kind": "image", "url": None, "media_type": None, "data": None,
         "file_id": "file_img", "detail": "low"},
        {"role": "user", "kind": "file", "file_id": None, "url": "https://x/b.pdf",
         "filename": None, "media_type": None, "data": None},
        {"role": "user", "kind": "file", "file_id": None, "url": None, "filename": "c.pdf",
         "media_type": "application/pdf", "data": "JVBE"},
    ]  # fmt: skip
    (item,) = f.responses_input(entries)
    assert item["content"] == [
        {"type": "input_image", "detail": "auto", "image_url": "https://x/a.png"},
        {"type": "input_image", "detail": "low", "file_id": "file_img"},
        {"type": "input_file", "file_url": "https://x/b.pdf"},
        {"type": "input_file", "file_data": "data:application/pdf;base64,JVBE",
         "filename": "c.pdf"},
    ]  # fmt: skip


def test_responses_input_keeps_each_message_its_own_item_with_its_phase() -> None:
    def part(role: str, text: str, message: int, phase: str | None = None) -> dict[str, Any]:
        entry: dict[str, Any] = {**_text(role, text), "message": message}
        if phase is not None:
            entry["phase"] = phase
        return entry

    out = f.responses_input(
        [
            part("user", "q", 1),
            part("assistant", "looking", 2, "commentary"),
            part("assistant", "first", 3, "final_answer"),
            part("assistant", "second", 3, "final_answer"),
            part("assistant", "plain", 4),
        ]
    )
    assert out == [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}]},
        {"type": "message", "role": "assistant", "phase": "commentary", "content": [
            {"type": "output_text", "text": "looking", "annotations": []}]},
        {"type": "message", "role": "assistant", "phase": "final_answer", "content": [
            {"type": "output_text", "text": "first", "annotations": []},
            {"type": "output_text", "text": "second", "annotations": []}]},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "plain", "annotations": []}]},
    ]  # fmt: skip


def test_responses_input_keeps_separate_messages_for_role_changes() -> None:
    out = f.responses_input([_text("user", "a"), _text("assistant", "b"), _text("user", "c")])
    assert [(i["role"], len(i["content"])) for i in out] == [
        ("user", 1), ("assistant", 1), ("user", 1)
    ]  # fmt: skip


# --- strip_keys -------------------------------------------------------------------------------


def test_strip_keys_everywhere_without_touching_the_input() -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "strict": True,
        "properties": {
            "a": {"type": "array", "items": [{"type": "object", "additionalProperties": False}]},
            "strict": {"type": "string"},  # a property *named* strict is a key too
        },
        "required": ["a", "additionalProperties"],
    }
    out = f.strip_keys(schema, "additionalProperties", "strict")
    assert out == {
        "type": "object",
        "properties": {"a": {"type": "array", "items": [{"type": "object"}]}},
        "required": ["a", "additionalProperties"],  # values are not keys
    }
    assert schema["additionalProperties"] is False
    assert f.strip_keys("text", "x") == "text"
    assert f.strip_keys(schema) == schema
