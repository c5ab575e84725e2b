"""Masking secrets in text: logs, telemetry records and upstream error messages.

Two nets: the exact values known to be secret (configured keys, secret-named environment
variables, the credentials of the call at hand), then patterns of common key shapes for values
Turnout never saw (a key quoted back by a provider from another account).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = ["MASK", "redact", "secret_values"]

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
