"""The console's HTML forms to and from the admin API's bodies.

A form posts strings; `KeyAdmin` takes the admin API's JSON body and checks it against
`schemas/admin.yaml`. This turns one into the other (numbers parsed, an empty field: "not set"
when creating, "no limit" (null) when editing) so the console and the API share every rule.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from turnout.engine.errors import RequestError

__all__ = ["KEY_FIELDS", "form_values", "key_body", "parse_form"]

# Form field -> the admin body's field and how the text is read.
KEY_FIELDS = (
    "name", "team", "models", "max_budget_usd", "budget_period", "rpm", "tpm",
    "max_background", "expires", "unsupported_tools",
)  # fmt: skip
_INTS = ("rpm", "tpm", "max_background")
_LABELS = {
    "max_budget_usd": "Budget (USD)", "rpm": "Requests per minute", "tpm": "Tokens per minute",
    "max_background": "Background responses", "expires": "Expires",
}  # fmt: skip
_SPLIT = re.compile(r"[\s,]+")


def parse_form(raw: bytes) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (a repeated field: its last value)."""
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


def _invalid(field: str, what: str) -> RequestError:
    label = _LABELS.get(field, field)
    return RequestError(400, f"{label}: {what}.", param=field, code="invalid_value")


def _value(field: str, text: str) -> Any:
    if field == "models":
        return [m for m in _SPLIT.split(text) if m]
    if field in _INTS:
        try:
            return int(text)
        except ValueError:
            raise _invalid(field, "expected a whole number") from None
    if field == "max_budget_usd":
        try:
            return float(text)
        except ValueError:
            raise _invalid(field, "expected a number of dollars") from None
    if field == "expires":
        try:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise _invalid(field, "expected a date, YYYY-MM-DD") from None
        return int(day.timestamp())
    return text


def key_body(form: dict[str, str], *, creating: bool) -> dict[str, Any]:
    """The admin body of a key form. Creating: empty fields are left out (defaults); editing:
    an empty field is null (no limit, no expiry, any model)."""
    body: dict[str, Any] = {}
    for field in KEY_FIELDS:
        if field not in form:
            continue
        text = form[field].strip()
        target = "expires_at" if field == "expires" else field
        if not text:
            if not creating:
                body[target] = None
            continue
        body[target] = _value(field, text)
    return body


def form_values(key: dict[str, Any]) -> dict[str, str]:
    """A key's settings (as the admin API shows them) as the edit form's field values."""
    out: dict[str, str] = {}
    for field in KEY_FIELDS:
        value = key.get("expires_at" if field == "expires" else field)
        if value is None:
            out[field] = ""
        elif field == "models":
            out[field] = ", ".join(value)
        elif field == "expires":
            out[field] = datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d")
        elif field == "max_budget_usd":
            out[field] = f"{value:g}"
        else:
            out[field] = str(value)
    return out
