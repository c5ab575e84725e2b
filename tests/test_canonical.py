"""engine.canonical: Responses request JSON → the canonical request mappings read."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.engine.canonical import decode_state, encode_state, normalize
from turnout.engine.errors import RequestError

TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "input": "hi", **extra}


def _error(body: Any, history: list[dict[str, Any]] | None = None) -> RequestError:
    with pytest.raises(RequestError) as info:
        normalize(body, history)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    assert info.value.message
    return info.value


def _call(call_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": "get_weather",
            "arguments": '{"city": "Paris"}', **extra}  # fmt: skip


# --- the happy paths ----------------------------------------------------------------------------


def test_string_input_is_one_user_text_entry() -> None:
    req = normalize({"model": "gpt-x", "input": "Hello {{ there }}\n"})
    assert req.view["entries"] == [
        {"role": "user", "kind": "text", "text": "Hello {{ there }}\n", "message": 1}
    ]
    assert req.view["model"] == "gpt-x"
    assert req.view["instructions"] is None
    assert req.view["stream"] is False
    assert req.view["store"] is True
    assert req.model == "gpt-x"
    assert len(req.input_items) == 1
    assert req.input_items[0]["role"] == "user"
    assert req.input_items[0]["content"] == [{"type": "input_text", "text": "Hello {{ there }}\n"}]
    assert req.input_items[0]["id"].startswith("msg_")


def test_instructions_and_system_developer_messages_are_joined() -> None:
    req = normalize(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "system", "content": "You are a parrot."},
                {"role": "user", "content": "hi"},
                {"role": "developer", "content": [{"type": "input_text", "text": "No emoji."}]},
                {"role": "assistant", "content": "hello"},
            ],
        }
    )
    assert req.view["instructions"] == "Be brief.\n\nYou are a parrot.\n\nNo emoji."
    assert [(e["role"], e["text"]) for e in req.view["entries"]] == [
        ("user", "hi"), ("assistant", "hello")
    ]  # fmt: skip


def test_system_message_alone_becomes_instructions() -> None:
    req = normalize(
        {
            "model": "m",
            "input": [{"role": "system", "content": "S"}, {"role": "user", "content": "u"}],
        }
    )
    assert req.view["instructions"] == "S"


def test_view_fields() -> None:
    req = normalize(
        _body(
            tools=[TOOL, {"type": "web_search"}],
            tool_choice={"type": "function", "name": "get_weather"},
            parallel_tool_calls=False,
            text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
            reasoning={"effort": "high", "summary": "auto"},
            max_output_tokens=16,
            temperature=0,
            top_p=1,
            metadata={"k": "v"},
            stream=True,
            store=False,
        )
    )
    view = req.view
    assert view["tools"] == [
        {"name": "get_weather", "description": None, "parameters": {"type": "object"},
         "strict": None}
    ]  # fmt: skip
    # Each hosted tool keeps its index in `tools`, so a refusal names `tools[1]`.
    assert view["hosted_tools"] == [{"type": "web_search", "index": 1, "kind": "web_search"}]
    assert view["web_search"] == {
        "index": 1, "type": "web_search", "allowed_domains": None, "user_location": None,
        "search_context_size": None, "external_web_access": None,
    }  # fmt: skip
    assert view["tool_choice"] == {"mode": "function", "name": "get_weather"}
    assert view["parallel_tool_calls"] is False
    assert view["text_format"] == {
        "type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": None,
        "description": None,
    }  # fmt: skip
    assert view["reasoning"] == {"effort": "high", "summary": "auto"}
    assert view["max_output_tokens"] == 16
    assert view["temperature"] == 0.0
    assert view["top_p"] == 1.0
    assert view["stream"] is True
    assert view["store"] is False
    assert view["metadata"] == {"k": "v"}
    assert req.stream is True


def test_function_tool_without_parameters_gets_an_empty_object_schema() -> None:
    req = normalize(_body(tools=[{"type": "function", "name": "f"}], tool_choice="required"))
    assert req.view["tools"][0]["parameters"] == {"type": "object", "properties": {}}
    assert req.view["tool_choice"] == {"mode": "required"}


def test_function_call_and_output_entries() -> None:
    req = normalize(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "weather?"},
                _call("call_1"),
                {"type": "function_call_output", "call_id": "call_1",
                 "output": [{"type": "input_text", "text": "sun"},
                            {"type": "input_text", "text": "ny"}]},
            ],
        }
    )  # fmt: skip
    call, output = req.view["entries"][1:]
    assert call["kind"] == "function_call"
    assert call["args"] == {"city": "Paris"}
    assert call["arguments"] == '{"city": "Paris"}'
    assert call["signature"] is None
    assert output == {"role": "tool", "kind": "function_call_output", "call_id": "call_1",
                      "name": "get_weather", "output": "sunny"}  # fmt: skip


# --- client mistakes: 400 with the right param -----------------------------------------------

_BAD: list[tuple[str, Any, str]] = [
    ("body not an object", ["model"], "body"),
    ("missing model", {"input": "hi"}, "model"),
    ("empty model", {"model": "", "input": "hi"}, "model"),
    ("model not a string", {"model": 4, "input": "hi"}, "model"),
    ("model with a newline", {"model": "anthropic/c\r\nX: 1", "input": "hi"}, "model"),
    ("model with a NUL", {"model": "anthropic/c\u0000", "input": "hi"}, "model"),
    ("model too long", {"model": "openai/" + "m" * 300, "input": "hi"}, "model"),
    ("truncation unknown", _body(truncation="x"), "truncation"),
    ("service_tier unknown", _body(service_tier="x"), "service_tier"),
    ("service_tier a list", _body(service_tier=["a"]), "service_tier"),
    ("max_tool_calls a string", _body(max_tool_calls="abc"), "max_tool_calls"),
    ("max_tool_calls negative", _body(max_tool_calls=-1), "max_tool_calls"),
    ("verbosity unknown", _body(text={"verbosity": "loud"}), "text.verbosity"),
    ("prompt_cache_key a number", _body(prompt_cache_key=5), "prompt_cache_key"),
    ("safety_identifier a list", _body(safety_identifier=[1]), "safety_identifier"),
    ("safety_identifier too long", _body(safety_identifier="x" * 65), "safety_identifier"),
    ("cache retention unknown", _body(prompt_cache_retention="1h"), "prompt_cache_retention"),
    ("include unknown", _body(include=["nope"]), "include[0]"),
    ("include an object", _body(include=[{"a": 1}]), "include[0]"),
    ("context_management empty", _body(context_management=[]), "context_management"),
    ("reasoning summary a string", _body(input=[{"type": "reasoning", "summary": "oops"}]),
     "input[0].summary"),
    ("tool_choice function without name", _body(tool_choice={"type": "function"}),
     "tool_choice.name"),
    ("arguments an object", _body(input=[{"type": "function_call", "call_id": "c", "name": "f",
                                          "arguments": {"a": 1}}]), "input[0].arguments"),
    ("image detail unknown", _body(input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://x/a.png", "detail": "ultra"}]}]),
     "input[0].content[0].detail"),
    ("top_logprobs above 20", _body(top_logprobs=99), "top_logprobs"),
    ("input a number", _body(input=42), "input"),
    ("input an object", _body(input={"role": "user"}), "input"),
    ("no input", {"model": "m"}, "input"),
    ("only system input", _body(input=[{"role": "system", "content": "s"}]), "input"),
    ("unknown parameter", _body(temprature=1), "temprature"),
    ("temperature hot", _body(temperature="hot"), "temperature"),
    ("temperature true", _body(temperature=True), "temperature"),
    ("temperature 3", _body(temperature=3), "temperature"),
    ("temperature negative", _body(temperature=-0.1), "temperature"),
    ("top_p 2", _body(top_p=2), "top_p"),
    ("max_output_tokens 5", _body(max_output_tokens=5), "max_output_tokens"),
    ("max_output_tokens float", _body(max_output_tokens=100.5), "max_output_tokens"),
    ("max_output_tokens bool", _body(max_output_tokens=True), "max_output_tokens"),
    ("stream string", _body(stream="yes"), "stream"),
    ("instructions list", _body(instructions=["a"]), "instructions"),
    ("tool_choice word", _body(tools=[TOOL], tool_choice="sometimes"), "tool_choice"),
    ("tool_choice number", _body(tools=[TOOL], tool_choice=1), "tool_choice"),
    (
        "tool_choice unknown function",
        _body(tools=[TOOL], tool_choice={"type": "function", "name": "get_wether"}),
        "tool_choice",
    ),
    (
        "tool_choice function without tools",
        _body(tool_choice={"type": "function", "name": "get_weather"}),
        "tool_choice",
    ),
    (
        "json_schema without name",
        _body(text={"format": {"type": "json_schema", "schema": {"type": "object"}}}),
        "text.format.name",
    ),
    (
        "json_schema without schema",
        _body(text={"format": {"type": "json_schema", "name": "x"}}),
        "text.format.schema",
    ),
    ("text.format type", _body(text={"format": {"type": "yaml"}}), "text.format.type"),
    ("reasoning effort", _body(reasoning={"effort": "extreme"}), "reasoning.effort"),
    ("reasoning summary", _body(reasoning={"summary": "long"}), "reasoning.summary"),
    ("reasoning not an object", _body(reasoning="high"), "reasoning"),
    ("metadata 17 keys", _body(metadata={f"k{i}": "v" for i in range(17)}), "metadata"),
    ("metadata long value", _body(metadata={"k": "v" * 513}), "metadata"),
    ("metadata long key", _body(metadata={"k" * 65: "v"}), "metadata"),
    ("metadata non-string value", _body(metadata={"k": 1}), "metadata"),
    (
        "output without call",
        _body(input=[{"type": "function_call_output", "call_id": "call_x", "output": "o"}]),
        "input",
    ),
    ("unsupported item type", _body(input=[{"type": "computer_call"}]), "input[0].type"),
    ("item not an object", _body(input=["hi"]), "input[0]"),
    ("bad role", _body(input=[{"role": "robot", "content": "x"}]), "input[0].role"),
    ("message without content", _body(input=[{"role": "user"}]), "input[0].content"),
    (
        "bad part type",
        _body(input=[{"role": "user", "content": [{"type": "input_audio"}]}]),
        "input[0].content[0].type",
    ),
    (
        "function_call without name",
        _body(input=[{"type": "function_call", "call_id": "c", "arguments": "{}"}]),
        "input[0].name",
    ),
    ("background without store", _body(background=True, store=False), "background"),
    ("conversation of a bad shape", _body(conversation={"name": "c"}), "conversation"),
    ("conversation and previous_response_id",
     _body(conversation="conv_1", previous_response_id="resp_1"), "conversation"),
    ("item_reference unknown", _body(input=[{"type": "item_reference", "id": "msg_x"}]),
     "input[0].id"),
    ("tool without name", _body(tools=[{"type": "function"}]), "tools[0].name"),
    (
        "image with a bad url",
        _body(input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "ftp://x/a.png"}]}]),
        "input[0].content[0].image_url",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param"), [(b, p) for _, b, p in _BAD], ids=[n for n, _, _ in _BAD]
)
def test_client_mistakes_are_400_naming_the_param(body: Any, param: str) -> None:
    assert _error(body).param == param


def test_unknown_parameter_code() -> None:
    assert _error(_body(frequency_penalty=1)).code == "unknown_parameter"


def test_a_model_of_the_wrong_type_is_invalid_type_not_missing() -> None:
    assert _error({"model": 5, "input": "hi"}).code == "invalid_type"
    assert _error({"input": "hi"}).code == "missing_required_parameter"


def test_the_echoed_settings_that_are_valid_pass() -> None:
    body = _body(
        truncation="auto", service_tier="flex", max_tool_calls=3, text={"verbosity": "low"},
        prompt_cache_key="k", safety_identifier="u1", prompt_cache_retention="24h",
        include=["reasoning.encrypted_content", "message.output_text.logprobs"],
    )  # fmt: skip
    assert normalize(body).view["truncation"] == "auto"


def test_item_reference_to_history_is_replayed_once() -> None:
    history = [{"type": "message", "id": "msg_1", "role": "user",
                "content": [{"type": "input_text", "text": "first"}]}]  # fmt: skip
    req = normalize(
        _body(input=[{"type": "item_reference", "id": "msg_1"}, {"role": "user", "content": "2"}]),
        history,
    )
    assert [e["text"] for e in req.view["entries"]] == ["first", "2"]
    assert len(req.input_items) == 1  # the reference is not stored again


# --- history + input: resent items are not duplicated -----------------------------------------


def _history() -> list[dict[str, Any]]:
    return [
        {"type": "message", "id": "msg_1", "role": "user",
         "content": [{"type": "input_text", "text": "weather?"}]},
        _call("call_1", id="fc_1"),
        {"type": "function_call_output", "id": "fco_1", "call_id": "call_1", "output": "sunny"},
        {"type": "message", "id": "msg_2", "role": "assistant",
         "content": [{"type": "output_text", "text": "It is sunny.", "annotations": []}]},
    ]  # fmt: skip


def test_history_comes_first() -> None:
    req = normalize(_body(input="and tomorrow?"), _history())
    kinds = [(e["kind"], e.get("text")) for e in req.view["entries"]]
    assert kinds == [
        ("text", "weather?"), ("function_call", None), ("function_call_output", None),
        ("text", "It is sunny."), ("text", "and tomorrow?"),
    ]  # fmt: skip
    assert len(req.input_items) == 1


def test_resent_items_are_not_duplicated() -> None:
    resent = [*_history(), {"role": "user", "content": "and tomorrow?"}]
    resent[1] = _call("call_1")  # same call_id, no id: still the same call
    req = normalize(_body(input=resent), _history())
    entries = req.view["entries"]
    assert [e["kind"] for e in entries].count("function_call") == 1
    assert [e["kind"] for e in entries].count("function_call_output") == 1
    assert [e.get("text") for e in entries if e["kind"] == "text"] == [
        "weather?", "It is sunny.", "and tomorrow?"
    ]  # fmt: skip
    # only the genuinely new item is stored for this turn
    assert [i.get("role") for i in req.input_items] == ["user"]
    assert req.input_items[0]["content"][0]["text"] == "and tomorrow?"


def test_resent_output_without_id_is_not_duplicated() -> None:
    resent = [
        _call("call_1"),
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"role": "user", "content": "more"},
    ]
    req = normalize(_body(input=resent), _history())
    kinds = [e["kind"] for e in req.view["entries"]]
    assert kinds.count("function_call") == 1
    assert kinds.count("function_call_output") == 1


def test_call_resent_by_id_only_is_not_duplicated() -> None:
    req = normalize(
        _body(input=[_call("call_other", id="fc_1"), {"role": "user", "content": "x"}]),
        _history(),
    )
    assert [e["kind"] for e in req.view["entries"]].count("function_call") == 1


def test_output_may_answer_a_call_from_history() -> None:
    history = _history()[:2]
    req = normalize(
        _body(input=[{"type": "function_call_output", "call_id": "call_1", "output": "rain"}]),
        history,
    )
    assert req.view["entries"][-1]["output"] == "rain"
    assert req.view["entries"][-1]["name"] == "get_weather"


# --- reasoning state ----------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    st.text(min_size=1),
    # "p" is the envelope's provider key; see test_state_cannot_spoof_the_provider.
    st.dictionaries(st.text().filter(lambda k: k != "p"), _JSON, max_size=4),
)
def test_state_round_trip(provider: str, state: dict[str, Any]) -> None:
    blob = encode_state(provider, state)
    assert blob.startswith("tnt1.")
    assert blob.isascii()
    assert decode_state(blob) == (provider, state)


def test_state_cannot_spoof_the_provider() -> None:
    provider, state = decode_state(encode_state("anthropic", {"p": "gemini", "signature": "s"}))
    assert provider == "anthropic"
    assert state is not None
    assert state.get("signature") == "s"


@given(st.text())
def test_garbage_blobs_decode_to_nothing(tail: str) -> None:
    assert decode_state(tail if not tail.startswith("tnt1.") else "x" + tail) == (None, None)
    decoded = decode_state("tnt1." + tail)
    # random text is never a valid envelope; and it must not raise
    assert decoded == (None, None) or isinstance(decoded[0], str)


@pytest.mark.parametrize(
    "blob",
    [
        None, "", "tnt1.", "tnt1.!!!!", "tnt1.é", "gAAAAABopaque",
        "tnt1." + base64.urlsafe_b64encode(b"[1, 2]").decode(),
        "tnt1." + base64.urlsafe_b64encode(b'{"p": 1}').decode(),
        "tnt1." + base64.urlsafe_b64encode(b'{"signature": "s"}').decode(),
        "tnt1." + base64.urlsafe_b64encode(b"not json").decode(),
        "tnt1." + base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)  # fmt: skip
def test_bad_blobs_decode_to_nothing(blob: str | None) -> None:
    assert decode_state(blob) == (None, None)


def test_reasoning_item_keeps_provider_and_state() -> None:
    mine = encode_state("anthropic", {"signature": "sig=="})
    req = normalize(
        _body(input=[
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "t"}],
             "encrypted_content": mine},
            {"type": "reasoning", "id": "rs_2", "summary": [], "encrypted_content": "gAAAA-native"},
            {"role": "user", "content": "next"},
        ])
    )  # fmt: skip
    ours, native = req.view["entries"][:2]
    assert (ours["provider"], ours["state"], ours["encrypted_content"]) == (
        "anthropic", {"signature": "sig=="}, None
    )  # fmt: skip
    assert ours["text"] == "t"
    assert (native["provider"], native["state"]) == (None, None)
    assert native["encrypted_content"] == "gAAAA-native"
    assert req.view["has_reasoning"] is True
    assert req.input_items[0]["encrypted_content"] == mine


def test_gemini_call_signatures_land_on_their_calls() -> None:
    blob = encode_state("gemini", {"call_signatures": {"call_1": "sigA", "call_9": "sigZ"}})
    req = normalize(
        {
            "model": "gemini-3-pro",
            "input": [
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": blob},
                _call("call_1"),
                _call("call_2"),
                {"type": "function_call_output", "call_id": "call_1", "output": "sun"},
                {"type": "function_call_output", "call_id": "call_2", "output": "rain"},
            ],
        }
    )
    calls = {e["call_id"]: e for e in req.view["entries"] if e["kind"] == "function_call"}
    assert calls["call_1"]["signature"] == "sigA"
    assert calls["call_2"]["signature"] is None


def test_call_signatures_from_history_reach_resent_calls() -> None:
    blob = encode_state("gemini", {"call_signatures": {"call_1": "sigH"}})
    history: list[dict[str, Any]] = [
        {"type": "message", "id": "msg_1", "role": "user",
         "content": [{"type": "input_text", "text": "q"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": blob},
        _call("call_1", id="fc_1"),
    ]  # fmt: skip
    req = normalize(
        _body(input=[{"type": "function_call_output", "call_id": "call_1", "output": "o"}]),
        history,
    )
    (call,) = [e for e in req.view["entries"] if e["kind"] == "function_call"]
    assert call["signature"] == "sigH"


def test_raw_is_the_client_body() -> None:
    body = _body(temperature=0.5, user="u1")
    req = normalize(body)
    assert req.view["raw"] is body
    assert orjson.dumps(req.view["raw"]) == orjson.dumps(body)
    assert req.view["user"] == "u1"


# --- issue 12: values that were 500s (unhashable, too deep) -------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"reasoning": {"effort": []}}, "reasoning.effort"),
        ({"reasoning": {"summary": {}}}, "reasoning.summary"),
        ({"input": [{"type": "function_call_output", "call_id": [], "output": "x"}]},
         "input[0].call_id"),
        ({"input": [{**_call("c"), "call_id": {"a": 1}}]}, "input[0].call_id"),
        ({"input": [{"role": "user", "content": "hi", "id": ["x"]}]}, "input[0].id"),
        ({"input": [{"role": "user", "content": "hi", "status": {}}]}, "input[0].status"),
        ({"input": [{"type": {}, "role": "user", "content": "hi"}]}, "input[0].type"),
    ],
)  # fmt: skip
def test_unhashable_values_are_400s_naming_the_parameter(extra: dict[str, Any], param: str) -> None:
    assert _error(_body(**extra)).param == param


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{**TOOL, "parameters": _nested(130)}]}, "tools[0].parameters"),
        ({"text": {"format": {"type": "json_schema", "name": "n", "schema": _nested(130)}}},
         "text.format.schema"),
        ({"metadata": _nested(130)}, "metadata.a.a"),
        ({"input": [[[[]]], _nested(300)]}, "input[1].a"),
        ({"input": [_call("c", arguments="[" * 200 + "]" * 200)]}, "input[0].arguments"),
    ],
)  # fmt: skip
def test_json_nested_past_max_depth_is_a_400_naming_the_field(
    extra: dict[str, Any], param: str
) -> None:
    error = _error(_body(**extra))
    assert (error.param, error.code) == (param, "nesting_too_deep")


def test_reasoning_state_nested_past_max_depth_is_a_400() -> None:
    blob = encode_state("anthropic", {"s": _nested(200)})
    item = {"type": "reasoning", "summary": [], "encrypted_content": blob}
    assert _error(_body(input=[item, "hi"])).param == "input[0].encrypted_content"


def test_call_signatures_of_the_wrong_shape_are_ignored() -> None:
    # The blob is the client's to send back: a list where a map belongs must not crash.
    blob = encode_state("gemini", {"call_signatures": ["x"]})
    items = [{"type": "reasoning", "summary": [], "encrypted_content": blob}, _call("c")]
    entries = normalize(_body(input=items)).view["entries"]
    assert [e.get("signature") for e in entries if e["kind"] == "function_call"] == [None]


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"type": "image_generation", "size": [1]}, "tools[0].size"),
        ({"type": "image_generation", "size": {"a": 1}}, "tools[0].size"),
        ({"type": "image_generation", "output_format": 1}, "tools[0].output_format"),
        ({"type": "image_generation", "partial_images": True}, "tools[0].partial_images"),
        ({"type": "image_generation", "partial_images": 4}, "tools[0].partial_images"),
        ({"type": "image_generation", "output_compression": "9"}, "tools[0].output_compression"),
        ({"type": "image_generation", "input_image_mask": "m"}, "tools[0].input_image_mask"),
    ],
)
def test_image_generation_options_of_the_wrong_type_are_400s(
    tool: dict[str, Any], param: str
) -> None:
    # `size: [1]` was a 500: the Gemini mapping looks the size up in a table of strings.
    assert _error(_body(tools=[tool])).param == param


def test_image_generation_options_as_openai_types_them_pass() -> None:
    tool = {"type": "image_generation", "size": "1536x1024", "quality": "high",
            "partial_images": 2, "output_compression": 80,
            "input_image_mask": {"file_id": "f"}}  # fmt: skip
    assert normalize(_body(tools=[tool])).view["image_tool"] == {
        **tool,
        "index": 0,
        "kind": "image_generation",
    }


def test_assistant_phase_is_kept_on_entries_and_stored_items() -> None:
    req = normalize(
        _body(
            input=[
                {"role": "assistant", "content": "Checking.", "phase": "commentary"},
                {"role": "assistant", "content": "Four.", "phase": "final_answer"},
                {"role": "user", "content": "Thanks", "phase": "commentary"},
            ]
        )
    )
    assert [(e["message"], e.get("phase")) for e in req.view["entries"]] == [
        (1, "commentary"), (2, "final_answer"), (3, None)
    ]  # fmt: skip
    assert [i.get("phase") for i in req.input_items] == ["commentary", "final_answer", None]
    # A later turn reads the phases back from the stored items.
    again = normalize(_body(input="more"), history=req.input_items)
    assert [e.get("phase") for e in again.view["entries"]] == [
        "commentary", "final_answer", None, None
    ]  # fmt: skip


def test_an_unknown_phase_is_refused() -> None:
    with pytest.raises(RequestError) as err:
        normalize(_body(input=[{"role": "assistant", "content": "x", "phase": "draft"}]))
    assert err.value.param == "input[0].phase"


# --- web search (engine/web_search.py) ----------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11"],
)
def test_every_spelling_of_the_web_search_tool_is_req_web_search(kind: str) -> None:
    tool = {
        "type": kind,
        "filters": {"allowed_domains": ["example.com", ""]},
        "user_location": {"type": "approximate", "city": "Lyon", "region": None, "country": "FR"},
        "search_context_size": "low",
        "external_web_access": False,
    }
    view = normalize(_body(tools=[TOOL, tool])).view
    assert view["web_search"] == {
        "index": 1, "type": kind, "allowed_domains": ["example.com"],
        "user_location": {"city": "Lyon", "country": "FR"}, "search_context_size": "low",
        "external_web_access": False,
    }  # fmt: skip
    assert [t["kind"] for t in view["hosted_tools"]] == ["web_search"]


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"filters": []}, "tools[0].filters"),
        ({"filters": {"allowed_domains": "example.com"}}, "tools[0].filters.allowed_domains"),
        ({"filters": {"allowed_domains": [1]}}, "tools[0].filters.allowed_domains"),
        ({"user_location": "Lyon"}, "tools[0].user_location"),
        ({"user_location": {"type": "exact"}}, "tools[0].user_location.type"),
        ({"user_location": {"city": 7}}, "tools[0].user_location.city"),
        ({"search_context_size": "huge"}, "tools[0].search_context_size"),
        ({"external_web_access": "no"}, "tools[0].external_web_access"),
    ],
)
def test_a_web_search_option_of_the_wrong_shape_is_a_400_naming_it(
    tool: dict[str, Any], param: str
) -> None:
    assert _error(_body(tools=[{"type": "web_search", **tool}])).param == param


def test_two_web_search_tools_are_a_400_naming_the_second() -> None:
    tools = [{"type": "web_search"}, {"type": "web_search_preview"}]
    assert _error(_body(tools=tools)).param == "tools[1]"


def test_a_web_search_call_in_the_input_is_kept_but_sent_to_no_provider() -> None:
    """Docs/behaviour.md: the answer after a search carries what it found; the search itself
    cannot be replayed to another provider (Anthropic wants its own encrypted results)."""
    call = {"type": "web_search_call", "id": "ws_1", "status": "completed",
            "action": {"type": "search", "query": "q"}}  # fmt: skip
    text = {"type": "output_text", "text": "Found it.", "annotations": []}
    answer = {"type": "message", "role": "assistant", "content": [text]}
    req = normalize(_body(input=[{"role": "user", "content": "look"}, call, answer]))
    assert [(e["role"], e["kind"]) for e in req.view["entries"]] == [
        ("user", "text"), ("assistant", "text"),
    ]  # fmt: skip
    assert req.input_items[1] == call
    chained = normalize(_body(input="more"), history=req.input_items)
    assert len(chained.view["entries"]) == 3
    assert _error(_body(input=[{**call, "action": "q"}])).param == "input[0].action"


def test_a_history_normalized_in_parts_is_the_history_normalized_whole() -> None:
    """engine.canonical.History (what server/history.py keeps per chain): built in two steps,
    handed to normalize twice, it gives what the plain items give, and normalize's changes to
    its entries do not reach it."""
    from turnout.engine.canonical import extend_history

    older: list[dict[str, Any]] = [
        {"type": "message", "id": "msg_1", "role": "user", "content": "weather?"},
        {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "get", "arguments": "{}"},
        {"type": "function_call_output", "id": "fco_1", "call_id": "c1", "output": "sunny"},
    ]
    newer: list[dict[str, Any]] = [
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "t"}]},
        {"type": "message", "id": "msg_2", "role": "assistant", "content": "It is sunny."},
        {"type": "message", "id": "msg_3", "role": "developer", "content": "Be brief."},
    ]
    new_input = {"role": "user", "content": "ok", "id": "msg_4"}  # an id: none is minted
    body = {"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}, new_input]}
    whole = normalize(body, older + newer)
    history = extend_history(newer, extend_history(older))
    assert history.size == 6
    for _ in range(2):
        canon = normalize(body, history)
        assert canon.view == whole.view and canon.input_items == whole.input_items
        for entry in canon.view["entries"]:
            entry["text"] = "changed"
