"""Cerberus validation of a loaded YAML document, reported as located :class:`Problem` s.

Cerberus reports nested errors as a tree of group errors (``schema``, ``valuesrules``,
``keysrules``, ``anyof``...). We flatten that tree to one problem per leaf, dotted key path,
line/column from the loader's marks, and "did you mean" hints for unknown keys and
unallowed values. A rule may carry ``meta: {hint: "..."}`` to add a hint of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, ClassVar

import cerberus
from cerberus import errors as cerrors

from turnout.engine.diagnostics import PathKey, Problem, nearest
from turnout.engine.resources import bundled_dir
from turnout.engine.yamlstrict import LoadedYaml, load_yaml

__all__ = ["SCHEMAS_DIR", "check", "load_schema"]

SCHEMAS_DIR = bundled_dir("turnout.schemas")

_MESSAGES: Mapping[int, str] = cerrors.BasicErrorHandler.messages
_MESSAGES_OVERRIDE = {
    cerrors.REQUIRED_FIELD.code: "required key is missing",
    cerrors.UNKNOWN_FIELD.code: "unknown key",
    cerrors.NOT_NULLABLE.code: "must not be null",
    cerrors.EMPTY_NOT_ALLOWED.code: "must not be empty",
    cerrors.UNALLOWED_VALUE.code: "unallowed value {value!r}",
}


class _Validator(cerberus.Validator):  # type: ignore[misc]  # cerberus ships no type hints
    # YAML `true` is a Python bool, which is an int: do not let it pass as a number.
    types_mapping: ClassVar[dict[str, Any]] = dict(cerberus.Validator.types_mapping)
    types_mapping["integer"] = cerberus.TypeDefinition("integer", (int,), (bool,))
    types_mapping["float"] = cerberus.TypeDefinition("float", (float, int), (bool,))
    types_mapping["number"] = cerberus.TypeDefinition("number", (float, int), (bool,))


@cache
def _load_schema_cached(name: str) -> dict[str, Any]:
    path = SCHEMAS_DIR / f"{name}.yaml"
    loaded = load_yaml(path.read_text(encoding="utf-8"), str(path))
    if not isinstance(loaded.data, dict):
        raise TypeError(f"{path}: a schema must be a mapping")
    return loaded.data


def load_schema(name: str) -> dict[str, Any]:
    """The Cerberus schema ``schemas/<name>.yaml`` (parsed once; do not mutate the result)."""
    return _load_schema_cached(name)


def check(
    loaded: LoadedYaml,
    schema: dict[str, Any],
    filename: str | None = None,
    *,
    allow_unknown: bool = False,
) -> list[Problem]:
    """Validate ``loaded.data`` against ``schema``; every error as a Problem, sorted by position.

    ``allow_unknown`` applies to the document root; nested dicts say so in the schema with
    Cerberus' own ``allow_unknown`` rule.
    """
    fname = filename if filename is not None else loaded.filename
    located = LoadedYaml(fname, loaded.data, loaded.marks)
    if not isinstance(loaded.data, dict):
        got = "an empty document" if loaded.data is None else _type_name(loaded.data)
        return [located.problem((), f"must be a mapping, got {got}")]
    validator = _Validator(schema, allow_unknown=allow_unknown)
    if validator.validate(loaded.data):
        return []
    problems: list[Problem] = []
    for error in validator._errors:
        problems.extend(_flatten(error, located, schema))
    # Several rules can fail at one spot (e.g. valuesrules and keysrules); report each once.
    unique = list(dict.fromkeys(problems))
    unique.sort(key=lambda p: (p.line, p.col, p.key_path))
    return unique


def _flatten(
    error: cerrors.ValidationError, located: LoadedYaml, schema: dict[str, Any]
) -> list[Problem]:
    if error.is_logic_error:
        # anyof/oneof/...: one problem at the node, summarising why each alternative failed.
        parts = []
        for i, child_errors in sorted(error.definitions_errors.items()):
            texts = [_message(e, schema)[0] for e in _leaves(child_errors)]
            parts.append(f"({i + 1}) " + "; ".join(texts))
        message = _format(error) + (": " + " | ".join(parts) if parts else "")
        hint = _meta_hint(error, schema)
        return [located.problem(_as_path(error.document_path), message, hint)]
    if error.is_group_error:
        out: list[Problem] = []
        for child in error.child_errors:
            out.extend(_flatten(child, located, schema))
        return out
    message, hint = _message(error, schema)
    return [located.problem(_as_path(error.document_path), message, hint)]


def _leaves(errors: Sequence[cerrors.ValidationError]) -> list[cerrors.ValidationError]:
    out: list[cerrors.ValidationError] = []
    for e in errors:
        out.extend(_leaves(e.child_errors) if e.is_group_error and e.child_errors else [e])
    return out


def _message(error: cerrors.ValidationError, schema: dict[str, Any]) -> tuple[str, str | None]:
    text = _format(error)
    hint = _meta_hint(error, schema)
    if error.code == cerrors.UNKNOWN_FIELD.code and error.document_path:
        allowed = _resolve(schema, error.schema_path)
        key = error.document_path[-1]
        if isinstance(allowed, Mapping) and isinstance(key, str):
            guess = nearest(key, [k for k in allowed if isinstance(k, str)])
            hint = f"did you mean {guess!r}?" if guess else _known_keys(allowed)
    elif error.code == cerrors.BAD_TYPE.code:
        text += f", got {_type_name(error.value)}"
    elif error.code == cerrors.UNALLOWED_VALUE.code and isinstance(error.value, str):
        choices = [c for c in error.constraint if isinstance(c, str)]
        guess = nearest(error.value, choices)
        hint = hint or (f"did you mean {guess!r}?" if guess else "one of: " + ", ".join(choices))
    return text, hint


def _format(error: cerrors.ValidationError) -> str:
    template = _MESSAGES_OVERRIDE.get(error.code) or _MESSAGES.get(error.code, "{0}")
    field = error.document_path[-1] if error.document_path else ""
    try:
        return template.format(
            *error.info, constraint=error.constraint, field=field, value=error.value
        )
    except (IndexError, KeyError):  # a custom rule with an unexpected message shape
        return f"fails rule {error.rule!r}"


def _meta_hint(error: cerrors.ValidationError, schema: dict[str, Any]) -> str | None:
    # The failing rule's own rules dict is the schema path minus the rule name.
    rules = _resolve(schema, error.schema_path[:-1]) if error.schema_path else None
    if isinstance(rules, Mapping):
        meta = rules.get("meta")
        if isinstance(meta, Mapping) and isinstance(meta.get("hint"), str):
            return str(meta["hint"])
    return None


def _resolve(schema: Any, schema_path: Sequence[Any]) -> Any:
    node = schema
    for step in schema_path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _known_keys(allowed: Mapping[Any, Any]) -> str | None:
    names = sorted(k for k in allowed if isinstance(k, str))
    return "known keys: " + ", ".join(names) if names else None


def _as_path(path: Sequence[Any]) -> tuple[PathKey, ...]:
    return tuple(p if isinstance(p, str | int) else str(p) for p in path)


def _type_name(value: Any) -> str:
    names = {
        dict: "mapping",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
