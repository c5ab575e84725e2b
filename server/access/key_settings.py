"""The settings a key or a team takes, checked: an admin body (JSON from the admin API, or
built by `turnout keys|teams`) against `schemas/admin.yaml` (Cerberus, the config file's
checker), refused with an OpenAI-shaped 400 naming the field.

One schema for the API and the CLI, so a setting the one refuses the other refuses too, with
the same words.
"""

from __future__ import annotations

from typing import Any

from turnout.engine.diagnostics import Problem
from turnout.engine.errors import RequestError
from turnout.engine.schema_check import check, load_schema
from turnout.engine.yamlstrict import LoadedYaml

__all__ = ["KEY_FIELDS", "TEAM_FIELDS", "key_settings", "new_team_settings", "team_settings"]

_SCHEMAS = load_schema("admin")
_KEY: dict[str, Any] = _SCHEMAS["key"]
_TEAM: dict[str, Any] = _SCHEMAS["team"]
_TEAM_CREATE: dict[str, Any] = {"name": {**_SCHEMAS["team_name"], "required": True}, **_TEAM}
KEY_FIELDS = tuple(_KEY)
TEAM_FIELDS = tuple(_TEAM)


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean"}  # fmt: skip


def _checked(body: Any, schema: dict[str, Any]) -> dict[str, Any]:
    if body is None:  # an empty body: nothing set
        return {}
    problems = check(LoadedYaml("<body>", body), schema)
    if problems:
        raise _refusal(problems[0], body)
    assert isinstance(body, dict)
    return dict(body)


def _refusal(problem: Problem, body: Any) -> RequestError:
    """The first problem as OpenAI words it: `Unknown parameter: 'x'.`, `Invalid value for
    'rpm': …`, with the schema's hint."""
    param = problem.key_path or None
    if param is None:
        kind = _JSON_TYPES.get(type(body), type(body).__name__)
        return RequestError(400, f"The body must be a JSON object, got {kind}.",
                            code="invalid_type")  # fmt: skip
    if problem.message == "unknown key":
        hint = problem.hint or ""
        hint = f" ({hint.replace('known keys', 'known parameters')})" if hint else ""
        return RequestError(
            400, f"Unknown parameter: '{param}'.{hint}", param=param, code="unknown_parameter"
        )
    message = problem.message
    if message.startswith("value does not match regex") and problem.hint:
        message = f"expected {problem.hint}"  # the pattern itself helps nobody
    elif problem.hint:
        message = f"{message} ({problem.hint})"
    return RequestError(
        400, f"Invalid value for '{param}': {message}.", param=param, code="invalid_value"
    )


def key_settings(body: Any) -> dict[str, Any]:
    """A key's settings from a create or update body (only the fields it sets; null clears)."""
    return _checked(body, _KEY)


def team_settings(body: Any) -> dict[str, Any]:
    """A team's settings from an update body (its name is not one: it names the team)."""
    return _checked(body, _TEAM)


def new_team_settings(body: Any) -> tuple[str, dict[str, Any]]:
    """The name and settings of a team create body."""
    settings = _checked(body if body is not None else {}, _TEAM_CREATE)
    return str(settings.pop("name")), settings
