"""A mapping's wire format, read from the mapping itself: the first dialect of its `extends:`
chain that `tests/simulators/formats.yaml` names. A mapping whose chain names none is an error
that says which file to extend, never a silent default."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from turnout.engine.registry import DEFAULT_MAPPINGS_DIR

__all__ = ["FORMATS", "format_of"]

FORMATS: dict[str, str] = yaml.safe_load(
    (Path(__file__).parent / "simulators" / "formats.yaml").read_text(encoding="utf-8")
)


@cache
def format_of(name: str, root: Path = DEFAULT_MAPPINGS_DIR) -> str:
    """The simulator format of mapping file `<root>/<name>.yaml` (`name` may be a variant's
    `_variants/x`)."""
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        chain.append(current)
        stem = current.rsplit("/", 1)[-1]
        if current.startswith("_dialects/") and stem in FORMATS:
            return FORMATS[stem]
        data = yaml.safe_load((root / f"{current}.yaml").read_text(encoding="utf-8")) or {}
        parent = data.get("extends")
        current = str(parent) if parent else None
    raise AssertionError(
        f"{name}: no dialect of tests/simulators/formats.yaml in its extends chain "
        f"({' -> '.join(chain)}); add the dialect there"
    )
