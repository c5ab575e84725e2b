"""The providers' token-counting endpoints: what each refuses and what it answers.

OpenAI `POST …/responses/input_tokens`, Anthropic `POST /v1/messages/count_tokens` (Vertex:
`…/publishers/anthropic/models/count-tokens:rawPredict`), Gemini `models/{m}:countTokens` (AI
Studio and Vertex take different bodies), Bedrock `POST /model/{id}/count-tokens`. Each body is
checked the way the provider checks it, then the dialect's create validator judges the request
inside. The count is deterministic: `prompt_chars` of the body as received, so a test computes
the number from the recorded request.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import botocore.session
from botocore.model import Shape
from botocore.validate import ParamValidator

from .cloud import validate_vertex_gemini
from .errors import Invalid
from .turn import prompt_chars
from .validate_anthropic import validate_anthropic
from .validate_bedrock import validate_bedrock
from .validate_gemini import validate_gemini
from .validate_responses import validate_responses

__all__ = ["COUNT_OPERATION", "count_reply", "validate_count"]

COUNT_OPERATION = "count_tokens"

# OpenAI's TokenCountsBody (the OpenAPI document's properties).
_RESPONSES_FIELDS = frozenset(
    {
        "model", "input", "previous_response_id", "tools", "text", "reasoning", "truncation",
        "instructions", "personality", "conversation", "tool_choice", "parallel_tool_calls",
    }
)  # fmt: skip
# Messages fields count_tokens refuses: they only shape generation.
_ANTHROPIC_GENERATION = (
    "max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences", "metadata",
    "service_tier",
)  # fmt: skip
_GEMINI_FIELDS = frozenset({"contents", "generateContentRequest"})
_VERTEX_FIELDS = frozenset(
    {"model", "instances", "contents", "systemInstruction", "tools", "generationConfig"}
)


def _unknown_gemini(name: str) -> Invalid:
    return Invalid(f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.')


def _anthropic(headers: Mapping[str, str], body: dict[str, Any]) -> None:
    for key in _ANTHROPIC_GENERATION:
        if key in body:
            raise Invalid(f"{key}: Extra inputs are not permitted")
    # The create validator wants max_tokens; lend it one above any thinking budget.
    budget = (body.get("thinking") or {}).get("budget_tokens")
    lent = (budget if isinstance(budget, int) else 0) + 4096
    validate_anthropic(headers, {**body, "max_tokens": lent})


def _gemini(headers: Mapping[str, str], query: Mapping[str, str], model: str, body: Any) -> None:
    for key in body:
        if key not in _GEMINI_FIELDS:
            raise _unknown_gemini(key)
    if "generateContentRequest" in body:
        if "contents" in body:
            raise Invalid("contents and generateContentRequest cannot both be set.")
        inner = body["generateContentRequest"]
        if not isinstance(inner, dict) or inner.get("model") != f"models/{model}":
            raise Invalid(
                "generateContentRequest.model is required and must name the model of the URL "
                f"(models/{model})."
            )
        validate_gemini(headers, query, inner)
    else:
        validate_gemini(headers, query, {"contents": body.get("contents")})


def _vertex_gemini(query: Mapping[str, str], body: dict[str, Any]) -> None:
    for key in body:
        if key not in _VERTEX_FIELDS:
            raise _unknown_gemini(key)
    content = _VERTEX_FIELDS - {"model", "instances"}  # what the Gemini validator judges
    validate_vertex_gemini(query, {k: v for k, v in body.items() if k in content})


@cache
def _bedrock_shape() -> Shape:
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("CountTokens").input_shape
    assert shape is not None
    return shape


def _bedrock(model: str, body: dict[str, Any]) -> None:
    if "modelId" in body:
        raise Invalid('Unknown parameter in input: "modelId"', kind="ValidationException")
    report = ParamValidator().validate({"modelId": model, **body}, _bedrock_shape())
    if report.has_errors():
        lines = report.generate_report().splitlines()
        raise Invalid(
            f"{len(lines)} validation error(s) detected: " + " ".join(lines),
            kind="ValidationException",
        )
    converse = (body.get("input") or {}).get("converse")
    if converse is None:
        raise Invalid("input: give converse or invokeModel", kind="ValidationException")
    validate_bedrock(model, converse, False)  # the Converse rules on what it carries


def _responses(headers: Mapping[str, str], body: dict[str, Any]) -> None:
    for key in body:
        if key not in _RESPONSES_FIELDS:
            raise Invalid(f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
    validate_responses(headers, body)


def validate_count(
    dialect: str,
    platform: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    model: str | None,
    body: Any,
) -> None:
    """Refuse what the provider's counting endpoint refuses (`Invalid`)."""
    if not isinstance(body, dict):
        raise Invalid("The request body must be a JSON object.")
    if dialect == "anthropic":
        if platform == "vertex":  # the one count-tokens model: the model is in the body
            headers = {"x-api-key": "vertex", "anthropic-version": "2023-06-01"}
        _anthropic(headers, body)
    elif dialect == "gemini" and platform == "vertex":
        _vertex_gemini(query, body)
    elif dialect == "gemini":
        assert model is not None
        _gemini(headers, query, model, body)
    elif dialect == "bedrock":
        assert model is not None
        _bedrock(model, body)
    elif dialect == "responses":
        _responses(headers, body)
    else:
        raise Invalid(f"{dialect} has no token counting endpoint", status=404)


def count_reply(dialect: str, body: Any) -> dict[str, Any]:
    """The provider's answer: `prompt_chars(body)` tokens, in its own shape."""
    n = prompt_chars(body)
    if dialect == "anthropic":
        return {"input_tokens": n}
    if dialect == "gemini":
        return {"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]}
    if dialect == "bedrock":
        return {"inputTokens": n}
    return {"object": "response.input_tokens", "input_tokens": n}
