"""Bad input and bad upstreams, end to end: the right status, OpenAI's error body, nothing lost.

Also the anchor failures of other gateways (../shared/reference/anchor-failures.md) that are
about errors and state: mid-stream failures, chaining at once, secrets.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from tests import oas
from tests.conftest import (
    PROVIDERS,
    SLOW_TIMEOUT_PROVIDER,
    Gateway,
    dialect,
    gateway_env,
    label_for,
    model_for,
    start_gateway,
    stop_gateway,
)
from tests.simulators import Error, Garbage, Hang, MidStreamError, Simulator


def post(gateway: Gateway, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else orjson.dumps(body)
    return httpx.post(
        f"{gateway.url}/v1/responses",
        content=content,
        headers={"content-type": "application/json", **kwargs.pop("headers", {})},
        timeout=30,
        **kwargs,
    )


def error_of(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    oas.validate_error_body(body)
    assert "Traceback" not in reply.text
    return dict(body["error"])


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b'{"model": "openai/x", "input": ', None, "invalid_json"),
        ({"input": "hi"}, "model", "missing_required_parameter"),
        ({"model": "anthropic/claude", "input": "hi", "temperature": "hot"}, "temperature", None),
        ({"model": "anthropic/claude", "input": 42}, "input", "invalid_type"),
        (
            {"model": "anthropic/claude", "input": "hi", "max_output_tokens": 3},
            "max_output_tokens",
            None,
        ),
        (
            {"model": "anthropic/claude", "input": "hi", "frobnicate": 1},
            "frobnicate",
            "unknown_parameter",
        ),
        ({"model": "nope/model", "input": "hi"}, "model", "model_not_found"),
        ({"model": "anthropic/claude", "input": "hi", "top_logprobs": 2}, "top_logprobs", None),
        ([1, 2, 3], None, None),
    ],
)
def test_client_mistakes_are_400s_naming_the_parameter(
    gateway: Gateway, body: Any, param: str | None, code: str | None
) -> None:
    error = error_of(post(gateway, body), 400)
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert error["type"] == "invalid_request_error"


def test_unknown_model_lists_the_providers(gateway: Gateway) -> None:
    error = error_of(post(gateway, {"model": "anthropik/claude", "input": "hi"}), 400)
    assert "anthropic" in error["message"]


def test_unknown_and_deleted_ids_are_404s(gateway: Gateway, client: OpenAI) -> None:
    error_of(httpx.get(f"{gateway.url}/v1/responses/resp_nope"), 404)
    error_of(httpx.delete(f"{gateway.url}/v1/responses/resp_nope"), 404)
    error_of(httpx.get(f"{gateway.url}/v1/responses/resp_nope/input_items"), 404)
    error = error_of(
        post(gateway, {"model": "groq/llama", "input": "hi", "previous_response_id": "resp_nope"}),
        404,
    )
    assert error["param"] == "previous_response_id"


def test_store_false_keeps_nothing(gateway: Gateway, client: OpenAI) -> None:
    response = client.responses.create(model="groq/llama", input="forget me", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_upstream_429_passes_retry_after(client: OpenAI, sim: Simulator) -> None:
    sim.script("anthropic", Error(429))
    with pytest.raises(openai.RateLimitError) as err:
        client.responses.create(model="anthropic/claude-sonnet-4-5", input="hi")
    assert err.value.response.headers["retry-after"] == "7"
    oas.validate_error_body(err.value.response.json())


def test_gemini_retry_info_becomes_retry_after(client: OpenAI, sim: Simulator) -> None:
    sim.script("gemini", Error(429))
    with pytest.raises(openai.RateLimitError) as err:
        client.responses.create(model="gemini/gemini-2.5-flash", input="hi")
    assert float(err.value.response.headers["retry-after"]) >= 34


@pytest.mark.parametrize(("provider", "status", "expected"), [
    ("anthropic", 529, 503), ("openai", 500, 502), ("groq", 503, 503), ("gemini", 400, 400),
    ("mistral", 401, 401),
])  # fmt: skip
def test_upstream_http_errors_map_to_openai_errors(
    gateway: Gateway, sim: Simulator, provider: str, status: int, expected: int
) -> None:
    sim.script(provider, Error(status))
    model = {"gemini": "gemini/gemini-2.5-flash"}.get(provider, f"{provider}/m")
    error = error_of(post(gateway, {"model": model, "input": "hi"}), expected)
    assert error["message"]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("status", "expected"), [(400, 400), (429, 429), (503, 503)])
def test_every_providers_native_error_body_is_translated(
    gateway: Gateway, sim: Simulator, provider: str, status: int, expected: int
) -> None:
    """Each provider's own error envelope (five styles) becomes OpenAI's, message kept."""
    sim.script(label_for(provider), Error(status))
    reply = post(gateway, {"model": model_for(provider), "input": "hi"})
    error = error_of(reply, expected)
    assert error["message"].startswith(provider.removesuffix("_claude") + ":")
    assert len(error["message"]) > len(provider) + 2  # the provider's own words follow
    if status == 429:
        assert error["type"] == "rate_limit_error"


def test_upstream_garbage_is_a_502(gateway: Gateway, sim: Simulator) -> None:
    sim.script("openai", Garbage())
    error_of(post(gateway, {"model": "openai/gpt-4.1", "input": "hi"}), 502)


def test_upstream_timeout_is_a_504(gateway: Gateway, sim: Simulator) -> None:
    sim.script(SLOW_TIMEOUT_PROVIDER, Hang())
    started = time.monotonic()
    error = error_of(post(gateway, {"model": f"{SLOW_TIMEOUT_PROVIDER}/m", "input": "hi"}), 504)
    assert time.monotonic() - started < 10
    assert error["code"] == "upstream_timeout"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_mid_stream_failure_ends_in_response_failed_and_is_stored(
    gateway: Gateway, sim: Simulator, provider: str
) -> None:
    """Anchor 6: an upstream error after N chunks is a typed response.failed, then a clean close."""
    sim.script(label_for(provider), MidStreamError(after_chunks=4, text="partial answer"))
    model = model_for(provider)
    lines: list[str] = []
    with httpx.stream(
        "POST", f"{gateway.url}/v1/responses",
        json={"model": model, "input": "hi", "stream": True}, timeout=30,
    ) as reply:  # fmt: skip
        assert reply.status_code == 200
        lines = list(reply.iter_lines())
    events = [orjson.loads(x[6:]) for x in lines if x.startswith("data: ") and x != "data: [DONE]"]
    for event in events:
        oas.validate_event(event)
        oas.validate_event_sdk(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["message"]
    assert [x for x in lines if x][-1] == "data: [DONE]"
    stored = httpx.get(f"{gateway.url}/v1/responses/{failed['id']}").json()
    assert stored["status"] == "failed"
    assert stored["error"] == failed["error"]


def test_sdk_raises_on_a_failed_stream(client: OpenAI, sim: Simulator) -> None:
    sim.script("anthropic", MidStreamError(after_chunks=4))
    with client.responses.stream(model="anthropic/claude-sonnet-4-5", input="hi") as stream:
        types = [event.type for event in stream]
        with pytest.raises(RuntimeError):
            stream.get_final_response()
    assert types[-1] == "response.failed"


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "openai", "deepseek"])
@pytest.mark.parametrize("streamed", [True, False])
def test_chain_immediately_after_the_first_turn(
    client: OpenAI, sim: Simulator, provider: str, streamed: bool
) -> None:
    """Anchor 1: turn 2 sent the moment turn 1 ends sees turn 1, streaming or not."""
    model = {"gemini": "gemini/gemini-2.5-flash"}.get(provider, f"{provider}/m")
    if streamed:
        with client.responses.stream(model=model, input="Remember 7 apples.") as stream:
            first = stream.get_final_response()
    else:
        first = client.responses.create(model=model, input="Remember 7 apples.")
    started = time.monotonic()
    second = client.responses.create(model=model, input="How many?", previous_response_id=first.id)
    assert time.monotonic() - started < 5
    assert second.status == "completed"
    assert "Remember 7 apples." in orjson.dumps(sim.last.json).decode()


def test_secrets_never_reach_logs_errors_or_the_store(
    gateway: Gateway, client: OpenAI, sim: Simulator
) -> None:
    sim.script("groq", Error(401))
    with pytest.raises(openai.AuthenticationError) as err:
        client.responses.create(model="groq/llama", input="hi")
    assert "secret-0123456789" not in err.value.response.text
    ok = client.responses.create(model="groq/llama", input="hi")
    stored = httpx.get(f"{gateway.url}/v1/responses/{ok.id}").text
    assert "secret-0123456789" not in stored
    assert sim.last.headers["authorization"] == "Bearer sk-test-groq-secret-0123456789"
    assert "secret-0123456789" not in gateway.logs()


@pytest.fixture
def locked_gateway(provider_sim_session: Simulator, tmp_path: Path) -> Any:
    config = tmp_path / "turnout.yaml"
    config.write_text(
        "store: memory://\nauth:\n  master_key: ${TURNOUT_MASTER_KEY}\n", encoding="utf-8"
    )
    env = gateway_env(provider_sim_session, without_keys=("anthropic",))
    env["TURNOUT_MASTER_KEY"] = "tm-master-key-value"
    gw = start_gateway(config, env, tmp_path / "gateway.log")
    yield gw
    stop_gateway(gw)


def test_master_key_and_missing_credentials(locked_gateway: Gateway) -> None:
    error = error_of(post(locked_gateway, {"model": "groq/m", "input": "hi"}), 401)
    assert "tm-master-key-value" not in error["message"]
    error_of(
        post(
            locked_gateway,
            {"model": "groq/m", "input": "hi"},
            headers={"authorization": "Bearer no"},
        ),
        401,
    )
    auth = {"authorization": "Bearer tm-master-key-value"}
    assert post(locked_gateway, {"model": "groq/m", "input": "hi"}, headers=auth).status_code == 200
    error = error_of(
        post(locked_gateway, {"model": "anthropic/claude", "input": "hi"}, headers=auth), 401
    )
    assert "ANTHROPIC_API_KEY" in error["message"]
    assert "tm-master-key-value" not in locked_gateway.logs()


def test_broken_mapping_fails_start_up_with_file_line_col(
    provider_sim_session: Simulator, tmp_path: Path
) -> None:
    import shutil
    import subprocess
    import sys

    from tests.conftest import ROOT

    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    broken = mappings / "groq.yaml"
    broken.write_text(broken.read_text() + "stream:\n  framing: morse\n", encoding="utf-8")
    config = tmp_path / "turnout.yaml"
    config.write_text(f"store: memory://\nmappings_dir: {mappings}\n", encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "-m", "turnout.server.cli", "serve", "--config", str(config),
         "--port", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=gateway_env(provider_sim_session),
    )  # fmt: skip
    assert run.returncode == 2
    assert "groq.yaml:" in run.stderr
    assert "stream.framing: unknown framing 'morse'" in run.stderr
    assert "Traceback" not in run.stderr


def test_cancel_is_for_background_responses_only(gateway: Gateway, client: OpenAI) -> None:
    """Anchor 10: cancel answers for every provider, as OpenAI does for a foreground response."""
    done = client.responses.create(model="anthropic/claude-sonnet-4-5", input="hi")
    error = error_of(httpx.post(f"{gateway.url}/v1/responses/{done.id}/cancel"), 400)
    assert "background" in error["message"]
    error_of(httpx.post(f"{gateway.url}/v1/responses/resp_unknown/cancel"), 404)


def test_turnout_lint_reports_a_broken_mapping(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    folder = tmp_path / "mappings"
    (folder / "_dialects").mkdir(parents=True)
    (folder / "acme.yaml").write_text(
        "version: 1\nextends: _dialects/openai_chat\nprovider:\n  api_base: x\n", encoding="utf-8"
    )
    # The dialect extends the shared refusals: they come along unchanged.
    (folder / "_dialects" / "not_openai.yaml").write_text(
        (ROOT / "mappings/_dialects/not_openai.yaml").read_text(), encoding="utf-8"
    )
    (folder / "_dialects" / "openai_chat.yaml").write_text(
        (ROOT / "mappings/_dialects/openai_chat.yaml")
        .read_text()
        .replace("op: finish,", "op: finsh,", 1),
        encoding="utf-8",
    )
    run = subprocess.run(
        [sys.executable, "-m", "turnout.server.cli", "lint", str(folder)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    line = next(x for x in run.stdout.splitlines() if "finsh" in x)
    assert line.startswith(str(folder / "_dialects" / "openai_chat.yaml") + ":") or (
        "_dialects/openai_chat.yaml:" in line
    )
    assert "unknown op 'finsh'" in line
    assert "did you mean 'finish'?" in line
    ok = subprocess.run(
        [sys.executable, "-m", "turnout.server.cli", "lint"], cwd=ROOT, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0
    assert ok.stdout.startswith("ok: ")


# Secrets the test gateway holds that no key-shape pattern would catch: only masking the exact
# values of the call's own credentials hides them.
_SECRETS = {
    "vertex_ai": "ya29.test-vertex-token-secret-0123456789",
    "bedrock": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    "openai": "sk-test-openai-secret-0123456789",
    "anthropic": "sk-test-anthropic-secret-0123456789",
    "gemini": "sk-test-gemini-secret-0123456789",
    "groq": "sk-test-groq-secret-0123456789",
}


def _native_error(dialect_name: str, message: str) -> dict[str, Any]:
    if dialect_name == "anthropic":
        return {"type": "error", "error": {"type": "authentication_error", "message": message}}
    if dialect_name == "gemini":
        return {"error": {"code": 401, "message": message, "status": "UNAUTHENTICATED"}}
    if dialect_name == "bedrock":
        return {"message": message}
    return {"error": {"message": message, "type": "invalid_request_error", "code": "bad_key"}}


@pytest.mark.parametrize("provider", sorted(_SECRETS))
def test_a_key_quoted_back_by_the_provider_never_reaches_the_client(
    gateway: Gateway, sim: Simulator, provider: str
) -> None:
    secret = _SECRETS[provider]
    message = f"Incorrect API key provided: {secret} (request was signed with {secret})"
    sim.script(
        label_for(provider), Error(401, native_body=_native_error(dialect(provider), message))
    )
    reply = httpx.post(
        f"{gateway.url}/v1/responses", json={"model": model_for(provider), "input": "hi"}
    )
    error = error_of(reply, reply.status_code)
    assert reply.status_code >= 400
    assert secret not in reply.text and "Incorrect API key provided: ***" in error["message"]


# Providers whose mid-stream failures carry a message (Gemini's just drop the connection).
@pytest.mark.parametrize("provider", ["bedrock", "anthropic", "openai"])
def test_a_key_in_a_mid_stream_error_is_masked_in_the_event_and_the_store(
    gateway: Gateway, sim: Simulator, provider: str
) -> None:
    secret = _SECRETS[provider]
    sim.script(label_for(provider), MidStreamError(after_chunks=3, message=f"key {secret} bad"))
    with httpx.stream(
        "POST", f"{gateway.url}/v1/responses",
        json={"model": model_for(provider), "input": "hi", "stream": True}, timeout=30,
    ) as reply:  # fmt: skip
        text = reply.read().decode()
    assert "response.failed" in text and secret not in text
    rid = orjson.loads(text.split("data: ", 2)[1].split("\n", 1)[0])["response"]["id"]
    stored = httpx.get(f"{gateway.url}/v1/responses/{rid}")
    assert stored.json()["status"] == "failed" and secret not in stored.text
    assert "***" in stored.json()["error"]["message"]


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("anthropic", {}),
        ("anthropic", []),
        ("anthropic", {"content": "x"}),
        ("gemini", {"candidates": [{"content": {"parts": [{"text": 5}]}, "finishReason": "STOP"}]}),
        ("openai", None),
    ],
)
def test_a_2xx_body_of_the_wrong_shape_is_a_502_not_a_500(
    gateway: Gateway, sim: Simulator, provider: str, body: Any
) -> None:
    sim.script(label_for(provider), Error(200, native_body=b"null" if body is None else body))
    reply = httpx.post(
        f"{gateway.url}/v1/responses", json={"model": model_for(provider), "input": "hi"}
    )
    error = error_of(reply, 502)
    assert error["code"] == "upstream_bad_response"
