"""Sandboxed Jinja expressions, compiled once at mapping load.

A mapping leaf is either a literal, exactly one ``{{ expr }}`` (evaluated to a native Python value,
so the string ``"42"`` stays a string), or a mixed string such as ``"{{ base }}/v1/messages"``
(rendered as text; a dict or list inside text is an error, never ``str(dict)``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from turnout.engine import filters

__all__ = [
    "Expression",
    "TextTemplate",
    "attribute_uses",
    "compile_leaf",
    "environment",
    "is_expression",
]

_SIMPLE = re.compile(r"^\s*[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\s*$")
_LITERALS = frozenset({"true", "false", "none", "True", "False", "None"})
# One `{{ ... }}` spanning the whole string (no second opening inside).
_WHOLE = re.compile(r"^\s*\{\{(?P<body>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)


def _finalize(value: Any) -> Any:
    # Text templates must not stringify containers: that is how JSON-in-text bugs start.
    if isinstance(value, (dict, list, tuple)):
        raise TypeError(
            "a dict or list cannot be rendered inside text; use a whole-leaf expression"
        )
    if value is None:
        return ""
    return value


def _build_environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        autoescape=False,
        # Chainable: `d.usage.cache_read` on a reply without `usage` is undefined, not a crash.
        undefined=ChainableUndefined,
        finalize=_finalize,
        keep_trailing_newline=True,
    )
    env.filters.update(filters.FILTERS)
    env.globals.update(filters.GLOBALS)
    return env


_ENV = _build_environment()


def environment() -> ImmutableSandboxedEnvironment:
    return _ENV


def is_expression(text: str) -> bool:
    return "{{" in text or "{%" in text


_MISSING = object()


# Dialects repeat the same expressions in every provider that extends them: compile each
# distinct source once per process (compiling is ~1 ms; the functions are pure).
@lru_cache(maxsize=8192)
def _compiled_expression(body: str) -> Callable[[Context], Any]:
    compiled = _ENV.compile_expression(body, undefined_to_none=True)
    return compiled._template.root_render_func


@lru_cache(maxsize=8192)
def _compiled_text(source: str) -> Callable[[Context], Any]:
    return _ENV.from_string(source).root_render_func


def _dict_path(parts: tuple[str, ...]) -> Callable[[Mapping[str, Any]], Any]:
    """A getter for ``a.b.c`` over plain dicts; ``_MISSING`` when it meets anything else."""
    head, rest = parts[0], parts[1:]

    def get(context: Mapping[str, Any]) -> Any:
        value = context.get(head)
        for part in rest:
            if value is None:
                return None
            if not isinstance(value, dict):
                return _MISSING
            value = value.get(part)
        return value

    return get


class Expression:
    """A whole-leaf ``{{ expr }}``: evaluates to a native value; undefined becomes ``None``.

    Evaluated per request and per stream event, so it skips Jinja's per-call context setup:
    a plain ``a.b.c`` over dicts is a direct lookup, anything else runs the compiled template
    function against one lightweight Context.
    """

    __slots__ = ("_fast", "_root", "source")

    def __init__(self, source: str) -> None:
        match = _WHOLE.match(source)
        if match is None:
            raise ValueError(f"not a single '{{{{ }}}}' expression: {source!r}")
        self.source = source
        body = match.group("body")
        try:
            self._root: Callable[[Context], Any] = _compiled_expression(body)
        except TemplateSyntaxError as exc:
            raise ValueError(f"expression {source!r} does not parse: {exc.message}") from None
        self._fast: Callable[[Mapping[str, Any]], Any] | None = None
        simple = _SIMPLE.match(body)
        if simple is not None:
            parts = tuple(body.strip().split("."))
            # Names Jinja would resolve to a dict *method* (d.items) keep Jinja's semantics.
            if parts[0] not in _LITERALS and not any(hasattr(dict, p) for p in parts[1:]):
                self._fast = _dict_path(parts)

    def __call__(self, context: Mapping[str, Any]) -> Any:
        if self._fast is not None:
            value = self._fast(context)
            if value is not _MISSING:
                return value
        ctx = Context(_ENV, context if type(context) is dict else dict(context), None, {})
        for _ in self._root(ctx):
            pass
        value = ctx.vars.get("result")
        return None if isinstance(value, Undefined) else value

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\}\}")


def _plain_parts(source: str) -> list[str | Callable[[Mapping[str, Any]], Any]] | None:
    """``"Bearer {{ credentials.api_key }}"`` as literal and getter parts, or None when the
    text holds anything but plain ``{{ a.b }}`` placeholders (then Jinja renders it)."""
    parts: list[str | Callable[[Mapping[str, Any]], Any]] = []
    end = 0
    for match in _PLACEHOLDER.finditer(source):
        names = tuple(match.group(1).split("."))
        if names[0] in _LITERALS or any(hasattr(dict, n) for n in names[1:]):
            return None
        parts.append(source[end : match.start()])
        parts.append(_dict_path(names))
        end = match.end()
    parts.append(source[end:])
    literal = "".join(p for p in parts if isinstance(p, str))
    if "{{" in literal or "{%" in literal or "{#" in literal:
        return None
    return [p for p in parts if p != ""]


class TextTemplate:
    """A string with ``{{ }}`` inside text: always renders to ``str``."""

    __slots__ = ("_parts", "_root", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self._root: Callable[[Context], Any] = _compiled_text(source)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template {source!r} does not parse: {exc.message}") from None
        # URLs and auth headers are plain placeholders in text: join them without Jinja.
        self._parts = _plain_parts(source)

    def __call__(self, context: Mapping[str, Any]) -> str:
        if self._parts is not None:
            out: list[str] = []
            for part in self._parts:
                if isinstance(part, str):
                    out.append(part)
                    continue
                value = part(context)
                if value is _MISSING:
                    break  # a non-dict on the way: Jinja's own semantics below
                out.append(str(_finalize(value)))
            else:
                return "".join(out)
        parent = context if type(context) is dict else dict(context)
        return "".join(self._root(Context(_ENV, parent, None, {})))

    def __repr__(self) -> str:
        return f"TextTemplate({self.source!r})"


def compile_leaf(value: str) -> Expression | TextTemplate | str:
    """Compile one string leaf; plain strings come back unchanged."""
    if not is_expression(value):
        return value
    if _WHOLE.match(value):
        return Expression(value)
    return TextTemplate(value)


def attribute_uses(source: str, name: str) -> set[str]:
    """First-level attributes read from variable ``name`` (``req.max_output_tokens`` → that key).

    Used by the lint to catch ``req.max_output_tokns`` at load time instead of a silent None.
    """
    try:
        tree = _ENV.parse(source if is_expression(source) else "")
    except TemplateSyntaxError:
        return set()
    found: set[str] = set()
    for node in tree.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name == name:
            found.add(node.attr)
    for item in tree.find_all(nodes.Getitem):
        if (
            isinstance(item.node, nodes.Name)
            and item.node.name == name
            and isinstance(item.arg, nodes.Const)
            and isinstance(item.arg.value, str)
        ):
            found.add(item.arg.value)
    return found
