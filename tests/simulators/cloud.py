"""Cloud platforms in front of the model dialects: Bedrock, Vertex AI, Azure OpenAI, Foundry.

Each platform adds its own URL shape, auth and auth-error bodies around a dialect the simulator
already speaks (Vertex Gemini = Gemini, Vertex Claude = Anthropic, Azure = Chat / Responses),
except Bedrock, which is its own dialect. Paths below are relative to `/{label}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from .errors import Invalid
from .validate_anthropic import validate_anthropic
from .validate_chat import _COMPAT_FIELDS, _OPENAI_FIELDS, validate_chat
from .validate_gemini import validate_gemini
from .validate_responses import validate_responses

__all__ = [
    "AZURE_DENIED",
    "AZURE_NOT_FOUND",
    "FOUNDRY_NO_API_VERSION",
    "VERTEX_ANTHROPIC_VERSION",
    "CloudRoute",
    "azure_auth_ok",
    "match_cloud",
    "validate_azure",
    "validate_vertex_anthropic",
    "validate_vertex_gemini",
    "vertex_unauthenticated",
]

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
AZURE_DENIED = {
    "error": {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make "
        "sure to provide a valid key for an active subscription and use a correct regional API "
        "endpoint for your resource.",
    }
}
AZURE_NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}
FOUNDRY_NO_API_VERSION = {
    "error": {
        "code": "MissingApiVersionParameter",
        "message": "The api-version query parameter (?api-version=) is required for all requests.",
    }
}

_BEDROCK = re.compile(r"^/model/(?P<model>[^/]+)/(?P<op>converse|converse-stream|count-tokens)$")
_VERTEX = re.compile(
    r"^/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/(?P<publisher>google|anthropic)/models/(?P<model>[^/:]+)"
    r":(?P<method>generateContent|streamGenerateContent|countTokens|rawPredict|streamRawPredict)$"
)
_AZURE_V1 = re.compile(r"^/openai/v1/(?P<api>chat/completions|responses(?:/input_tokens)?)$")
_AZURE_LEGACY = re.compile(
    r"^/openai/(?:deployments/(?P<deployment>[^/]+)/)?"
    r"(?P<api>chat/completions|responses(?:/input_tokens)?)$"
)
_GEMINI_METHODS = ("generateContent", "streamGenerateContent", "countTokens")
_FOUNDRY = re.compile(r"^/models/chat/completions$")


@dataclass(frozen=True)
class CloudRoute:
    platform: str  # "bedrock" | "vertex" | "azure" | "foundry" | "oauth"
    dialect: str  # the body/reply dialect ("bedrock", "gemini", "anthropic", "chat", ...)
    model: str | None = None  # from the URL (Bedrock modelId, Vertex model, Azure deployment)
    stream: bool | None = None  # None: the body's `stream` decides
    method: str = ""  # Vertex method, Bedrock operation, Azure "v1" | "legacy"
    count: bool = False  # the platform's token-counting endpoint (counting.py)


def match_cloud(rest: str, raw_rest: str) -> CloudRoute | None:
    """The cloud route for a path below `/{label}`, or None for the plain dialect routes.

    `raw_rest` keeps percent-encoding: a Bedrock ARN model id carries an encoded `/`.
    """
    if rest == "/token":
        return CloudRoute("oauth", "oauth")
    if match := _BEDROCK.match(raw_rest):
        stream = match["op"] == "converse-stream"
        count = match["op"] == "count-tokens"
        model = unquote(match["model"])
        return CloudRoute("bedrock", "bedrock", model, stream, match["op"], count)
    if match := _VERTEX.match(rest):
        method = match["method"]
        dialect = "gemini" if match["publisher"] == "google" else "anthropic"
        if (dialect == "gemini") != (method in _GEMINI_METHODS):
            return CloudRoute("vertex", dialect, match["model"], None, f"bad:{method}")
        stream = method in ("streamGenerateContent", "streamRawPredict")
        # Claude counts on one model of its own: publishers/anthropic/models/count-tokens.
        count = method == "countTokens" or (match["model"] == "count-tokens" and not stream)
        return CloudRoute("vertex", dialect, match["model"], stream, method, count)
    if match := _AZURE_V1.match(rest):
        dialect = "chat" if match["api"] == "chat/completions" else "responses"
        count = match["api"].endswith("/input_tokens")
        return CloudRoute("azure", dialect, None, None, "v1", count)
    if match := _AZURE_LEGACY.match(rest):
        dialect = "chat" if match["api"] == "chat/completions" else "responses"
        if dialect == "chat" and match["deployment"] is None:
            return None
        count = match["api"].endswith("/input_tokens")
        return CloudRoute("azure", dialect, match["deployment"], None, "legacy", count)
    if _FOUNDRY.match(rest):
        return CloudRoute("foundry", "chat", None, None, "models")
    return None


# -- Vertex ----------------------------------------------------------------------------------


def vertex_unauthenticated(missing: bool) -> Invalid:
    """Google's 401 for a call without (or with a bad) OAuth2 access token."""
    detail = (
        "Request is missing required authentication credential."
        if missing
        else "Request had invalid authentication credentials."
    )
    return Invalid(
        f"{detail} Expected OAuth 2 access token, login cookie or other valid authentication "
        "credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        status=401,
        kind="UNAUTHENTICATED",
    )


