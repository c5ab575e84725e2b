"""The cloud platform routes of the simulator: Bedrock, Vertex AI (+ OAuth2), Azure, Foundry."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import botocore.auth
import botocore.session
import google.auth.transport.urllib3
import httpx
import orjson
import pytest
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer
from botocore.validate import ParamValidator
from google.oauth2 import service_account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.simulators import (
    FIXTURES_DIR,
    TEST_ACCESS_KEY,
    TEST_SECRET_KEY,
    VERTEX_ANTHROPIC_VERSION,
    Error,
    Garbage,
    MidStreamError,
    Replay,
    Simulator,
    Thinking,
    ToolCalls,
    encode_message,
    load_fixture,
    make_service_account,
)

HTTP = httpx.Client(timeout=10.0)
MODEL = "us.amazon.nova-micro-v1:0"
CLOUD = "https://www.googleapis.com/auth/cloud-platform"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator, HTTP:
        yield simulator


@pytest.fixture(autouse=True)
def _fresh(sim: Simulator) -> Iterator[None]:
    sim.reset()
    yield
    sim.reset()
    sim.aws_region = sim.vertex_tokens = sim.azure_keys = sim.bedrock_api_keys = None


# -- helpers -------------------------------------------------------------------------------------


def bedrock_url(sim: Simulator, stream: bool = False, model: str = MODEL) -> str:
    op = "converse-stream" if stream else "converse"
    return f"{sim.base('bedrock')}/model/{quote(model, safe='')}/{op}"


def sign(
    url: str,
    body: bytes,
    *,
    secret: str = TEST_SECRET_KEY,
    region: str = "us-east-1",
    service: str = "bedrock",
    token: str | None = None,
) -> dict[str, str]:
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"content-type": "application/json"}
    )
    SigV4Auth(Credentials(TEST_ACCESS_KEY, secret, token), service, region).add_auth(request)
    return dict(request.headers.items())


def bedrock_post(
    sim: Simulator, body: Any, stream: bool = False, model: str = MODEL, **kw: Any
) -> httpx.Response:
    url = bedrock_url(sim, stream, model)
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return HTTP.post(url, content=raw, headers=sign(url, raw, **kw))


def converse(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"text": text}]}], **extra}


def frames(raw: bytes) -> list[tuple[dict[str, Any], Any]]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return [(dict(m.headers), orjson.loads(m.payload)) for m in buffer]


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(h.get(":event-type") or h[":exception-type"], p) for h, p in frames(raw)]


def streamed_text(raw: bytes) -> str:
    return "".join(p["delta"].get("text", "") for e, p in events(raw) if e == "contentBlockDelta")


def vertex_url(sim: Simulator, publisher: str, model: str, method: str, v: str = "v1") -> str:
    return (
        f"{sim.base('vertex')}/{v}/projects/sim-project/locations/us-east5/publishers/"
        f"{publisher}/models/{model}:{method}"
    )


VERTEX_AUTH = {"authorization": "Bearer ya29.test"}


def claude_body(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "anthropic_version": VERTEX_ANTHROPIC_VERSION,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def google_credentials(
    info: dict[str, Any], scopes: list[str] | None = None
) -> Any:  # google-auth is untyped: Any keeps mypy strict quiet
    make = service_account.Credentials.from_service_account_info
    return make(info, scopes=scopes)  # type: ignore[no-untyped-call]


def google_request() -> Any:
    pool = urllib3.PoolManager()
    return google.auth.transport.urllib3.Request(pool)  # type: ignore[no-untyped-call]


def gemini_body(text: str = "hi") -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


# -- Bedrock: recordings -----------------------------------------------------------------------

BEDROCK_FIXTURES = [
    "bedrock/converse_stream_text",
    "bedrock/converse_stream_reasoning",
    "bedrock/converse_stream_tool_use",
    "bedrock/model_stream_error_exception",
    "bedrock/converse_response_thinking_tool_use",
    "bedrock/error_400_validation",
]


@pytest.mark.parametrize("chunk_size", [None, 61, "random"])
@pytest.mark.parametrize("name", BEDROCK_FIXTURES)
def test_bedrock_fixtures_replay_byte_exact(sim: Simulator, name: str, chunk_size: Any) -> None:
    fixture = load_fixture(name)
    stream = fixture.content_type == "application/vnd.amazon.eventstream"
    sim.script("bedrock", Replay(name, chunk_size=chunk_size, seed=5))
    url = bedrock_url(sim, stream)
    raw = orjson.dumps(converse())
    with HTTP.stream("POST", url, content=raw, headers=sign(url, raw)) as response:
        received = b"".join(response.iter_raw())
    assert received == fixture.body
    assert response.status_code == fixture.status
    assert response.headers["content-type"] == fixture.content_type


@pytest.mark.parametrize(
    "stem", ["converse_stream_text", "converse_stream_reasoning", "model_stream_error_exception"]
)
def test_eventstream_encoder_reproduces_the_recordings(stem: str) -> None:
    recorded = base64.b64decode(
        (FIXTURES_DIR / "bedrock" / f"{stem}.eventstream.b64.txt").read_text()
    )
    decoded = json.loads((FIXTURES_DIR / "bedrock" / f"{stem}.frames.json").read_text())
    encoded = b"".join(
        encode_message(list(f["headers"].items()), orjson.dumps(f["payload"])) for f in decoded
    )
    assert encoded == recorded


BEDROCK_REQUESTS = sorted(p.name for p in (FIXTURES_DIR / "bedrock").glob("*.request.json"))


@pytest.mark.parametrize("filename", BEDROCK_REQUESTS)
def test_bedrock_recorded_requests_are_accepted(sim: Simulator, filename: str) -> None:
    request = orjson.loads((FIXTURES_DIR / "bedrock" / filename).read_bytes())
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    stream = "stream" in filename
    shape = model.operation_model("ConverseStream" if stream else "Converse").input_shape
    report = ParamValidator().validate({"modelId": MODEL, **request}, shape)
    assert not report.has_errors(), report.generate_report()
    response = bedrock_post(sim, request, stream)
    assert response.status_code == 200, response.text
    assert sim.last.json == request
    assert (sim.last.platform, sim.last.dialect, sim.last.model) == ("bedrock", "bedrock", MODEL)


# -- Bedrock: replies ----------------------------------------------------------------------------


def test_bedrock_echo_non_stream_and_usage(sim: Simulator) -> None:
    response = bedrock_post(sim, converse("hello there", system=[{"text": "be brief"}]))
    assert response.status_code == 200
    body = response.json()
    assert body["output"]["message"] == {"content": [{"text": "hello there"}], "role": "assistant"}
    assert body["stopReason"] == "end_turn"
    usage = body["usage"]
    total_in = usage["inputTokens"] + usage["cacheReadInputTokens"] + usage["cacheWriteInputTokens"]
    assert total_in == len("hello there") + len("be brief")
    assert usage["outputTokens"] == len("hello there")
    assert usage["totalTokens"] == total_in + usage["outputTokens"]


def test_bedrock_stream_frames_follow_the_recordings(sim: Simulator) -> None:
    sim.script(
        "bedrock",
        Thinking("let me think about it", "sig-123", "the answer"),
        ToolCalls([("get_weather", {"city": "Paris"}), ("get_time", {})]),
    )
    raw = bedrock_post(sim, converse("q"), stream=True).content
    parsed = events(raw)
    names = [e for e, _ in parsed]
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"]
    assert "contentBlockStart" not in names  # text and reasoning blocks have no start event
    assert all(
        set(p["p"]) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        for _, p in parsed
    )
    for headers, _ in frames(raw):
        assert list(headers) == [":event-type", ":content-type", ":message-type"]
    reasoning = [
        p["delta"]["reasoningContent"]
        for e, p in parsed
        if e == "contentBlockDelta" and "reasoningContent" in p["delta"]
    ]
    assert "".join(r.get("text", "") for r in reasoning) == "let me think about it"
    assert reasoning[-1] == {"signature": "sig-123"}
    assert streamed_text(raw) == "the answer"
    assert parsed[-2][1]["stopReason"] == "end_turn"
    usage = parsed[-1][1]["usage"]
    assert usage["outputTokens"] == len("the answer") + len("let me think about it")

    raw = bedrock_post(sim, converse("q"), stream=True).content
    parsed = events(raw)
    starts = [p for e, p in parsed if e == "contentBlockStart"]
    assert [s["start"]["toolUse"]["name"] for s in starts] == ["get_weather", "get_time"]
    for start in starts:
        index = start["contentBlockIndex"]
        fragments = [
            p["delta"]["toolUse"]["input"]
            for e, p in parsed
            if e == "contentBlockDelta" and p["contentBlockIndex"] == index
        ]
        assert isinstance(fragments[0], str)
        assert json.loads("".join(fragments)) in ({"city": "Paris"}, {})
    assert parsed[-2][1]["stopReason"] == "tool_use"


def test_bedrock_non_stream_tool_calls_and_thinking(sim: Simulator) -> None:
    sim.script("bedrock", Thinking("hmm", "sig", "ok"), ToolCalls([("f", {"a": 1})]))
    content = bedrock_post(sim, converse()).json()["output"]["message"]["content"]
    assert content[0] == {
        "reasoningContent": {"reasoningText": {"signature": "sig", "text": "hmm"}}
    }
    assert content[1] == {"text": "ok"}
    body = bedrock_post(sim, converse()).json()
    call = body["output"]["message"]["content"][0]["toolUse"]
    assert (call["name"], call["input"]) == ("f", {"a": 1})
    assert call["toolUseId"].startswith("tooluse_")
    assert body["stopReason"] == "tool_use"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(min_size=1, max_size=80).filter(lambda t: t.strip()))
def test_bedrock_echo_is_byte_exact(sim: Simulator, text: str) -> None:
    raw = bedrock_post(sim, converse(text)).json()["output"]["message"]["content"][0]["text"]
    assert raw.encode() == text.encode()
    streamed = streamed_text(bedrock_post(sim, converse(text), stream=True).content)
    assert streamed.encode() == text.encode()


def test_bedrock_errors_and_failures(sim: Simulator) -> None:
    for status, kind in [
        (429, "ThrottlingException"),
        (400, "ValidationException"),
        (503, "ServiceUnavailableException"),
        (424, "ModelErrorException"),
    ]:
        sim.script("bedrock", Error(status))
        response = bedrock_post(sim, converse())
        assert response.status_code == status
        assert response.headers["x-amzn-ErrorType"] == kind
        assert set(response.json()) == {"message"}
    sim.script("bedrock", MidStreamError(after_chunks=2, message="boom"))
    parsed = frames(bedrock_post(sim, converse("abcdefghijkl"), stream=True).content)
    assert len(parsed) == 3
    headers, payload = parsed[-1]
    assert headers[":message-type"] == "exception"
    assert headers[":exception-type"] == "modelStreamErrorException"
    assert payload["message"] == "boom"
    sim.script("bedrock", Garbage())
    buffer = EventStreamBuffer()
    buffer.add_data(bedrock_post(sim, converse(), stream=True).content)
    with pytest.raises(Exception, match=r"[Cc]hecksum|CRC|crc"):
        list(buffer)


def test_botocore_client_talks_to_the_simulator(sim: Simulator) -> None:
    client = botocore.session.get_session().create_client(
        "bedrock-runtime",
        region_name="eu-west-3",
        endpoint_url=sim.base("bedrock"),
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
        aws_session_token="session-token",
        config=Config(retries={"total_max_attempts": 1}),
    )
    try:
        result = client.converse(modelId="anthropic.claude-v2:1", **converse("héllo ☃"))
        assert result["output"]["message"]["content"][0]["text"] == "héllo ☃"
        assert sim.last.model == "anthropic.claude-v2:1"
        assert "eu-west-3/bedrock/aws4_request" in sim.last.headers["authorization"]
        sim.script("bedrock", ToolCalls([("lookup", {"q": "x"})]))
        stream = client.converse_stream(modelId=MODEL, **converse("x"))["stream"]
        seen = [next(iter(event)) for event in stream]
        assert seen[0] == "messageStart" and seen[-1] == "metadata"
        sim.script("bedrock", Error(429))
        with pytest.raises(client.exceptions.ThrottlingException):
            client.converse(modelId=MODEL, **converse("x"))
    finally:
        client.close()


# -- Bedrock: SigV4 ------------------------------------------------------------------------------


def _refused(response: httpx.Response, kind: str, status: int = 403) -> str:
    assert response.status_code == status, response.text
    assert response.headers["x-amzn-ErrorType"] == kind
    message: str = response.json()["message"]
    return message


def test_sigv4_good_signature_accepted_and_bad_refused(sim: Simulator) -> None:
    assert bedrock_post(sim, converse()).status_code == 200
    assert bedrock_post(sim, converse(), token="temporary-session").status_code == 200
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude"
    assert bedrock_post(sim, converse(), model=arn).status_code == 200
    assert sim.last.model == arn

    bad = bedrock_post(sim, converse(), secret="not-the-secret")
    message = _refused(bad, "InvalidSignatureException")
    assert message.startswith("The request signature we calculated does not match")

    url = bedrock_url(sim)
    headers = sign(url, orjson.dumps(converse("signed")))
    tampered = HTTP.post(url, content=orjson.dumps(converse("changed")), headers=headers)
    _refused(tampered, "InvalidSignatureException")

    _refused(
        HTTP.post(url, content=orjson.dumps(converse())), "MissingAuthenticationTokenException"
    )
    wrong_service = bedrock_post(sim, converse(), service="bedrock-runtime")
    assert "scoped to correct service" in _refused(wrong_service, "InvalidSignatureException")
    sim.aws_region = "us-west-2"
    assert "valid region" in _refused(bedrock_post(sim, converse()), "InvalidSignatureException")
    assert bedrock_post(sim, converse(), region="us-west-2").status_code == 200
    assert sim.requests_for("bedrock")[-1].platform == "bedrock"


def test_sigv4_unknown_key_and_expired_date(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = bedrock_url(sim)
    raw = orjson.dumps(converse())
    headers = sign(url, raw)
    headers["Authorization"] = headers["Authorization"].replace(TEST_ACCESS_KEY, "AKIDUNKNOWN")
    _refused(HTTP.post(url, content=raw, headers=headers), "UnrecognizedClientException")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: old.replace(tzinfo=None))
    expired = bedrock_post(sim, converse())
    assert "Signature expired" in _refused(expired, "InvalidSignatureException")


def test_bedrock_api_key_bearer(sim: Simulator) -> None:
    url = bedrock_url(sim)
    ok = HTTP.post(url, json=converse(), headers={"authorization": "Bearer bedrock-api-key"})
    assert ok.status_code == 200
    sim.bedrock_api_keys = {"the-key"}
    denied = HTTP.post(url, json=converse(), headers={"authorization": "Bearer other"})
    _refused(denied, "AccessDeniedException")


# -- Bedrock: what the service refuses -----------------------------------------------------------


def _user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def _assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


TOOLS = {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]}
CALL = {"toolUse": {"toolUseId": "tooluse_1", "name": "f", "input": {}}}
RESULT = {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "42"}]}}

BEDROCK_INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown field", converse(foo=1), 'Unknown parameter in input: "foo"'),
    ("modelId in body", converse(modelId="m"), "modelId"),
    ("no messages", {"system": [{"text": "x"}]}, "must start with a user message"),
    ("starts with assistant", {"messages": [_assistant({"text": "a"})]}, "start with a user"),
    (
        "roles do not alternate",
        {"messages": [_user({"text": "a"}), _user({"text": "b"})]},
        "must alternate between user and assistant",
    ),
    ("bad role", {"messages": [{"role": "system", "content": [{"text": "a"}]}]}, "enum value"),
    ("blank text", converse("   "), "is blank"),
    ("empty content", {"messages": [_user()]}, "is empty"),
    (
        "two keys in one block",
        {"messages": [_user({"text": "a", "cachePoint": {"type": "default"}})]},
        "tagged union",
    ),
    ("temperature above 1", converse(inferenceConfig={"temperature": 1.5}), "less than or equal"),
    (
        "toolUse without toolConfig",
        {"messages": [_user({"text": "a"}), _assistant(CALL), _user(RESULT)]},
        "toolConfig field must be defined",
    ),
    (
        "duplicate toolUse ids (anchor 9)",
        {
            "messages": [_user({"text": "a"}), _assistant(CALL, CALL), _user(RESULT)],
            "toolConfig": TOOLS,
        },
        "ids must be unique",
    ),
    (
        "toolResult id without a toolUse",
        {
            "messages": [
                _user({"text": "a"}),
                _assistant(CALL),
                _user({"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "x"}]}}),
            ],
            "toolConfig": TOOLS,
        },
        "unexpected `toolUseId`",
    ),
    (
        "toolUse left without its toolResult",
        {
            "messages": [_user({"text": "a"}), _assistant(CALL), _user({"text": "nevermind"})],
            "toolConfig": TOOLS,
        },
        "Expected toolResult blocks",
    ),
    (
        "tool name with a space",
        converse(
            toolConfig={"tools": [{"toolSpec": {"name": "a b", "inputSchema": {"json": {}}}}]}
        ),
        "regular expression",
    ),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("case", "body", "message"), BEDROCK_INVALID, ids=lambda v: str(v)[:30])
def test_bedrock_invalid_requests(
    sim: Simulator, case: str, body: dict[str, Any], message: str, stream: bool
) -> None:
    response = bedrock_post(sim, body, stream)
    assert message in _refused(response, "ValidationException", 400), case
    assert sim.requests == []


def test_bedrock_valid_tool_loop(sim: Simulator) -> None:
    body = {
        "messages": [_user({"text": "a"}), _assistant({"text": "calling"}, CALL), _user(RESULT)],
        "toolConfig": TOOLS,
    }
    assert bedrock_post(sim, body).status_code == 200


# -- Vertex AI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 61])
def test_vertex_gemini_fixtures_replay_byte_exact(sim: Simulator, chunk_size: Any) -> None:
    for name in ("vertex/gemini_stream", "vertex/gemini_image_generation"):
        fixture = load_fixture(name)
        assert fixture.url is not None and fixture.request is not None
        model, method = fixture.url.split("/models/")[1].split("?")[0].split(":")
        sim.script("vertex", Replay(name, chunk_size=chunk_size))
        target = vertex_url(sim, "google", model, method, "v1beta1")
        if fixture.url.endswith("alt=sse"):
            target += "?alt=sse"
        response = HTTP.post(target, json=fixture.request, headers=VERTEX_AUTH)
        assert response.status_code == 200, response.text
        assert response.content == fixture.body
        assert response.headers["content-type"] == fixture.content_type
        assert sim.last.json == fixture.request
        assert (sim.last.platform, sim.last.dialect, sim.last.model) == ("vertex", "gemini", model)


def test_vertex_gemini_echo(sim: Simulator) -> None:
    url = vertex_url(sim, "google", "gemini-2.5-flash", "streamGenerateContent") + "?alt=sse"
    response = HTTP.post(
        url, json={**gemini_body("héllo"), "labels": {"team": "x"}}, headers=VERTEX_AUTH
    )
    assert response.status_code == 200
    texts = [
        json.loads(line[6:])["candidates"][0]["content"]["parts"][0]["text"]
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    assert "".join(texts) == "héllo"
    url = vertex_url(sim, "google", "gemini-2.5-flash", "generateContent")
    body = HTTP.post(url, json=gemini_body("x"), headers=VERTEX_AUTH).json()
    assert body["modelVersion"] == "gemini-2.5-flash"


def test_vertex_claude_raw_predict(sim: Simulator) -> None:
    url = vertex_url(sim, "anthropic", "claude-sonnet-4@20250514", "rawPredict")
    body = HTTP.post(url, json=claude_body("bonjour"), headers=VERTEX_AUTH).json()
    assert body["content"] == [{"type": "text", "text": "bonjour"}]
    assert body["model"] == "claude-sonnet-4@20250514"
    assert (sim.last.platform, sim.last.dialect) == ("vertex", "anthropic")
    url = vertex_url(sim, "anthropic", "claude-sonnet-4@20250514", "streamRawPredict")
    sim.script("vertex", ToolCalls([("f", {"x": 1})]))
    response = HTTP.post(url, json=claude_body("q", stream=True), headers=VERTEX_AUTH)
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "event: message_start" in response.text and '"stop_reason":"tool_use"' in response.text


VERTEX_INVALID: list[tuple[str, str, dict[str, str], Any, int, str]] = [
    ("no token", "rawPredict@anthropic", {}, claude_body(), 401, "UNAUTHENTICATED"),
    ("not a bearer", "generateContent", {"authorization": "Basic abc"}, gemini_body(), 401,
     "UNAUTHENTICATED"),
    ("model in body", "rawPredict@anthropic", VERTEX_AUTH, claude_body(model="claude"), 400,
     "model: Extra inputs are not permitted"),
    ("no anthropic_version", "rawPredict@anthropic", VERTEX_AUTH,
     {k: v for k, v in claude_body().items() if k != "anthropic_version"}, 400,
     "anthropic_version: Field required"),
    ("wrong anthropic_version", "rawPredict@anthropic", VERTEX_AUTH,
     claude_body(anthropic_version="2023-06-01"), 400, "vertex-2023-10-16"),
    ("stream without streamRawPredict", "rawPredict@anthropic", VERTEX_AUTH,
     claude_body(stream=True), 400, "streamRawPredict"),
    ("gemini content without role", "generateContent", VERTEX_AUTH,
     {"contents": [{"parts": [{"text": "x"}]}]}, 400, "valid role"),
    ("gemini method on claude", "generateContent@anthropic", VERTEX_AUTH, claude_body(), 400,
     "not supported"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "method", "headers", "body", "status", "needle"), VERTEX_INVALID, ids=lambda v: str(v)
)
def test_vertex_invalid_requests(
    sim: Simulator,
    case: str,
    method: str,
    headers: dict[str, str],
    body: Any,
    status: int,
    needle: str,
) -> None:
    method, _, publisher = method.partition("@")
    publisher = publisher or "google"
    response = HTTP.post(vertex_url(sim, publisher, "m", method), json=body, headers=headers)
    assert response.status_code == status, case
    assert needle in response.text, case
    if status == 401:
        assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    elif publisher == "anthropic" and "not supported" not in needle:
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert sim.requests == []


def test_vertex_registered_tokens(sim: Simulator) -> None:
    sim.vertex_tokens = {"tok"}
    url = vertex_url(sim, "google", "gemini-2.5-flash", "generateContent")
    assert HTTP.post(url, json=gemini_body(), headers={"authorization": "Bearer tok"}).is_success
    refused = HTTP.post(url, json=gemini_body(), headers={"authorization": "Bearer other"})
    assert refused.status_code == 401
    assert "invalid authentication credentials" in refused.json()["error"]["message"]


# -- Google OAuth2 token endpoint ----------------------------------------------------------------


def test_google_auth_refreshes_against_the_simulator(sim: Simulator) -> None:
    info = make_service_account(sim)
    assert info["token_uri"] == f"{sim.base('vertex')}/token"
    credentials = google_credentials(info, scopes=[CLOUD])
    request = google_request()
    credentials.refresh(request)
    first = credentials.token
    assert first and credentials.expiry is not None
    credentials.refresh(request)
    assert credentials.token != first  # a fresh token each call
    assert len(sim.token_requests) == 2
    claims = sim.token_requests[-1].json["claims"]
    assert (claims["iss"], claims["scope"]) == (info["client_email"], CLOUD)

    sim.vertex_tokens = {"only-this"}  # minted tokens stay valid next to registered ones
    url = vertex_url(sim, "google", "gemini-2.5-flash", "generateContent")
    ok = HTTP.post(url, json=gemini_body(), headers={"authorization": f"Bearer {first}"})
    assert ok.status_code == 200
    sim.token_expires_in = 0
    try:
        credentials.refresh(request)
        stale = HTTP.post(
            url, json=gemini_body(), headers={"authorization": f"Bearer {credentials.token}"}
        )
        assert stale.status_code == 401
    finally:
        sim.token_expires_in = 3600

    unscoped = google_credentials(info)
    unscoped.refresh(request)
    assert unscoped.token


def test_token_endpoint_refuses_bad_assertions(sim: Simulator) -> None:
    info = make_service_account(sim)
    stranger = make_service_account(Simulator())  # a key this simulator never registered
    request = google_request()
    foreign = {**stranger, "token_uri": info["token_uri"]}
    with pytest.raises(google.auth.exceptions.RefreshError, match="account not found"):
        google_credentials(foreign, scopes=[CLOUD]).refresh(request)
    forged = {**info, "private_key": stranger["private_key"]}
    with pytest.raises(google.auth.exceptions.RefreshError, match="Invalid JWT Signature"):
        google_credentials(forged, scopes=[CLOUD]).refresh(request)
    wrong_grant = HTTP.post(info["token_uri"], data={"grant_type": "password", "assertion": "x"})
    assert wrong_grant.status_code == 400
    assert wrong_grant.json()["error"] == "unsupported_grant_type"
    assert sim.token_requests == []


# -- Azure OpenAI and Azure AI Foundry -----------------------------------------------------------


def test_azure_v1_routes(sim: Simulator) -> None:
    base = sim.base("azure")
    response = HTTP.post(
        f"{base}/openai/v1/responses",
        json={"model": "my-gpt", "input": "salut"},
        headers={"api-key": "k"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["output"][0]["content"][0]["text"] == "salut"
    assert (sim.last.platform, sim.last.dialect) == ("azure", "responses")
    chat = {"model": "my-gpt", "messages": [{"role": "user", "content": "yo"}]}
    response = HTTP.post(
        f"{base}/openai/v1/chat/completions",
        json=chat,
        headers={"authorization": "Bearer entra-token"},
        params={"api-version": "preview"},
    )
    assert response.json()["choices"][0]["message"]["content"] == "yo"


def test_azure_legacy_deployment_routes(sim: Simulator) -> None:
    base = sim.base("azure")
    url = f"{base}/openai/deployments/gpt4o-prod/chat/completions"
    chat = {"messages": [{"role": "user", "content": "no model"}], "stream": True}
    response = HTTP.post(
        url, json=chat, headers={"api-key": "k"}, params={"api-version": "2024-10-21"}
    )
    assert response.status_code == 200, response.text
    deltas = [
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in response.text.splitlines()
        if line.startswith("data: {") and '"choices":[{' in line
    ]
    assert "".join(deltas) == "no model"
    assert sim.last.model == "gpt4o-prod" and "model" not in sim.last.json
    url = f"{base}/openai/deployments/gpt4o-prod/responses"
    response = HTTP.post(
        url,
        json={"input": "r"},
        headers={"api-key": "k"},
        params={"api-version": "2025-03-01-preview"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "gpt4o-prod"


def test_foundry_models_route(sim: Simulator) -> None:
    url = f"{sim.base('foundry')}/models/chat/completions"
    chat = {"model": "Mistral-Large-2411", "messages": [{"role": "user", "content": "hey"}]}
    response = HTTP.post(
        url, json=chat, headers={"api-key": "k"}, params={"api-version": "2024-05-01-preview"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "hey"
    assert sim.last.platform == "foundry"
    passthrough = HTTP.post(
        url,
        json={**chat, "safe_mode": True},
        headers={"api-key": "k", "extra-parameters": "pass-through"},
        params={"api-version": "2024-05-01-preview"},
    )
    assert passthrough.status_code == 200


AZURE_INVALID: list[tuple[str, str, dict[str, str], dict[str, str], Any, int, Any]] = [
    ("no key", "/openai/v1/responses", {}, {}, {"model": "m", "input": "x"}, 401, "401"),
    ("empty api-key", "/openai/v1/chat/completions", {"api-key": ""}, {},
     {"model": "m", "messages": [{"role": "user", "content": "x"}]}, 401, "401"),
    ("legacy without api-version", "/openai/deployments/d/chat/completions", {"api-key": "k"}, {},
     {"messages": [{"role": "user", "content": "x"}]}, 404, "404"),
    ("v1 responses without model", "/openai/v1/responses", {"api-key": "k"}, {},
     {"input": "x"}, 400, None),
    ("foundry without model", "/models/chat/completions", {"api-key": "k"},
     {"api-version": "2024-05-01-preview"}, {"messages": [{"role": "user", "content": "x"}]},
     400, None),
    ("foundry without api-version", "/models/chat/completions", {"api-key": "k"}, {},
     {"model": "m", "messages": [{"role": "user", "content": "x"}]}, 400,
     "MissingApiVersionParameter"),
    ("foundry extra parameter", "/models/chat/completions", {"api-key": "k"},
     {"api-version": "2024-05-01-preview"},
     {"model": "m", "messages": [{"role": "user", "content": "x"}], "safe_mode": True}, 400, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "path", "headers", "params", "body", "status", "code"),
    AZURE_INVALID,
    ids=lambda v: str(v),
)
def test_azure_invalid_requests(
    sim: Simulator,
    case: str,
    path: str,
    headers: dict[str, str],
    params: dict[str, str],
    body: Any,
    status: int,
    code: Any,
) -> None:
    response = HTTP.post(f"{sim.base('azure')}{path}", json=body, headers=headers, params=params)
    assert response.status_code == status, (case, response.text)
    error = response.json()["error"]
    assert error["code"] == code if code else error["message"]
    if status == 401:
        assert error["message"].startswith("Access denied due to invalid subscription key")
    if status == 404:
        assert error["message"] == "Resource not found"
    assert sim.requests == []


def test_azure_registered_keys(sim: Simulator) -> None:
    sim.azure_keys = {"good"}
    url = f"{sim.base('azure')}/openai/v1/responses"
    body = {"model": "m", "input": "x"}
    assert HTTP.post(url, json=body, headers={"api-key": "good"}).status_code == 200
    assert HTTP.post(url, json=body, headers={"api-key": "bad"}).status_code == 401
