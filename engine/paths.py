"""JSONPath compiled once, at mapping load.

Extractors run on every upstream frame, and nearly all of them are plain member/index chains
(``$.delta.text``, ``$.choices[0].delta``). Those compile to a tuple of keys and then to a
straight-line getter, 30-60x faster than walking ``jsonpath_ng``'s object graph. Everything
else (wildcards, filters, slices, ``..``, unions, named operators) is parsed by
``jsonpath_ng.ext``, once, here.

The fast getters match ``jsonpath_ng``'s results: a name step reads a mapping (``.get``, as
jsonpath_ng's ``Fields`` does), an index step reads only a list or tuple (negative indices count
from the end), anything else is "missing"; a present ``null`` is a match. ``@`` and ``$`` both
mean the node passed in. Two deliberate differences, both where ``jsonpath_ng`` is the odd one
out: ``$.where`` / ``$.wherenot`` are plain member names here (reserved words there), and
``$['*']`` is the member named ``*`` (RFC 9535) whatever jsonpath_ng makes of it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from functools import lru_cache
from typing import Any

__all__ = ["CompiledPath", "compile_path"]

_MISSING: Any = object()

# Same characters as jsonpath_ng's identifier (minus ``@``), so both readers split names alike.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_BRACKET = re.compile(r"""\[(?:(-?[0-9]+)|"([^"\\]*)"|'([^'\\]*)')\]""")


class CompiledPath:
    """A compiled JSONPath. ``first`` returns the first match or ``None``; ``all`` every match."""

    __slots__ = ("_jp", "_steps", "all", "expr", "first")

    first: Callable[[object], object | None]
    all: Callable[[object], list[object]]

    def __init__(self, expr: str, steps: tuple[str | int, ...] | None, jp: Any = None) -> None:
        self.expr = expr
        self._steps = steps  # None: not a simple path, ``_jp`` does the work
        self._jp = jp
        # Bound as instance attributes, not methods: saves a dispatch on every extraction.
        if steps is not None:
            self.first, self.all = _walkers(steps)
        else:
            self.first, self.all = self._ext_first, self._ext_all

    def __repr__(self) -> str:
        kind = "fast" if self._steps is not None else "jsonpath_ng"
        return f"CompiledPath({self.expr!r}, {kind})"

    @property
    def is_simple(self) -> bool:
        """True when the fast walker handles this path (tests and benchmarks use it)."""
        return self._steps is not None

    def _ext_first(self, node: object) -> object | None:
        matches = self._jp.find(node)
        return matches[0].value if matches else None

    def _ext_all(self, node: object) -> list[object]:
        return [m.value for m in self._jp.find(node)]


def _walkers(
    steps: tuple[str | int, ...],
) -> tuple[Callable[[object], object | None], Callable[[object], list[object]]]:
    """Generate straight-line getters for ``steps`` (as namedtuple/dataclasses do): a generic
    loop spends ~100 ns per step on type checks and calls, the unrolled body ~35 ns.

    A name step is ``cur.get(name, _MISSING)``, exactly what jsonpath_ng's ``Fields`` does: a
    missing key costs a compare (misses are common: most frames lack most fields), a non-mapping
    raises AttributeError. An index step reads only a list or tuple, never a string or dict.
    Keys enter the source through ``repr`` of a ``str`` or ``int``, which always round-trips to
    the same constant, so no text of the path itself is executed.
    """

    def getter(name: str, found: str, missing: str) -> list[str]:
        if not steps:
            return [f"def {name}(cur):", f"  return {found}"]
        lines = [f"def {name}(cur):", "  try:"]
        for step in steps:
            if isinstance(step, int):
                lines.append(f"    if not isinstance(cur, _SEQ): return {missing}")
                lines.append(f"    cur = cur[{step!r}]")
            else:
                lines.append(f"    cur = cur.get({step!r}, _MISSING)")
                lines.append(f"    if cur is _MISSING: return {missing}")
        lines.append("  except (AttributeError, IndexError, TypeError):")
        lines.append(f"    return {missing}")
        lines.append(f"  return {found}")
        return lines

    # Two copies of the body rather than a shared helper: one call less per extraction.
    src = "\n".join(getter("first", "cur", "None") + getter("all", "[cur]", "[]"))
    ns: dict[str, Any] = {"_MISSING": _MISSING, "_SEQ": (list, tuple)}
    exec(compile(src, f"<jsonpath {steps!r}>", "exec"), ns)
    return ns["first"], ns["all"]


def _simple_steps(expr: str) -> tuple[str | int, ...] | None:
    """Steps of a plain member/index chain, or None when ``expr`` needs the full parser."""
    steps: list[str | int] = []
    i, n = 1, len(expr)
    while i < n:
        c = expr[i]
        if c == ".":
            m = _NAME.match(expr, i + 1)
            if m is None:
                return None
            steps.append(m.group())
        elif c == "[":
            m = _BRACKET.match(expr, i)
            if m is None:
                return None
            index, dq, sq = m.groups()
            steps.append(int(index) if index is not None else dq if dq is not None else sq)
        else:
            return None
        i = m.end()
    return tuple(steps)


@lru_cache(maxsize=2048)
def compile_path(expr: str) -> CompiledPath:
    """Compile ``expr`` (starting with ``$`` or ``@``); raise ``ValueError`` naming the
    expression and the problem when it is not valid JSONPath. Cached: mappings repeat paths."""
    if not isinstance(expr, str):
        raise ValueError(f"JSONPath must be a string, got {type(expr).__name__}: {expr!r}")
    if not expr.startswith(("$", "@")):
        raise ValueError(f"invalid JSONPath {expr!r}: must start with '$' (root) or '@' (node)")
    steps = _simple_steps(expr)
    if steps is not None:
        return CompiledPath(expr, steps)
    compiled = CompiledPath(expr, None, _parse_ext(expr))
    if expr.endswith("[*]") and (prefix := _simple_steps(expr[:-3])) is not None:
        _wildcard_tail(compiled, prefix)
    return compiled


def _wildcard_tail(compiled: CompiledPath, prefix: tuple[str | int, ...]) -> None:
    """``$.a.b[*]``, the commonest non-simple path (every content list), without jsonpath_ng
    when the prefix holds a list; anything else keeps jsonpath_ng's exact semantics."""
    get_prefix, _ = _walkers(prefix)
    ext_first, ext_all = compiled.first, compiled.all

    def all_(node: object) -> list[object]:
        value = get_prefix(node)
        if type(value) is list:
            return list(value)
        return ext_all(node)

    def first(node: object) -> object | None:
        value = get_prefix(node)
        if type(value) is list:
            return value[0] if value else None
        return ext_first(node)

    compiled.first, compiled.all = first, all_


def _parse_ext(expr: str) -> Any:
    from jsonpath_ng.exceptions import JSONPathError
    from jsonpath_ng.ext.parser import parse

    # jsonpath_ng warns (DeprecationWarning) for syntax it will drop in 2.0 (unquoted words in
    # filters, ``&``, ``|``). Such a path would break on upgrade, so it is rejected now, with
    # jsonpath_ng's own advice in the message.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            jp = parse(expr)
        except JSONPathError as exc:
            raise ValueError(f"invalid JSONPath {expr!r}: {exc}") from None
        except Exception as exc:  # ply can raise plain errors on odd input
            raise ValueError(f"invalid JSONPath {expr!r}: {type(exc).__name__}: {exc}") from None
    for w in caught:
        if issubclass(w.category, DeprecationWarning):
            raise ValueError(f"invalid JSONPath {expr!r}: deprecated syntax: {w.message}")
    return jp
