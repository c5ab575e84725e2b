"""Native error bodies, one shape per dialect, and the exception validators raise."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BEDROCK_ERRORS",
    "Dialect",
    "Invalid",
    "default_error_headers",
    "error_body",
    "require_bearer",
]

# The wire dialects the simulator speaks; a URL path picks one.
Dialect = str  # "anthropic" | "gemini" | "chat" | "responses" | "bedrock"

_request_ids = itertools.count(1)


class Invalid(Exception):
    """A request the real provider would refuse; rendered in the dialect's native error body."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.kind = kind  # overrides the dialect's default error type for the status


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ANTHROPIC_MESSAGES = {
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_GOOGLE_MESSAGES = {
    429: "You exceeded your current quota, please check your plan and billing details.",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
    500: "server_error",
    503: "server_error",
}
_OPENAI_CODES = {429: "rate_limit_exceeded", 404: "model_not_found"}
_OPENAI_MESSAGES = {
    429: "Rate limit reached for requests. Please try again in 7s.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The server is overloaded or not ready yet.",
}


# Bedrock (AWS rest-json): the body is just {"message"}; the type rides in x-amzn-ErrorType.
BEDROCK_ERRORS = {
    400: ("ValidationException", "The provided request is not valid"),
    403: (
        "AccessDeniedException",
        "You don't have access to the model with the specified model ID.",
    ),
    404: ("ResourceNotFoundException", "The requested resource could not be found."),
    408: ("ModelTimeoutException", "Model has timed out in processing the request."),
    424: ("ModelErrorException", "The model returned an error."),
    429: ("ThrottlingException", "Too many requests, please wait before trying again."),
    500: ("InternalServerException", "The server encountered an internal error."),
    503: ("ServiceUnavailableException", "Bedrock is unable to process your request."),
}


def require_bearer(headers: Mapping[str, str]) -> None:
    """OpenAI's own 401 for a request without `Authorization: Bearer <key>` (Chat and
    Responses APIs alike)."""
    auth = headers.get("authorization", "")
    if not auth.startswith("Bearer ") or not auth[7:].strip():
        raise Invalid(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            status=401,
        )


def anthropic_request_id() -> str:
    return f"req_sim{next(_request_ids):016d}"


def error_body(dialect: Dialect, status: int, exc: Invalid | None = None) -> dict[str, Any]:
    """The provider's own error envelope for `status` (with `exc`'s details when given)."""
    if dialect == "anthropic":
        kind = (exc and exc.kind) or _ANTHROPIC_TYPES.get(status, "api_error")
        message = exc.message if exc else _ANTHROPIC_MESSAGES.get(status, kind)
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": anthropic_request_id(),
        }
    if dialect == "bedrock":
        return {"message": exc.message if exc else BEDROCK_ERRORS.get(status, ("", "Error"))[1]}
    if dialect == "gemini":
        message = exc.message if exc else _GOOGLE_MESSAGES.get(status, "Request failed.")
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": (exc and exc.kind) or _GOOGLE_STATUS.get(status, "UNKNOWN"),
        }
        if status == 429 and exc is None:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "34.4s"},
            ]
        elif status == 400 and exc is not None:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"description": exc.message}],
                }
            ]
        return {"error": error}
    message = exc.message if exc else _OPENAI_MESSAGES.get(status, f"HTTP {status}")
    return {
        "error": {
            "message": message,
            "type": (exc and exc.kind) or _OPENAI_TYPES.get(status, "server_error"),
            "param": exc.param if exc else None,
            "code": exc.code if exc else _OPENAI_CODES.get(status),
        }
    }


def default_error_headers(dialect: Dialect, status: int) -> dict[str, str]:
    """Retry hints the real providers send alongside an error status."""
    headers: dict[str, str] = {}
    if dialect == "anthropic":
        headers["request-id"] = anthropic_request_id()
        if status == 429:
            headers["retry-after"] = "7"
    elif dialect == "bedrock":
        headers["x-amzn-RequestId"] = f"00000000-0000-4000-8000-{next(_request_ids):012d}"
        headers["x-amzn-ErrorType"] = BEDROCK_ERRORS.get(status, ("InternalServerException",))[0]
    elif dialect in ("chat", "responses") and status == 429:
        headers["retry-after"] = "7"
        headers["retry-after-ms"] = "7000"
    return headers
