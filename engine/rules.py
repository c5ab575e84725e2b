"""Extraction rules: provider JSON → canonical ops, compiled once.

A *rule* is one of

``{op: NAME, field: value, ..., when: "{{ cond }}"}``
    emit one op. A value is a JSONPath (``$.delta.text``; ``$``/``@`` is the current node), an
    expression (``{{ d.usage.input_tokens + (d.usage.cache_read_input_tokens or 0) }}`` with
    ``d`` the current node, ``root`` the whole payload, ``event`` the frame's event name,
    ``i`` the element index inside ``each`` and ``up`` the node that ``each`` walks, so a nested
    ``each`` still reads its enclosing element) or a literal. A field that resolves to None is left
    out; an op missing a required field is not emitted (a chunk without a stop reason has no
    ``finish``).
``{each: PATH, key: KEY, events: {name: rule | [rules]}, default: rule | [rules]}``
    for every element PATH finds, dispatch on its key (or, without ``key``/``events``, run
    ``do: [rules]``).

A KEY is a list of JSONPaths whose found values are joined with ``/`` (``[$.type, $.delta.type]``
gives ``content_block_delta/text_delta``) or one expression.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from turnout.engine.expressions import Expression, TextTemplate, compile_leaf
from turnout.engine.ops import OPS
from turnout.engine.paths import compile_path

__all__ = [
    "Dispatch",
    "RuleProblem",
    "RuleProblems",
    "compile_dispatch",
    "compile_key",
    "compile_rules",
]

Path = tuple[str | int, ...]
Getter = Callable[[Any, dict[str, Any]], Any]
Op = dict[str, Any]


class RuleProblem(Exception):
    def __init__(self, path: Path, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.hint = hint

    @property
    def all(self) -> list[RuleProblem]:
        """Every problem this one stands for (itself, or the ones `RuleProblems` gathered)."""
        return [self]


class RuleProblems(RuleProblem):
    """Several rules were wrong: every one is reported, not only the first (the first stands
    for them where one problem is expected)."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        first = problems[0]
        super().__init__(first.path, first.message, first.hint)
        self.problems = problems

    @property
    def all(self) -> list[RuleProblem]:
        return self.problems


def _raise_all(found: list[RuleProblem]) -> None:
    problems = [one for problem in found for one in problem.all]
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise RuleProblems(problems)


def _getter(value: Any, path: Path) -> Getter:
    if isinstance(value, str) and value[:1] in ("$", "@") and not value.startswith("$null"):
        try:
            compiled = compile_path(value)
        except ValueError as exc:
            raise RuleProblem(path, str(exc)) from None
        return lambda node, _ctx: compiled.first(node)
    if isinstance(value, str):
        try:
            leaf = compile_leaf(value)
        except ValueError as exc:
            raise RuleProblem(path, str(exc)) from None
        if isinstance(leaf, (Expression, TextTemplate)):
            return lambda _node, ctx: leaf(ctx)
    return lambda _node, _ctx: value


class _OpRule:
    __slots__ = ("fields", "name", "required", "when")

    def __init__(self, spec: Mapping[str, Any], path: Path) -> None:
        name = spec.get("op")
        if name not in OPS:
            from turnout.engine.diagnostics import nearest

            guess = nearest(str(name), list(OPS))
            raise RuleProblem(
                (*path, "op"),
                f"unknown op {name!r}",
                f"did you mean {guess!r}?" if guess else f"known ops: {', '.join(sorted(OPS))}",
            )
        op_spec = OPS[name]
        allowed = op_spec.required | op_spec.optional
        self.name: str = name
        self.required = op_spec.required
        self.fields: list[tuple[str, Getter]] = []
        self.when: Expression | None = None
        for key, value in spec.items():
            if key == "op":
                continue
            if key == "when":
                if not isinstance(value, str):
                    raise RuleProblem((*path, key), "'when' takes a '{{ expression }}'")
                try:
                    self.when = Expression(value)
                except ValueError as exc:
                    raise RuleProblem((*path, key), str(exc)) from None
                continue
            if key not in allowed:
                raise RuleProblem(
                    (*path, key),
                    f"op {name!r} has no field {key!r}",
                    f"fields: {', '.join(sorted(allowed)) or 'none'}",
                )
            self.fields.append((key, _getter(value, (*path, key))))
        missing = op_spec.required - {k for k, _ in self.fields}
        if missing:
            raise RuleProblem(path, f"op {name!r} needs {', '.join(sorted(missing))}")

    def run(self, node: Any, ctx: dict[str, Any], out: list[Op]) -> None:
        if self.when is not None and not self.when(ctx):
            return
        op: Op = {"op": self.name}
        for key, get in self.fields:
            value = get(node, ctx)
            if value is not None:
                op[key] = value
        for key in self.required:
            if key not in op:
                return
        out.append(op)


