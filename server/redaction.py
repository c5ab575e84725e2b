"""Masking secrets in text: logs, telemetry records and upstream error messages.

Two nets: the exact values known to be secret (configured keys, secret-named environment
variables, the credentials of the call at hand), then patterns of common key shapes for values
Turnout never saw (a key quoted back by a provider from another account).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from turnout.engine.errors import UpstreamError

__all__ = [
    "MASK",
    "CallSecrets",
    "call_secrets",
    "mask_error",
    "mask_ops",
    "redact",
    "secret_values",
]

MASK = "***"
# Compiled once; formatting a log record must not build regexes.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), "sk-" + MASK),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]+"), "Bearer " + MASK),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"), MASK),  # Google API keys
    (
        re.compile(
            r"(?i)\b(x-api-key|x-goog-api-key|api[-_]?key|master[-_]?key|secret|token|password)"
            r"(['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"
        ),
        r"\1\2" + MASK,
    ),
)
_SECRET_ENV = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.IGNORECASE)


def secret_values(env: Mapping[str, str]) -> tuple[str, ...]:
    # Short values would mask ordinary words; real keys are long. Longest first so a key that
    # contains another is masked whole.
    values = {v for k, v in env.items() if _SECRET_ENV.search(k) and len(v) >= 8}
    return tuple(sorted(values, key=len, reverse=True))


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    for value in secrets:
        if value in text:
            text = text.replace(value, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# -- upstream calls: what a provider may quote back ----------------------------------------------

_AUTH_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key"})


class CallSecrets:
    """What to mask for one upstream call: worked out only when an error message needs it,
    never on the path of a reply that succeeds."""

    __slots__ = ("_credentials", "_headers", "_known", "_values")

    def __init__(
        self, headers: Mapping[str, str], credentials: Mapping[str, str], known: Sequence[str]
    ) -> None:
        self._headers, self._credentials, self._known = headers, credentials, known
        self._values: tuple[str, ...] | None = None

    def __call__(self) -> tuple[str, ...]:
        if self._values is None:
            self._values = (*call_secrets(self._headers, self._credentials), *self._known)
        return self._values


def call_secrets(headers: Mapping[str, str], credentials: Mapping[str, str]) -> tuple[str, ...]:
    """The credentials a call carries: the target's, and what its auth headers hold (tokens
    fetched for this request only exist there). Short values would mask words."""
    values = {v for v in credentials.values() if isinstance(v, str)}
    for name, value in headers.items():
        if name.lower() in _AUTH_HEADERS:
            values.add(value.partition(" ")[2] if value.lower().startswith("bearer ") else value)
    return tuple(sorted((v for v in values if len(v) >= 8), key=len, reverse=True))


def mask_ops(
    ops: list[dict[str, Any]], secrets: Callable[[], Sequence[str]]
) -> list[dict[str, Any]]:
    """In-band error ops with their message and code masked (the builder prints both; every
    other op passes untouched)."""
    for op in ops:
        if op.get("op") == "error":
            for key in ("message", "code", "type"):
                value = op.get(key)
                if value is not None:
                    text = value if isinstance(value, str) else str(value)
                    op[key] = redact(text, secrets())
    return ops


def mask_error(exc: UpstreamError, secrets: Sequence[str]) -> None:
    """An upstream error's message and code masked in place (they reach the client, the store
    and the logs)."""
    exc.message = redact(exc.message, secrets)
    if exc.code is not None:
        exc.code = redact(exc.code, secrets)
    exc.args = (exc.message,)
