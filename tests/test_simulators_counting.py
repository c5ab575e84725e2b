"""The simulators' token-counting endpoints refuse what the real ones refuse and count
`prompt_chars` of what they accept (tests/simulators/counting.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.simulators import Simulator
from tests.simulators.counting import COUNT_OPERATION
from tests.simulators.sigv4 import TEST_ACCESS_KEY, TEST_SECRET_KEY
from tests.simulators.turn import prompt_chars

HTTP = httpx.Client(timeout=10.0)
ANTHROPIC = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
GEMINI = {"x-goog-api-key": "k"}
BEARER = {"authorization": "Bearer k"}
MESSAGES = [{"role": "user", "content": [{"type": "text", "text": "How many tokens?"}]}]
CONTENTS = [{"role": "user", "parts": [{"text": "How many tokens?"}]}]
VERTEX = "/v1/projects/p/locations/us-east5/publishers"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator, HTTP:
        yield simulator


@pytest.fixture(autouse=True)
def _fresh(sim: Simulator) -> Iterator[None]:
    sim.reset()
    yield
    sim.reset()


def post(sim: Simulator, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return HTTP.post(f"{sim.url}{path}", json=body, headers=headers)


def counted(sim: Simulator, reply: httpx.Response, key: str) -> int:
    assert reply.status_code == 200, reply.text
    assert sim.last.operation == COUNT_OPERATION
    n = int(reply.json()[key])
    assert n == prompt_chars(sim.last.json) == len("How many tokens?")
    return n


def test_anthropic_counts_the_messages_request(sim: Simulator) -> None:
    body = {"model": "claude-sonnet-4-5", "messages": MESSAGES}
    counted(sim, post(sim, "/anthropic/v1/messages/count_tokens", body, ANTHROPIC), "input_tokens")


@pytest.mark.parametrize("key", ["max_tokens", "stream", "temperature", "metadata"])
def test_anthropic_count_refuses_generation_fields(sim: Simulator, key: str) -> None:
    value: Any = {"max_tokens": 10, "stream": True, "temperature": 0.5, "metadata": {}}[key]
    body = {"model": "claude-sonnet-4-5", "messages": MESSAGES, key: value}
    reply = post(sim, "/anthropic/v1/messages/count_tokens", body, ANTHROPIC)
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == f"{key}: Extra inputs are not permitted"
    assert sim.requests == []


def test_gemini_counts_contents_or_the_whole_request(sim: Simulator) -> None:
    path = "/gemini/v1beta/models/gemini-2.5-flash:countTokens"
    counted(sim, post(sim, path, {"contents": CONTENTS}, GEMINI), "totalTokens")
    whole = {"generateContentRequest": {"model": "models/gemini-2.5-flash", "contents": CONTENTS,
                                        "generationConfig": {"maxOutputTokens": 5}}}  # fmt: skip
    counted(sim, post(sim, path, whole, GEMINI), "totalTokens")


@pytest.mark.parametrize(
    "body",
    [
        {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 5}},
        {"contents": CONTENTS, "systemInstruction": {"parts": [{"text": "x"}]}},
        {"generateContentRequest": {"contents": CONTENTS}},  # no model
    ],
)
def test_gemini_count_refuses_what_countTokens_refuses(sim: Simulator, body: Any) -> None:
    reply = post(sim, "/gemini/v1beta/models/gemini-2.5-flash:countTokens", body, GEMINI)
    assert reply.status_code == 400, reply.text
    assert sim.requests == []


def test_vertex_counts_gemini_and_claude(sim: Simulator) -> None:
    google = f"/vertex_ai{VERTEX}/google/models/gemini-2.5-flash:countTokens"
    body = {"contents": CONTENTS, "systemInstruction": {"parts": [{"text": ""}]}}
    counted(sim, post(sim, google, body, BEARER), "totalTokens")
    claude = f"/vertex_ai{VERTEX}/anthropic/models/count-tokens:rawPredict"
    body = {"model": "claude-sonnet-4-5@20250929", "messages": MESSAGES}
    counted(sim, post(sim, claude, body, BEARER), "input_tokens")
    reply = post(sim, claude, {**body, "max_tokens": 5}, BEARER)
    assert reply.status_code == 400


def test_responses_counts_and_refuses_create_only_fields(sim: Simulator) -> None:
    body = {"model": "gpt-5", "input": "How many tokens?"}
    counted(sim, post(sim, "/openai/v1/responses/input_tokens", body, BEARER), "input_tokens")
    assert sim.last.json == body
    reply = post(sim, "/openai/v1/responses/input_tokens", {**body, "store": False}, BEARER)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "store"


def _signed(url: str, raw: bytes) -> dict[str, str]:
    request = AWSRequest(
        method="POST", url=url, data=raw, headers={"content-type": "application/json"}
    )
    SigV4Auth(Credentials(TEST_ACCESS_KEY, TEST_SECRET_KEY), "bedrock", "us-east-1").add_auth(
        request
    )
    return dict(request.headers.items())


def bedrock_count(sim: Simulator, body: Any) -> httpx.Response:
    model = quote("us.anthropic.claude-sonnet-4-5-20250929-v1:0", safe=":")
    url = f"{sim.base('bedrock')}/model/{model}/count-tokens"
    raw = orjson.dumps(body)
    return HTTP.post(url, content=raw, headers=_signed(url, raw))


def test_bedrock_counts_a_converse_request(sim: Simulator) -> None:
    converse = {"messages": [{"role": "user", "content": [{"text": "How many tokens?"}]}]}
    counted(sim, bedrock_count(sim, {"input": {"converse": converse}}), "inputTokens")


def test_bedrock_count_refuses_inference_config(sim: Simulator) -> None:
    converse = {
        "messages": [{"role": "user", "content": [{"text": "How many tokens?"}]}],
        "inferenceConfig": {"maxTokens": 5},
    }
    reply = bedrock_count(sim, {"input": {"converse": converse}})
    assert reply.status_code == 400
    assert "inferenceConfig" in reply.text
    assert sim.requests == []