@dataclass
class Dispatch:
    """Pick rules by a key computed from the node; unknown keys are reported, not ignored."""

    key: Callable[[Any, dict[str, Any]], str | None] | None
    table: dict[str, list[Any]] = field(default_factory=dict)
    default: list[Any] | None = None
    ignore: frozenset[str] = frozenset()
    unknown: dict[str, int] = field(default_factory=dict)

    def rules_for(self, node: Any, ctx: dict[str, Any]) -> list[Any] | None:
        if self.key is None:
            return self.default
        name = self.key(node, ctx)
        found = self.table.get(name) if name is not None else None
        if found is not None:
            return found
        if name in self.ignore:
            return None
        if self.default is not None:
            return self.default
        # Counted so tests fail on new upstream event types and production can log them.
        label = str(name)
        self.unknown[label] = self.unknown.get(label, 0) + 1
        return None


class _EachRule:
    __slots__ = ("dispatch", "path")

    def __init__(self, spec: Mapping[str, Any], path: Path) -> None:
        try:
            self.path = compile_path(str(spec["each"]))
        except ValueError as exc:
            raise RuleProblem((*path, "each"), str(exc)) from None
        unknown = set(spec) - {"each", "key", "events", "default", "do", "ignore"}
        if unknown:
            raise RuleProblem(
                path, f"'each' takes key/events/default/do/ignore, not {sorted(unknown)}"
            )
        if "do" in spec:
            self.dispatch = Dispatch(key=None, default=compile_rules(spec["do"], (*path, "do")))
        else:
            self.dispatch = compile_dispatch(spec, path)

    def run(self, node: Any, ctx: dict[str, Any], out: list[Op]) -> None:
        saved_d, saved_i, saved_up = ctx.get("d"), ctx.get("i"), ctx.get("up")
        ctx["up"] = node  # a nested `each` still sees the element it runs in
        for i, element in enumerate(self.path.all(node)):
            ctx["d"], ctx["i"] = element, i
            rules = self.dispatch.rules_for(element, ctx)
            if rules:
                for rule in rules:
                    rule.run(element, ctx, out)
        ctx["d"], ctx["i"], ctx["up"] = saved_d, saved_i, saved_up


def compile_rules(spec: Any, path: Path) -> list[Any]:
    specs = spec if isinstance(spec, list) else [spec]
    rules: list[Any] = []
    found: list[RuleProblem] = []
    for n, one in enumerate(specs):
        where = (*path, n) if isinstance(spec, list) else path
        try:
            if not isinstance(one, dict):
                raise RuleProblem(where, "a rule is a mapping with 'op' or 'each'")
            if "each" in one:
                rules.append(_EachRule(one, where))
            elif "op" in one:
                rules.append(_OpRule(one, where))
            else:
                raise RuleProblem(where, "a rule needs 'op' or 'each'")
        except RuleProblem as exc:
            found.append(exc)
    _raise_all(found)
    return rules


def compile_key(spec: Any, path: Path) -> Callable[[Any, dict[str, Any]], str | None]:
    if isinstance(spec, str) and "{{" in spec:
        try:
            expr = Expression(spec)
        except ValueError as exc:
            raise RuleProblem(path, str(exc)) from None

        def by_expression(_node: Any, ctx: dict[str, Any]) -> str | None:
            value = expr(ctx)
            return None if value is None else str(value)

        return by_expression
    paths = spec if isinstance(spec, list) else [spec]
    try:
        compiled = [compile_path(str(p)) for p in paths]
    except ValueError as exc:
        raise RuleProblem(path, str(exc)) from None

    def by_paths(node: Any, _ctx: dict[str, Any]) -> str | None:
        parts = [v for v in (c.first(node) for c in compiled) if v is not None]
        return "/".join(str(p) for p in parts) if parts else None

    return by_paths


def compile_dispatch(spec: Mapping[str, Any], path: Path) -> Dispatch:
    events = spec.get("events") or {}
    if not isinstance(events, dict):
        raise RuleProblem((*path, "events"), "'events' maps a key to a rule or a list of rules")
    table: dict[str, list[Any]] = {}
    found: list[RuleProblem] = []
    for k, v in events.items():
        try:
            table[str(k)] = compile_rules(v, (*path, "events", k))
        except RuleProblem as exc:
            found.append(exc)
    default = None
    try:
        default = compile_rules(spec["default"], (*path, "default")) if "default" in spec else None
    except RuleProblem as exc:
        found.append(exc)
    _raise_all(found)
    key = compile_key(spec["key"], (*path, "key")) if "key" in spec else None
    if key is None and table:
        raise RuleProblem(path, "'events' needs a 'key' to dispatch on")
    return Dispatch(
        key=key,
        table=table,
        default=default,
        ignore=frozenset(str(x) for x in spec.get("ignore", [])),
    )


def run_rules(rules: list[Any], node: Any, ctx: dict[str, Any]) -> list[Op]:
    out: list[Op] = []
    ctx["d"] = node
    for rule in rules:
        rule.run(node, ctx, out)
    return out