def validate_vertex_gemini(query: Mapping[str, str], body: Any) -> None:
    if isinstance(body, dict):
        labels = body.get("labels")
        if labels is not None and not (
            isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
        ):
            raise Invalid("Invalid value at 'labels': expected a map of strings")
        body = {k: v for k, v in body.items() if k != "labels"}  # a Vertex-only field
        for content in body.get("contents") or []:
            if isinstance(content, dict) and content.get("role") not in ("user", "model"):
                raise Invalid("Please use a valid role: user, model.")
    # Auth was checked already; the Gemini validator wants an API key, so lend it one.
    validate_gemini({"x-goog-api-key": "vertex"}, query, body)


def validate_vertex_anthropic(model: str, stream: bool, body: Any) -> None:
    if not isinstance(body, dict):
        raise Invalid("Input should be a valid dictionary or object to extract fields from")
    if "model" in body:  # the model lives in the URL on Vertex
        raise Invalid("model: Extra inputs are not permitted")
    version = body.get("anthropic_version")
    if version is None:
        raise Invalid("anthropic_version: Field required")
    if version != VERTEX_ANTHROPIC_VERSION:
        raise Invalid(f"anthropic_version: Input should be '{VERTEX_ANTHROPIC_VERSION}'")
    if stream and body.get("stream") is not True:
        raise Invalid('stream: streamRawPredict requires "stream": true in the body')
    if not stream and body.get("stream") is True:
        raise Invalid("stream: rawPredict does not stream; use streamRawPredict")
    rest = {k: v for k, v in body.items() if k != "anthropic_version"}
    headers = {"x-api-key": "vertex", "anthropic-version": "2023-06-01"}
    validate_anthropic(headers, {**rest, "model": model})


# -- Azure OpenAI / Foundry ------------------------------------------------------------------


def azure_auth_ok(headers: Mapping[str, str], accepted: set[str] | None) -> bool:
    """`api-key: <key>` or `Authorization: Bearer <token>`; any value unless `accepted` is set."""
    key = headers.get("api-key", "").strip()
    auth = headers.get("authorization", "")
    if not key and auth.startswith("Bearer "):
        key = auth[7:].strip()
    return bool(key) and (accepted is None or key in accepted)


def validate_azure(route: CloudRoute, headers: Mapping[str, str], body: Any) -> None:
    """The dialect's own checks; auth was checked already, so lend the validator a bearer."""
    lent = {**headers, "authorization": "Bearer azure"}
    if isinstance(body, dict) and route.model is not None and "model" not in body:
        body = {**body, "model": route.model}  # a deployment URL names the model
    if route.platform == "foundry" and isinstance(body, dict):
        extra = [k for k in body if k not in _OPENAI_FIELDS and k not in _COMPAT_FIELDS]
        mode = headers.get("extra-parameters", "error").lower()
        if extra and mode not in ("pass-through", "drop"):
            raise Invalid(
                f"Extra parameters {extra} are not allowed when extra-parameters is not set or "
                "set to be 'error'. Set extra-parameters to 'pass-through' to pass to the model.",
                code="extra_parameters_not_allowed",
            )
        body = {k: v for k, v in body.items() if k not in extra}
    if route.dialect == "chat":
        validate_chat(lent, body)
    else:
        validate_responses(lent, body)
