"""Turnout's exception hierarchy.

    TurnoutError
    ├── MappingError    a mapping (or any engine-loaded YAML) failed to load or lint; .problems
    ├── ConfigError     the server config file failed to load or validate; .problems
    ├── RequestError    the client sent something we cannot serve (4xx, OpenAI error body)
    └── UpstreamError   the provider failed (status, retry_after, provider; OpenAI error body)

``MappingError``/``ConfigError`` carry every problem found, not just the first, so one run
of ``turnout lint`` shows all of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from turnout.engine.diagnostics import Problem

__all__ = [
    "ConfigError",
    "InternalError",
    "MappingError",
    "RequestError",
    "TurnoutError",
    "UpstreamError",
    "error_body",
    "type_for_status",
]


class TurnoutError(Exception):
    """Base class of every error Turnout raises on purpose."""


def _problem_text(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems) or "(no problems recorded)"


class MappingError(TurnoutError):
    """Load/validation/lint problems in a mapping or other engine YAML file."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(_problem_text(self.problems))

    def __str__(self) -> str:
        return _problem_text(self.problems)


class ConfigError(TurnoutError):
    """Problems in the server config file (shape, unknown keys, unset ``${VAR}``...)."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__(_problem_text(self.problems))

    def __str__(self) -> str:
        return _problem_text(self.problems)


# OpenAI's `type` for each status, for every error that does not name its own: Turnout's own
# replies and upstream errors alike. OpenAI answers a bad key with a 401 `invalid_request_error`
# (code `invalid_api_key`), not Anthropic's `authentication_error`.
_TYPE_BY_STATUS: dict[int, str] = {
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


def type_for_status(status: int) -> str:
    """The OpenAI error `type` for an HTTP status: the one table."""
    if status >= 500:
        return "server_error"
    return _TYPE_BY_STATUS.get(status, "invalid_request_error")


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body, all four keys always present: the one builder."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class RequestError(TurnoutError):
    """A client mistake, answered as an OpenAI error body with ``status`` (4xx)."""

    def __init__(
        self,
        status: int = 400,
        message: str = "Invalid request.",
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",  # the OpenAI field name
        retry_after: float | None = None,  # seconds; sent as Retry-After with a 429
        # Extra reply headers (a key's `x-ratelimit-*`): names and values of our own, never
        # anything the client or a provider sent.
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.retry_after = retry_after
        self.headers = headers

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"RequestError(status={self.status!r}, message={self.message!r}, "
            f"param={self.param!r}, code={self.code!r}, type={self.type!r})"
        )

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.type, self.param, self.code)


class InternalError(TurnoutError):
    """A defect of Turnout itself (a mapping whose template fails to render), never the
    client's or the provider's: answered 500 ``server_error`` naming what failed, logged with its
    cause, and never counted against a deployment or retried elsewhere as if it were upstream."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, *, code: str, provider: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.provider = provider

    def __repr__(self) -> str:
        return f"InternalError(message={self.message!r}, code={self.code!r})"

    def to_body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, None, self.code)


class UpstreamError(TurnoutError):
    """A provider failure, already translated to the status/code Turnout will answer with."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        type: str = "upstream_error",  # the OpenAI field name
        retry_after: float | None = None,
        provider: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type
        self.retry_after = retry_after
        self.provider = provider
        # The upstream attempts that led here (set by the gateway's failover; no secrets).
        self.attempts: list[dict[str, Any]] = []

    def __str__(self) -> str:
        prefix = f"{self.provider}: " if self.provider else ""
        return f"{prefix}{self.status} {self.message}"

    def __repr__(self) -> str:
        return (
            f"UpstreamError(status={self.status!r}, message={self.message!r}, "
            f"code={self.code!r}, type={self.type!r}, retry_after={self.retry_after!r}, "
            f"provider={self.provider!r})"
        )

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error body; upstream errors never name a client ``param``."""
        return error_body(self.message, self.type, None, self.code)
