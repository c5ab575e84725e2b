"""Base URLs as providers print them: every documented form of a provider's `api_base` (config
`api_base` or `<PROVIDER>_API_BASE`) renders the one exact upstream URL, never `/v1/v1`.

The forms come from each provider's own documentation; the normalising rules live in the
mappings (`provider.api_base_path`, engine/api_base.py). Also: what an upstream error may show
of the URL it called (`called_url`), and that a 404 or an unreachable host names it.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_request_roundtrip import CREDENTIALS
from turnout.engine.api_base import BaseNormalizer, compile_base_path
from turnout.engine.canonical import normalize
from turnout.engine.errors import MappingError, UpstreamError
from turnout.engine.mapping import load_mapping
from turnout.engine.registry import MappingRegistry
from turnout.server.upstream import Upstream, broken_reply, called_url

REGISTRY = MappingRegistry.load()
ROOT = Path(__file__).resolve().parents[1]

CHAT = "/chat/completions"
# (provider, model, documented base forms, the URL every form must render), non-streamed.
FORMS: list[tuple[str, str, list[str], str]] = [
    ("openai", "gpt-4.1",
     ["https://api.openai.com/v1", "https://api.openai.com/v1/", "https://api.openai.com",
      "https://api.openai.com/"],
     "https://api.openai.com/v1/responses"),
    ("openai_chat", "gpt-4o-mini",
     ["https://api.openai.com/v1", "https://api.openai.com/v1/", "https://api.openai.com"],
     "https://api.openai.com/v1" + CHAT),
    ("groq", "llama-3.3-70b-versatile",
     ["https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1/",
      "https://api.groq.com/openai", "https://api.groq.com"],
     "https://api.groq.com/openai/v1" + CHAT),
    ("openrouter", "openai/gpt-4o",
     ["https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1/", "https://openrouter.ai/api",
      "https://openrouter.ai"],
     "https://openrouter.ai/api/v1" + CHAT),
    ("fireworks", "accounts/fireworks/models/llama-v3p1-8b-instruct",
     ["https://api.fireworks.ai/inference/v1", "https://api.fireworks.ai/inference/v1/",
      "https://api.fireworks.ai/inference", "https://api.fireworks.ai"],
     "https://api.fireworks.ai/inference/v1" + CHAT),
    ("deepinfra", "meta-llama/Llama-3.3-70B-Instruct",
     ["https://api.deepinfra.com/v1/openai", "https://api.deepinfra.com/v1/openai/",
      "https://api.deepinfra.com/v1", "https://api.deepinfra.com"],
     "https://api.deepinfra.com/v1/openai" + CHAT),
    ("dashscope", "qwen-plus",
     ["https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
      "https://dashscope-intl.aliyuncs.com/compatible-mode/v1/",
      "https://dashscope-intl.aliyuncs.com/compatible-mode", "https://dashscope-intl.aliyuncs.com"],
     "https://dashscope-intl.aliyuncs.com/compatible-mode/v1" + CHAT),
    ("dashscope", "qwen-plus",
     ["https://dashscope.aliyuncs.com/compatible-mode/v1", "https://dashscope.aliyuncs.com"],
     "https://dashscope.aliyuncs.com/compatible-mode/v1" + CHAT),
    # DeepSeek documents both bases; both serve /chat/completions as given.
    ("deepseek", "deepseek-chat", ["https://api.deepseek.com", "https://api.deepseek.com/"],
     "https://api.deepseek.com" + CHAT),
    ("deepseek", "deepseek-chat", ["https://api.deepseek.com/v1", "https://api.deepseek.com/v1/"],
     "https://api.deepseek.com/v1" + CHAT),
    # Sonar lives at the root; the /v1 of Perplexity's Agent API docs is dropped.
    ("perplexity", "sonar",
     ["https://api.perplexity.ai", "https://api.perplexity.ai/", "https://api.perplexity.ai/v1",
      "https://api.perplexity.ai/v1/"],
     "https://api.perplexity.ai" + CHAT),
    ("mistral", "mistral-small-latest",
     ["https://api.mistral.ai/v1", "https://api.mistral.ai/v1/", "https://api.mistral.ai"],
     "https://api.mistral.ai/v1" + CHAT),
    ("xai", "grok-3-mini", ["https://api.x.ai/v1", "https://api.x.ai/v1/", "https://api.x.ai"],
     "https://api.x.ai/v1" + CHAT),
    ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo",
     ["https://api.together.xyz/v1", "https://api.together.xyz/v1/", "https://api.together.xyz"],
     "https://api.together.xyz/v1" + CHAT),
    ("cerebras", "llama3.1-8b",
     ["https://api.cerebras.ai/v1", "https://api.cerebras.ai/v1/", "https://api.cerebras.ai"],
     "https://api.cerebras.ai/v1" + CHAT),
    ("hyperbolic", "meta-llama/Llama-3.3-70B-Instruct",
     ["https://api.hyperbolic.xyz/v1", "https://api.hyperbolic.xyz/v1/",
      "https://api.hyperbolic.xyz"],
     "https://api.hyperbolic.xyz/v1" + CHAT),
    ("moonshot", "kimi-k2-0711-preview",
     ["https://api.moonshot.ai/v1", "https://api.moonshot.ai/v1/", "https://api.moonshot.ai"],
     "https://api.moonshot.ai/v1" + CHAT),
    ("nebius", "meta-llama/Llama-3.3-70B-Instruct",
     ["https://api.studio.nebius.com/v1", "https://api.studio.nebius.com/v1/",
      "https://api.studio.nebius.com"],
     "https://api.studio.nebius.com/v1" + CHAT),
    ("nvidia_nim", "meta/llama-3.1-8b-instruct",
     ["https://integrate.api.nvidia.com/v1", "https://integrate.api.nvidia.com/v1/",
      "https://integrate.api.nvidia.com"],
     "https://integrate.api.nvidia.com/v1" + CHAT),
    ("sambanova", "Meta-Llama-3.1-8B-Instruct",
     ["https://api.sambanova.ai/v1", "https://api.sambanova.ai/v1/", "https://api.sambanova.ai"],
     "https://api.sambanova.ai/v1" + CHAT),
    ("ollama", "llama3.2",
     ["http://localhost:11434", "http://localhost:11434/", "http://localhost:11434/v1",
      "http://localhost:11434/v1/"],
     "http://localhost:11434/v1" + CHAT),
    ("vllm", "Qwen/Qwen2.5-1.5B-Instruct",
     ["http://gpu-box:8000/v1", "http://gpu-box:8000/v1/", "http://gpu-box:8000"],
     "http://gpu-box:8000/v1" + CHAT),
    ("llamacpp", "local",
     ["http://localhost:8080", "http://localhost:8080/v1", "http://localhost:8080/v1/"],
     "http://localhost:8080/v1" + CHAT),
    ("lm_studio", "qwen3-8b",
     ["http://localhost:1234/v1", "http://localhost:1234/v1/", "http://localhost:1234"],
     "http://localhost:1234/v1" + CHAT),
    # A proxy's own path prefix is not the provider's: kept as given.
    ("vllm", "m", ["https://proxy.example.com/vllm", "https://proxy.example.com/vllm/"],
     "https://proxy.example.com/vllm" + CHAT),
    ("groq", "m", ["https://gw.example.com/groq/v1"], "https://gw.example.com/groq/v1" + CHAT),
    ("anthropic", "claude-sonnet-4-5",
     ["https://api.anthropic.com", "https://api.anthropic.com/", "https://api.anthropic.com/v1",
      "https://api.anthropic.com/v1/"],
     "https://api.anthropic.com/v1/messages"),
    ("gemini", "gemini-2.5-flash",
     ["https://generativelanguage.googleapis.com", "https://generativelanguage.googleapis.com/",
      "https://generativelanguage.googleapis.com/v1beta",
      "https://generativelanguage.googleapis.com/v1beta/"],
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"),
    ("vertex_ai", "gemini-2.5-flash",
     ["", "https://us-east5-aiplatform.googleapis.com",
      "https://us-east5-aiplatform.googleapis.com/", "https://us-east5-aiplatform.googleapis.com/v1"],
     "https://us-east5-aiplatform.googleapis.com/v1/projects/p/locations/us-east5/publishers/"
     "google/models/gemini-2.5-flash:generateContent"),
    ("vertex_ai", "claude-sonnet-4-5@20250929",
     ["", "https://us-east5-aiplatform.googleapis.com/v1/"],
     "https://us-east5-aiplatform.googleapis.com/v1/projects/p/locations/us-east5/publishers/"
     "anthropic/models/claude-sonnet-4-5@20250929:rawPredict"),
    ("bedrock", "us.amazon.nova-micro-v1:0",
     ["", "https://bedrock-runtime.us-east-1.amazonaws.com",
      "https://bedrock-runtime.us-east-1.amazonaws.com/"],
     "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.amazon.nova-micro-v1:0/converse"),
    # Azure OpenAI: the portal's endpoint, with or without /openai, or the v1 SDK base_url.
    ("azure", "my-gpt-4o",
     ["https://res.openai.azure.com", "https://res.openai.azure.com/",
      "https://res.openai.azure.com/openai", "https://res.openai.azure.com/openai/v1",
      "https://res.openai.azure.com/openai/v1/"],
     "https://res.openai.azure.com/openai/v1/responses"),
    ("azure", "my-gpt-4o",
     ["https://res.cognitiveservices.azure.com/", "https://res.cognitiveservices.azure.com/openai/v1/"],
     "https://res.cognitiveservices.azure.com/openai/v1/responses"),
    ("azure_chat", "gpt-4o-mini",
     ["https://res.openai.azure.com", "https://res.openai.azure.com/",
      "https://res.openai.azure.com/openai", "https://res.openai.azure.com/openai/",
      "https://res.openai.azure.com/openai/v1/"],
     "https://res.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions"
     "?api-version=2024-10-21"),
    # Azure AI Foundry: the resource's models endpoint exactly as the portal shows it...
    ("azure_ai", "Mistral-Large-2411",
     ["https://res.services.ai.azure.com/models", "https://res.services.ai.azure.com/models/",
      "https://res.services.ai.azure.com", "https://res.services.ai.azure.com/"],
     "https://res.services.ai.azure.com/models/chat/completions?api-version=2024-05-01-preview"),
    # ... and a serverless deployment, which serves /chat/completions at its root.
    ("azure_ai", "Meta-Llama-3.1-70B-Instruct",
     ["https://Meta-Llama-3-1-70B-abcd.eastus2.models.ai.azure.com",
      "https://Meta-Llama-3-1-70B-abcd.eastus2.models.ai.azure.com/"],
     "https://Meta-Llama-3-1-70B-abcd.eastus2.models.ai.azure.com/chat/completions"
     "?api-version=2024-05-01-preview"),
]  # fmt: skip

CASES = [
    pytest.param(provider, model, base, url, id=f"{provider}:{base or '(default)'}")
    for provider, model, bases, url in FORMS
    for base in bases
]


def _settings(provider: str, model: str, **extra: Any) -> dict[str, Any]:
    """The settings the gateway would resolve with nothing configured (the mapping defaults),
    plus the required Vertex ones."""
    mapping = REGISTRY.resolve(provider, model)
    assert mapping is not None
    declared = mapping.defaults.get("settings") or {}
    settings = {k: v.get("default") for k, v in declared.items()}
    settings.update({"project": "p", "location": "us-east5", "region": "us-east-1"}, **extra)
    return settings


def render(provider: str, model: str, base: str, *, stream: bool = False, **settings: Any) -> str:
    mapping = REGISTRY.resolve(provider, model)
    assert mapping is not None
    # The gateway passes the mapping's default when nothing is configured.
    api_base = base or str(mapping.defaults.get("api_base") or "")
    request = normalize({"model": f"{provider}/{model}", "input": "hi", "stream": stream})
    return mapping.build_request(
        request, model=model, api_base=api_base, credentials=CREDENTIALS,
        settings=_settings(provider, model, **settings),
    ).url  # fmt: skip


@pytest.mark.parametrize(("provider", "model", "base", "url"), CASES)
def test_every_documented_base_form_renders_the_one_url(
    provider: str, model: str, base: str, url: str
) -> None:
    assert render(provider, model, base) == url


def test_every_provider_has_its_base_forms_listed() -> None:
    assert set(REGISTRY.providers) <= {provider for provider, *_ in FORMS}


@pytest.mark.parametrize("provider", REGISTRY.providers)
def test_the_default_base_is_already_in_normal_form(provider: str) -> None:
    mapping = REGISTRY.get(provider)
    assert mapping is not None
    base = str(mapping.defaults.get("api_base") or "")
    assert mapping.normalize_base(base) == base


@pytest.mark.parametrize(("provider", "model", "base", "url"), CASES)
def test_normalising_is_idempotent(provider: str, model: str, base: str, url: str) -> None:
    mapping = REGISTRY.resolve(provider, model)
    assert mapping is not None
    once = mapping.normalize_base(base)
    assert mapping.normalize_base(once) == once


@pytest.mark.parametrize(
    ("provider", "model", "base", "url"),
    [
        ("gemini", "gemini-2.5-flash", "https://generativelanguage.googleapis.com/v1beta/",
         "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:"
         "streamGenerateContent?alt=sse"),
        ("groq", "m", "https://api.groq.com", "https://api.groq.com/openai/v1" + CHAT),
        ("vertex_ai", "gemini-2.5-flash", "https://us-east5-aiplatform.googleapis.com/v1",
         "https://us-east5-aiplatform.googleapis.com/v1/projects/p/locations/us-east5/"
         "publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
        ("vertex_ai", "claude-x", "https://us-east5-aiplatform.googleapis.com/v1",
         "https://us-east5-aiplatform.googleapis.com/v1/projects/p/locations/us-east5/"
         "publishers/anthropic/models/claude-x:streamRawPredict"),
    ],
)  # fmt: skip
def test_streamed_urls(provider: str, model: str, base: str, url: str) -> None:
    assert render(provider, model, base, stream=True) == url


def test_azure_api_version_form_takes_the_same_bases() -> None:
    for base in ("https://res.openai.azure.com/", "https://res.openai.azure.com/openai/v1/"):
        assert render("azure", "d", base, api_version="2025-04-01-preview") == (
            "https://res.openai.azure.com/openai/responses?api-version=2025-04-01-preview"
        )


# -- the normaliser on its own -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("", ""),
        ("x", "x"),  # not a URL: as given (the old behaviour)
        ("http://upstream/", "http://upstream/v1"),
        ("http://upstream/v", "http://upstream/v"),  # `/v` is no segment of /v1
        ("http://upstream/v1", "http://upstream/v1"),
        ("http://upstream/v1//", "http://upstream/v1"),
        ("  http://upstream/v1/ ", "http://upstream/v1"),
        ("http://user:pw@upstream:81", "http://user:pw@upstream:81/v1"),
        ("http://[::1]:8000", "http://[::1]:8000/v1"),
        ("http://upstream/?x=1", "http://upstream/?x=1"),  # a query: left as configured
    ],
)
def test_complete(base: str, expected: str) -> None:
    assert compile_base_path({"complete": "/v1"})(base) == expected


def test_strip_takes_the_longest_suffix_once() -> None:
    normalise = compile_base_path({"strip": ["/openai", "/openai/v1"]})
    assert normalise("https://r.openai.azure.com/openai/v1") == "https://r.openai.azure.com"
    assert normalise("https://r.openai.azure.com/myopenai") == "https://r.openai.azure.com/myopenai"
    assert normalise("https://p/openai/openai") == "https://p/openai"


def test_ensure_and_host_rules() -> None:
    normalise = compile_base_path(
        {"ensure": "/models", "hosts": [{"match": r"\.models\.ai\.azure\.com$", "strip": ["/v1"]}]}
    )
    assert normalise("https://r.services.ai.azure.com") == "https://r.services.ai.azure.com/models"
    assert normalise("https://r.services.ai.azure.com/models/") == (
        "https://r.services.ai.azure.com/models"
    )
    assert normalise("https://proxy/foundry") == "https://proxy/foundry/models"
    # Host rules replace the default rule and match case-insensitively.
    assert (
        normalise("https://X.eastus.MODELS.ai.azure.com/v1/")
        == "https://X.eastus.MODELS.ai.azure.com"
    )


def test_no_rule_only_drops_trailing_slashes() -> None:
    assert BaseNormalizer()("https://api.example.com/v1/") == "https://api.example.com/v1"


def _mapping_with(tmp_path: Path, block: str) -> Path:
    shutil.copytree(ROOT / "mappings/_dialects", tmp_path / "_dialects")
    path = tmp_path / "acme.yaml"
    path.write_text(
        "version: 1\nextends: _dialects/openai_chat\nprovider:\n"
        f"  api_base: https://api.acme.test/v1\n{block}",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("block", "needle"),
    [
        ("  api_base_path: {complete: v1}\n", "api_base_path.complete"),
        ("  api_base_path: {strip: [/v1/]}\n", "api_base_path.strip"),
        ("  api_base_path: {stripp: [/v1]}\n", "api_base_path.stripp"),
        ("  api_base_path: {hosts: [{match: '(['}]}\n", "bad host regex"),
    ],
)
def test_lint_rejects_a_broken_api_base_path(tmp_path: Path, block: str, needle: str) -> None:
    with pytest.raises(MappingError) as raised:
        load_mapping(_mapping_with(tmp_path, block), tmp_path)
    assert needle in "\n".join(str(p) for p in raised.value.problems)


# -- what an error may show of the URL called -----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://generativelanguage.googleapis.com/v1beta/models/g:generateContent?key=AIzaSECRET",
         "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent"),
        ("https://user:hunter2@proxy.example.com:8443/v1/chat/completions?x=1#frag",
         "https://proxy.example.com:8443/v1/chat/completions"),
        ("http://[::1]:8000/v1/chat/completions", "http://[::1]:8000/v1/chat/completions"),
        ("https://res.services.ai.azure.com/models/chat/completions?api-version=2024-05-01-preview",
         "https://res.services.ai.azure.com/models/chat/completions"),
    ],
)  # fmt: skip
def test_called_url_keeps_scheme_host_port_and_path_only(url: str, shown: str) -> None:
    assert called_url(url) == shown


class _Call:
    method = "POST"
    body = b"{}"
    stream = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.headers = {"authorization": "Bearer sk-live-secret-0123456789"}


class _Errors:
    provider = "acme"

    def parse_error(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        return UpstreamError(status, f"acme: acme answered HTTP {status}", provider="acme")


URL = "https://user:pw@api.acme.test/v1/v1/chat/completions?key=AIzaSyQUERYSECRET0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _upstream(handler: Any) -> Upstream:
    return Upstream(transport=httpx.MockTransport(handler))


@pytest.mark.anyio
@pytest.mark.parametrize("status", [404, 405])
async def test_a_404_names_the_url_called(status: int) -> None:
    upstream = _upstream(lambda request: httpx.Response(status, text="<html>Not Found</html>"))
    with pytest.raises(UpstreamError) as raised:
        await upstream.send(_Call(URL), _Errors())
    message = raised.value.message
    assert "(called POST https://api.acme.test/v1/v1/chat/completions;" in message
    assert "api_base" in message and str(raised.value).endswith(message)
    assert "key=" not in message and "QUERYSECRET" not in message and "user:pw" not in message


@pytest.mark.anyio
async def test_other_statuses_do_not_name_the_url() -> None:
    upstream = _upstream(lambda request: httpx.Response(401, json={"error": "no"}))
    with pytest.raises(UpstreamError) as raised:
        await upstream.send(_Call(URL), _Errors())
    assert "api.acme.test" not in raised.value.message


@pytest.mark.anyio
async def test_an_unreachable_host_names_the_url_called() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(UpstreamError) as raised:
        await _upstream(refuse).send(_Call(URL), _Errors())
    error = raised.value
    assert (error.status, error.code) == (502, "upstream_unreachable")
    assert "POST https://api.acme.test/v1/v1/chat/completions" in error.message
    assert "QUERYSECRET" not in error.message and "pw@" not in error.message


class _CutBody(httpx.AsyncByteStream):
    """A body that delivers some bytes, then loses its connection."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"partial": '
        raise httpx.ReadError("Response payload is not completed")


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "what"), [(200, "reply"), (503, "HTTP 503 reply")])
async def test_a_body_cut_after_the_status_is_not_unreachable(status: int, what: str) -> None:
    upstream = _upstream(lambda request: httpx.Response(status, stream=_CutBody()))
    with pytest.raises(UpstreamError) as raised:
        await upstream.send(_Call(URL), _Errors())
    error = raised.value
    assert (error.status, error.code) == (502, "upstream_incomplete")
    assert error.message == (
        f"acme: the upstream {what} ended before the response was complete "
        "(connection closed after 12 bytes)"
    )


def test_a_failure_after_the_reply_started_names_no_url() -> None:
    # The provider answered: a break is its reply ending early, never "could not reach".
    error = broken_reply(
        httpx.ReadError("reset"), "acme", what="stream", received="3 events", read_timeout_s=600
    )
    assert (error.status, error.code) == (502, "upstream_incomplete")
    message = "acme: the upstream stream ended before the response was complete (connection "
    assert error.message == message + "closed after 3 events)"
    stall = httpx.ReadTimeout("slow")
    stall.__cause__ = TimeoutError()
    error = broken_reply(stall, "acme", what="reply", received="10 bytes", read_timeout_s=2.5)
    assert (error.status, error.code) == (504, "upstream_timeout")
    assert error.message == (
        "acme: the upstream stopped sending for 2.5 s before the response was complete "
        "(after 10 bytes)"
    )
