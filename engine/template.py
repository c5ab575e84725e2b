"""Request templates: YAML trees that build data, never text.

Every leaf is a literal or an expression (see ``engine.expressions``); the tree is compiled once
and rendered per request into plain Python data, which code serialises once. ``$``-keys are
reserved, as in json-e:

``{$map: "{{ list }}", "each(x)": tree}``
    a list: ``tree`` rendered once per element with the element bound to ``x``
``{$if: "{{ cond }}", then: tree, else: tree}``
    ``else`` optional
``{$switch: "{{ value }}", case_a: tree, case_b: tree, $default: tree}``
    the tree of the matching case
``{$merge: [tree, tree]}``
    dicts merged left to right (later keys win); a part that renders to None is skipped
``{$concat: [tree, tree]}``
    one list: a part that renders to a list adds its elements, any other value is one element,
    None is skipped (function tools and a provider's own tool side by side)

A value that renders to ``None`` drops its key (dicts) or element (lists), so optional
parameters vanish instead of being sent as ``null``. Write ``$null`` for a literal null.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from turnout.engine.expressions import Expression, TextTemplate, compile_leaf

__all__ = ["NULL_LITERAL", "Node", "TemplateProblem", "compile_template", "render"]

NULL_LITERAL = "$null"
_EACH = re.compile(r"^each\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)$")
_RESERVED = {"$map", "$if", "$switch", "$merge", "$concat"}


class _Null:
    """Marker for a literal JSON null that must survive the None-drops-the-key rule."""

    __slots__ = ()


NULL = _Null()

Path = tuple[str | int, ...]


class TemplateProblem(Exception):
    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


Node = Callable[[dict[str, Any]], Any]


def _literal(value: Any) -> Node:
    return lambda _ctx: value


def _compile_str(value: str, path: Path) -> Node:
    if value == NULL_LITERAL:
        return lambda _ctx: NULL
    try:
        leaf = compile_leaf(value)
    except ValueError as exc:
        raise TemplateProblem(path, str(exc)) from None
    if isinstance(leaf, (Expression, TextTemplate)):
        return leaf
    return _literal(leaf)


def _compile_dict(tree: Mapping[str, Any], path: Path) -> Node:
    keys = set(tree)
    reserved = keys & _RESERVED
    if len(reserved) > 1:
        raise TemplateProblem(path, f"only one of {sorted(reserved)} may appear in one mapping")
    if "$map" in keys:
        return _compile_map(tree, path)
    if "$if" in keys:
        return _compile_if(tree, path)
    if "$switch" in keys:
        return _compile_switch(tree, path)
    if "$merge" in keys:
        return _compile_merge(tree, path)
    if "$concat" in keys:
        return _compile_concat(tree, path)
    stray = [k for k in keys if isinstance(k, str) and k.startswith("$")]
    if stray:
        raise TemplateProblem(
            (*path, stray[0]), f"unknown operator {stray[0]!r} (known: {sorted(_RESERVED)})"
        )
    items = [(key, compile_node(value, (*path, key))) for key, value in tree.items()]

    def render_dict(ctx: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, node in items:
            value = node(ctx)
            if value is not None:
                out[key] = value
        return out

    return render_dict


def _compile_map(tree: Mapping[str, Any], path: Path) -> Node:
    source = _expression(tree["$map"], (*path, "$map"))
    each_keys = [k for k in tree if k != "$map"]
    if len(each_keys) != 1 or not _EACH.match(str(each_keys[0])):
        raise TemplateProblem(path, "$map needs exactly one sibling key 'each(name)'")
    name = _EACH.match(str(each_keys[0])).group("name")  # type: ignore[union-attr]
    body = compile_node(tree[each_keys[0]], (*path, each_keys[0]))

    def render_map(ctx: dict[str, Any]) -> list[Any] | None:
        seq = source(ctx)
        if seq is None:
            return None
        out: list[Any] = []
        inner = dict(ctx)
        for element in seq:
            inner[name] = element
            value = body(inner)
            if value is not None:
                out.append(value)
        return out

    return render_map


def _compile_if(tree: Mapping[str, Any], path: Path) -> Node:
    unknown = set(tree) - {"$if", "then", "else"}
    if unknown:
        raise TemplateProblem(path, f"$if takes only 'then' and 'else', not {sorted(unknown)}")
    cond = _expression(tree["$if"], (*path, "$if"))
    then = compile_node(tree["then"], (*path, "then")) if "then" in tree else _literal(None)
    other = compile_node(tree["else"], (*path, "else")) if "else" in tree else _literal(None)
    return lambda ctx: then(ctx) if cond(ctx) else other(ctx)


def _compile_switch(tree: Mapping[str, Any], path: Path) -> Node:
    value = _expression(tree["$switch"], (*path, "$switch"))
    cases = {
        k: compile_node(v, (*path, k)) for k, v in tree.items() if k not in ("$switch", "$default")
    }
    default = (
        compile_node(tree["$default"], (*path, "$default"))
        if "$default" in tree
        else _literal(None)
    )

    def render_switch(ctx: dict[str, Any]) -> Any:
        node = cases.get(value(ctx), default)
        return node(ctx)

    return render_switch


def _compile_merge(tree: Mapping[str, Any], path: Path) -> Node:
    if set(tree) != {"$merge"} or not isinstance(tree["$merge"], list):
        raise TemplateProblem(path, "$merge takes a list of mappings and nothing else")
    parts = [compile_node(v, (*path, "$merge", i)) for i, v in enumerate(tree["$merge"])]

    def render_merge(ctx: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for part in parts:
            value = part(ctx)
            if value is None:
                continue
            if not isinstance(value, dict):
                raise TypeError(f"$merge part rendered to {type(value).__name__}, not a mapping")
            out.update(value)
        return out

    return render_merge


def _compile_concat(tree: Mapping[str, Any], path: Path) -> Node:
    if set(tree) != {"$concat"} or not isinstance(tree["$concat"], list):
        raise TemplateProblem(path, "$concat takes a list of parts and nothing else")
    parts = [compile_node(v, (*path, "$concat", i)) for i, v in enumerate(tree["$concat"])]

    def render_concat(ctx: dict[str, Any]) -> list[Any]:
        out: list[Any] = []
        for part in parts:
            value = part(ctx)
            if isinstance(value, list):
                out.extend(value)
            elif value is not None:
                out.append(value)
        return out

    return render_concat


def _expression(value: Any, path: Path) -> Expression:
    if not isinstance(value, str):
        raise TemplateProblem(path, "expected a '{{ expression }}' string")
    try:
        return Expression(value)
    except ValueError as exc:
        raise TemplateProblem(path, str(exc)) from None


def compile_node(tree: Any, path: Path = ()) -> Node:
    if isinstance(tree, str):
        return _compile_str(tree, path)
    if isinstance(tree, dict):
        return _compile_dict(tree, path)
    if isinstance(tree, list):
        elements = [compile_node(v, (*path, i)) for i, v in enumerate(tree)]

        def render_list(ctx: dict[str, Any]) -> list[Any]:
            out = []
            for node in elements:
                value = node(ctx)
                if value is not None:
                    out.append(value)
            return out

        return render_list
    return _literal(tree)


def _mentions_null(tree: Any) -> bool:
    if tree == NULL_LITERAL:
        return True
    if isinstance(tree, dict):
        return any(_mentions_null(v) for v in tree.values())
    if isinstance(tree, list):
        return any(_mentions_null(v) for v in tree)
    return False


def _unwrap(value: Any) -> Any:
    if value is NULL:
        return None
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def compile_template(tree: Any, path: Path = ()) -> Node:
    """Compile a template tree; raises ``TemplateProblem`` with the key path of the fault.

    The result is called with the render context and returns plain data.
    """
    node = compile_node(tree, path)
    if not _mentions_null(tree):
        return node
    # Only templates that write `$null` pay for the walk that turns the marker into None.
    return lambda ctx: _unwrap(node(ctx))


def render(node: Node, context: dict[str, Any]) -> Any:
    return node(context)
