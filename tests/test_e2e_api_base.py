"""Base URLs end to end: `turnout serve` with `<PROVIDER>_API_BASE` set the way providers print
them reaches the simulator at the right path, and a wrong base is answered with an error that
names the URL called (scheme, host, port, path: no query, no userinfo)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests import oas
from tests.conftest import Gateway, free_port, gateway_env, start_gateway, stop_gateway
from tests.simulators import Error, Simulator

CLOSED_PORT = free_port()  # nothing listens there


@pytest.fixture(scope="module")
def base_gw(
    provider_sim_session: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    sim = provider_sim_session
    folder = tmp_path_factory.mktemp("api_base")
    config = folder / "turnout.yaml"
    config.write_text("store: memory://\n", encoding="utf-8")
    env = gateway_env(sim)
    env.update(
        {
            # Bare hosts: the documented path is completed (/v1, /openai/v1)...
            "OLLAMA_API_BASE": sim.url + "/",
            "GROQ_API_BASE": sim.url,
            # ... Foundry's endpoint as the portal shows it, /models included.
            "AZURE_AI_API_BASE": f"{sim.url}/foundry/models/",
            # Gemini's base with the /v1beta its docs print.
            "GEMINI_API_BASE": f"{sim.url}/gemini/v1beta/",
            # Wrong: the simulator has no route at /v1/messages without a provider label.
            "ANTHROPIC_API_BASE": sim.url,
            # Wrong: nothing listens there.
            "MISTRAL_API_BASE": f"http://127.0.0.1:{CLOSED_PORT}/v1",
            # Wrong too, with userinfo (api-key auth: aiohttp refuses userinfo next to an
            # Authorization header) that must not show in the error, nor the api-version query.
            "AZURE_CHAT_API_BASE": f"http://user:hunter2pass@127.0.0.1:{CLOSED_PORT}/",
            # userinfo next to a Bearer key: the HTTP client refuses to send it at all.
            "DEEPINFRA_API_BASE": f"http://user:hunter3pass@{sim.url.split('://', 1)[1]}/v1",
        }
    )
    gw = start_gateway(config, env, folder / "gateway.log")
    yield gw
    stop_gateway(gw)


def post(gw: Gateway, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "input": "hi", **extra}
    return httpx.post(f"{gw.url}/v1/responses", json=body, timeout=30)


def error_of(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    oas.validate_error_body(body)
    return dict(body["error"])


@pytest.mark.parametrize(
    ("model", "label", "path"),
    [
        ("ollama/llama3.2", "v1", "/v1/chat/completions"),
        ("groq/llama-3.3-70b", "openai", "/openai/v1/chat/completions"),
        ("azure_ai/Mistral-Large-2411", "foundry", "/foundry/models/chat/completions"),
        ("gemini/gemini-2.5-flash", "gemini",
         "/gemini/v1beta/models/gemini-2.5-flash:generateContent"),
    ],
)  # fmt: skip
def test_documented_bases_reach_the_provider_path(
    base_gw: Gateway, sim: Simulator, model: str, label: str, path: str
) -> None:
    reply = post(base_gw, model)
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "completed"
    assert [(r.provider, r.path) for r in sim.requests] == [(label, path)]


def test_a_404_from_a_wrong_base_names_the_url_called(base_gw: Gateway, sim: Simulator) -> None:
    error = error_of(post(base_gw, "anthropic/claude-sonnet-4-5"), 404)
    assert f"(called POST {sim.url}/v1/messages;" in error["message"]
    assert "api_base" in error["message"]
    assert sim.requests == []  # the simulator refused the path; nothing reached a provider


def test_a_404_names_the_url_without_its_query(base_gw: Gateway, sim: Simulator) -> None:
    native = {"error": {"code": 404, "message": "models/nope is not found", "status": "NOT_FOUND"}}
    sim.script("gemini", Error(404, native_body=native))
    with httpx.stream(
        "POST", f"{base_gw.url}/v1/responses",
        json={"model": "gemini/nope", "input": "hi", "stream": True}, timeout=30,
    ) as reply:  # fmt: skip
        reply.read()
    error = error_of(reply, 404)
    url = f"{sim.url}/gemini/v1beta/models/nope:streamGenerateContent"
    assert "models/nope is not found" in error["message"]
    assert f"POST {url};" in error["message"] and "alt=sse" not in error["message"]
    assert "sk-test-gemini-secret" not in reply.text


def test_an_unreachable_base_names_the_url_called(base_gw: Gateway) -> None:
    error = error_of(post(base_gw, "mistral/mistral-small-latest"), 502)
    assert error["code"] == "upstream_unreachable"
    assert f"POST http://127.0.0.1:{CLOSED_PORT}/v1/chat/completions" in error["message"]
    assert "api_base" in error["message"]


def test_an_unreachable_url_is_named_without_userinfo_or_query(base_gw: Gateway) -> None:
    error = error_of(post(base_gw, "azure_chat/gpt-4o-mini"), 502)
    url = f"http://127.0.0.1:{CLOSED_PORT}/openai/deployments/gpt-4o-mini/chat/completions"
    assert f"POST {url})" in error["message"]
    assert "hunter2pass" not in error["message"] and "user:" not in error["message"]
    assert "api-version" not in error["message"]


def test_a_base_the_client_cannot_send_is_a_502_naming_it(base_gw: Gateway) -> None:
    error = error_of(post(base_gw, "deepinfra/meta-llama/Llama-3.3-70B-Instruct"), 502)
    assert error["code"] == "upstream_unreachable"
    assert "could not be sent (POST http://127.0.0.1:" in error["message"]
    assert "/v1/openai/chat/completions)" in error["message"]
    assert "hunter3pass" not in error["message"] and "user:" not in error["message"]


def test_the_log_holds_no_secret_from_the_bases(base_gw: Gateway) -> None:
    logs = base_gw.logs()
    assert "hunter2pass" not in logs and "hunter3pass" not in logs
