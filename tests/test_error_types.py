"""One table maps statuses to OpenAI error types, for Turnout's own replies and for upstream
errors alike (a 401 is `invalid_request_error`, as OpenAI answers a bad key), and one function
builds every error body."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import orjson
import pytest
from litestar.testing import AsyncTestClient

from tests.oas import validate_error_body
from turnout.engine.errors import RequestError, UpstreamError, error_body, type_for_status
from turnout.engine.registry import DEFAULT_MAPPINGS_DIR as MAPPINGS
from turnout.engine.registry import MappingRegistry
from turnout.server.app import create_app
from turnout.server.config import Deployment, ModelAlias, Settings
from turnout.server.errors import error_bytes

REGISTRY = MappingRegistry.load()


@pytest.mark.parametrize(
    ("status", "type_"),
    [
        (400, "invalid_request_error"),
        (401, "invalid_request_error"),
        (403, "permission_error"),
        (404, "invalid_request_error"),
        (409, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
    ],
)
def test_the_table(status: int, type_: str) -> None:
    assert type_for_status(status) == type_


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "openai", "groq", "bedrock"])
@pytest.mark.parametrize("status", [401, 403, 404, 429, 500])
def test_upstream_errors_take_their_type_from_the_same_table(provider: str, status: int) -> None:
    mapping = REGISTRY.get(provider)
    assert mapping is not None
    error = mapping.parse_error(status, b'{"error": {"message": "nope"}}', {})
    assert isinstance(error, UpstreamError)
    assert error.type == type_for_status(error.status)
    validate_error_body(error.to_body())


def test_one_builder_for_every_body() -> None:
    expected = {"error": {"message": "m", "type": "t", "param": "p", "code": "c"}}
    assert error_body("m", "t", "p", "c") == expected
    assert RequestError(400, "m", param="p", code="c", type="t").to_body() == expected
    assert orjson.loads(error_bytes("m", type_="t", param="p", code="c")) == expected
    bare = error_body("m", "t")
    assert bare["error"]["param"] is None and bare["error"]["code"] is None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_mapping_that_fails_to_render_is_our_500_not_an_upstream_failure(
    tmp_path: Path,
) -> None:
    """Turnout's own defect is an InternalError: a 500 `mapping_error` naming the mapping, no
    upstream call, and the deployment is not cooled down as if its provider had failed."""
    folder = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, folder)
    broken = folder / "groq.yaml"
    # Renders fine at load time, fails at request time (temperature unset -> 1 // 0).
    broken.write_text(
        broken.read_text(encoding="utf-8")
        + 'request:\n  body:\n    seed: "{{ 1 // (req.temperature or 0) }}"\n',
        encoding="utf-8",
    )
    calls: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500)

    alias = ModelAlias(deployments=[Deployment(model="groq/llama")])
    settings = Settings(
        store="memory://", models={"fast": alias}, mappings_dir=str(folder),
        env={"GROQ_API_KEY": "gsk-test"},
    )  # fmt: skip
    app = create_app(settings, transport=httpx.MockTransport(upstream))
    async with AsyncTestClient(app=app) as client:
        for model in ("groq/llama", "fast", "fast"):
            reply = await client.post("/v1/responses", json={"model": model, "input": "hi"})
            assert reply.status_code == 500, reply.text
            body = reply.json()
            validate_error_body(body)
            assert body["error"]["code"] == "mapping_error"
            assert body["error"]["type"] == "server_error"
            assert "mapping 'groq' failed to render the request" in body["error"]["message"]
            assert "Traceback" not in reply.text
        health = (await client.get("/health/deployments")).json()
    assert calls == []
    (state,) = health["deployments"]
    assert state["state"] == "healthy" and state["failures_total"] == 0, state
    assert state["in_flight"] == 0, state
