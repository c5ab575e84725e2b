"""A strict YAML loader that keeps line/column for every key path.

PyYAML's SafeLoader speaks YAML 1.1, whose implicit typing silently corrupts mapping and
config files (design.md section 2). This loader, a SafeLoader *subclass* (the global loader is
left alone), differs as follows:

* no timestamp resolver: ``2023-06-01`` stays the string it was written as;
* only ``true``/``false`` (any case) are booleans: ``yes/no/on/off/y/n`` stay strings;
* no sexagesimal or leading-zero octal ints: ``1:30`` and ``0123`` stay strings (``0o17``
  and ``0x1f`` are ints);
* floats also accept exponents without a dot or sign (``1e5``), as YAML 1.2 does;
* duplicate keys are an error naming both lines (merged ``<<`` keys may still be overridden);
* only plain data comes back: explicit ``!!timestamp``/``!!binary``/``!!set``/``!!omap``/
  ``!!pairs`` tags are rejected;
* anchors, aliases and ``<<`` merge keys work as usual.

The pure-Python loader is used on purpose: the C loader cannot be given these resolvers and
files are read once at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

from turnout.engine.diagnostics import PathKey, Problem, dotted
from turnout.engine.errors import MappingError

__all__ = ["LoadedYaml", "StrictLoader", "load_yaml"]

Path = tuple[PathKey, ...]

_TAG = "tag:yaml.org,2002:"
# Resolvers we replace (bool/int/float) or drop (timestamp; value/yaml have no safe constructor).
_DROPPED_RESOLVERS = {_TAG + t for t in ("bool", "int", "float", "timestamp", "value", "yaml")}
# Constructors that would return non-JSON-like Python objects.
_DROPPED_CONSTRUCTORS = {_TAG + t for t in ("timestamp", "binary", "set", "omap", "pairs")}

_BOOL = re.compile(r"^(?:true|false)$", re.IGNORECASE)
# Decimal, 0o octal and 0x hex ints; YAML 1.1's 0b, base-60 and leading-zero octal (0755 -> 493)
# are left as strings so an id like 0123 survives intact.
_INT = re.compile(
    r"""^(?:[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0o[0-7_]+
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with the strict resolvers above (use :func:`load_yaml`, not this directly)."""

    # Own copies: add_implicit_resolver() below must not touch SafeLoader's tables.
    yaml_implicit_resolvers: dict[Any, Any] = {  # noqa: RUF012 - PyYAML declares it so
        first: [(tag, rx) for tag, rx in entries if tag not in _DROPPED_RESOLVERS]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    yaml_constructors: ClassVar[dict[str | None, Any]] = {
        tag: fn
        for tag, fn in yaml.SafeLoader.yaml_constructors.items()
        if tag not in _DROPPED_CONSTRUCTORS
    }


StrictLoader.add_implicit_resolver(_TAG + "bool", _BOOL, list("tTfF"))
# int before float: the first matching resolver wins.
StrictLoader.add_implicit_resolver(_TAG + "int", _INT, list("-+0123456789"))
StrictLoader.add_implicit_resolver(_TAG + "float", _FLOAT, list("-+0123456789."))


@dataclass(frozen=True)
class LoadedYaml:
    """Plain data plus the 1-based ``(line, col)`` of every key path in the source.

    For a mapping entry the position is that of its *key* (where a reader looks for it); for a
    sequence item, that of the item; ``()`` is the document root.
    """

    filename: str
    data: Any
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict, repr=False)

    def position(self, path: Sequence[PathKey]) -> tuple[int, int]:
        """Where ``path`` is, or its nearest recorded ancestor (e.g. for a missing key)."""
        key = tuple(path)
        while key:
            found = self.marks.get(key)
            if found is not None:
                return found
            key = key[:-1]
        return self.marks.get((), (1, 1))

    def problem(self, path: Sequence[PathKey], message: str, hint: str | None = None) -> Problem:
        """A :class:`Problem` located at ``path`` in this file."""
        line, col = self.position(path)
        return Problem(self.filename, line, col, dotted(path), message, hint)


def load_yaml(text: str, filename: str) -> LoadedYaml:
    """Parse one YAML document strictly; raise :class:`MappingError` on any problem."""
    loader: StrictLoader | None = None
    try:
        loader = StrictLoader(text)
        node = loader.get_single_node()
        if node is None:  # empty document
            return LoadedYaml(filename, None, {(): (1, 1)})
        # Before construction: flatten_mapping() later splices merged keys into node.value.
        dups = _duplicate_keys(loader, node, filename)
        if dups:
            raise MappingError(dups)
        data = loader.construct_document(node)
        marks: dict[Path, tuple[int, int]] = {}
        _record_marks(loader, node, (), _pos(node), marks, set(), [], filename)
        return LoadedYaml(filename, data, marks)
    except yaml.MarkedYAMLError as exc:
        raise MappingError([_syntax_problem(exc, filename)]) from None
    except ReaderError as exc:  # a control character or bad encoding
        line, col = _offset_pos(text, exc.position)
        message = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        raise MappingError([Problem(filename, line, col, "", message)]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _offset_pos(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _pos(node: Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _syntax_problem(exc: yaml.MarkedYAMLError, filename: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    message = exc.problem or exc.context or "invalid YAML"
    hint = None
    if "could not determine a constructor" in message:
        hint = "only plain data is allowed: maps, lists, strings, numbers, true/false, null"
    elif exc.context and exc.problem:
        hint = exc.context
        if exc.context_mark is not None and exc.context_mark is not mark:
            hint += f" at line {exc.context_mark.line + 1}"
    return Problem(filename, line, col, "", message, hint)


def _key_of(loader: StrictLoader, key_node: Node) -> Any:
    """The Python value of a scalar key (non-scalar keys are rejected later by PyYAML)."""
    if isinstance(key_node, ScalarNode):
        return loader.construct_object(key_node)
    return None


def _path_key(key: Any) -> PathKey:
    # Paths are typed str|int; a float/None key is named by its text (rare and only cosmetic).
    return key if isinstance(key, str | int) else str(key)


def _duplicate_keys(loader: StrictLoader, root: Node, filename: str) -> list[Problem]:
    problems: list[Problem] = []
    seen_nodes: set[int] = set()
    stack: list[tuple[Node, Path]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        # Aliased nodes are shared; checking each once also bounds "billion laughs" input.
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend((item, (*path, i)) for i, item in enumerate(node.value))
        elif isinstance(node, MappingNode):
            first: dict[Any, Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _TAG + "merge":
                    continue  # merged keys may legitimately be overridden
                key = _key_of(loader, key_node)
                if isinstance(key_node, ScalarNode):
                    try:
                        earlier = first.get(key)
                    except TypeError:  # unhashable; PyYAML reports it with a mark
                        earlier = None
                    if earlier is not None:
                        line, col = _pos(key_node)
                        problems.append(
                            Problem(
                                filename,
                                line,
                                col,
                                dotted((*path, _path_key(key))),
                                f"duplicate key {key!r} (first at line {_pos(earlier)[0]}, "
                                f"again at line {line})",
                            )
                        )
                    else:
                        first[key] = key_node
                stack.append((value_node, (*path, _path_key(key))))
    problems.sort(key=lambda p: (p.line, p.col))
    return problems


def _record_marks(
    loader: StrictLoader,
    node: Node,
    path: Path,
    where: tuple[int, int],
    marks: dict[Path, tuple[int, int]],
    expanded: set[int],
    ancestors: list[int],
    filename: str,
) -> None:
    marks[path] = where
    if id(node) in ancestors:
        # Plain data has no cycles, and every consumer (Cerberus, templates) would loop forever.
        line, col = where
        raise MappingError([Problem(filename, line, col, dotted(path), "recursive alias")])
    # Descend into a shared (aliased) node once only: later uses point at their own key, and
    # an exponential alias graph ("billion laughs") cannot make this walk blow up.
    if id(node) in expanded:
        return
    expanded.add(id(node))
    ancestors.append(id(node))
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _record_marks(
                loader, item, (*path, i), _pos(item), marks, expanded, ancestors, filename
            )
    elif isinstance(node, MappingNode):
        # After construction node.value is flattened (merged keys first), so later = winner.
        for key_node, value_node in node.value:
            key = (*path, _path_key(_key_of(loader, key_node)))
            _record_marks(
                loader, value_node, key, _pos(key_node), marks, expanded, ancestors, filename
            )
    ancestors.pop()
