"""Every mapping under a folder, compiled once at start-up (botocore-style: found by listing)."""

from __future__ import annotations

from pathlib import Path

from turnout.engine.diagnostics import Problem, nearest
from turnout.engine.errors import MappingError
from turnout.engine.mapping import CompiledMapping, load_mapping
from turnout.engine.resources import bundled_dir

__all__ = ["DEFAULT_MAPPINGS_DIR", "MappingRegistry", "lint_dir"]

DEFAULT_MAPPINGS_DIR = bundled_dir("turnout.mappings")


def _mapping_files(folder: Path) -> list[Path]:
    # Files starting with `_` (and the `_dialects/` folder) are shared pieces, not providers.
    return sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("_"))


class MappingRegistry:
    def __init__(
        self,
        mappings: dict[str, CompiledMapping],
        folder: Path,
        variants: dict[tuple[str, str], CompiledMapping] | None = None,
    ) -> None:
        self._mappings = mappings
        self._variants = variants or {}
        self.folder = folder

    @classmethod
    def load(cls, folder: str | Path | None = None) -> MappingRegistry:
        """Compile every mapping; any problem in any file raises one MappingError listing all."""
        root = Path(folder) if folder else DEFAULT_MAPPINGS_DIR
        if not root.is_dir():
            raise MappingError([Problem(str(root), 1, 1, "", "mappings folder not found")])
        mappings: dict[str, CompiledMapping] = {}
        variants: dict[tuple[str, str], CompiledMapping] = {}
        problems: list[Problem] = []
        for path in _mapping_files(root):
            try:
                mapping = mappings[path.stem] = load_mapping(path, root)
                for _, use in mapping.variants:
                    # A variant speaks for its parent provider: same id in errors, records
                    # and the reasoning-state envelope.
                    variants[(path.stem, use)] = load_mapping(
                        root / f"{use}.yaml", root, provider=path.stem
                    )
            except MappingError as exc:
                problems.extend(exc.problems)
        if problems:
            raise MappingError(_unique(problems))
        return cls(mappings, root, variants)

    def get(self, provider: str) -> CompiledMapping | None:
        return self._mappings.get(provider)

    def resolve(self, provider: str, model: str) -> CompiledMapping | None:
        """The mapping serving ``model`` at ``provider``: a variant whose pattern matches the
        model (Claude on Vertex), else the provider's own."""
        mapping = self._mappings.get(provider)
        if mapping is None or not mapping.variants:
            return mapping
        for pattern, use in mapping.variants:
            if pattern.search(model):
                return self._variants.get((provider, use), mapping)
        return mapping

    def suggest(self, provider: str) -> str | None:
        return nearest(provider, list(self._mappings))

    @property
    def providers(self) -> list[str]:
        return sorted(self._mappings)

    def __contains__(self, provider: object) -> bool:
        return provider in self._mappings

    def __len__(self) -> int:
        return len(self._mappings)


def lint_dir(folder: str | Path) -> tuple[int, list[Problem]]:
    """(number of mappings, problems) for a folder, as `turnout lint` prints them."""
    root = Path(folder)
    if not root.is_dir():
        return 0, [Problem(str(root), 1, 1, "", "mappings folder not found")]
    files = _mapping_files(root)
    problems: list[Problem] = []
    for path in files:
        try:
            mapping = load_mapping(path, root)
            for _, use in mapping.variants:
                load_mapping(root / f"{use}.yaml", root, provider=path.stem)
        except MappingError as exc:
            problems.extend(exc.problems)
    return len(files), _unique(problems)


def _unique(problems: list[Problem]) -> list[Problem]:
    # A broken dialect is reported once, not once per provider that extends it.
    return list(dict.fromkeys(problems))
