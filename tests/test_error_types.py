"""One table maps statuses to OpenAI error types, for Turnout's own replies and for upstream
errors alike (a 401 is `invalid_request_error`, as OpenAI answers a bad key), and one function
builds every error body."""

from __future__ import annotations

import orjson
import pytest

from tests.oas import validate_error_body
from turnout.engine.errors import RequestError, UpstreamError, error_body, type_for_status
from turnout.engine.registry import MappingRegistry
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
