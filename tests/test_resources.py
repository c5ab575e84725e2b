"""engine/resources.py: the bundled mappings and schemas are found on disk as they are, and a
package imported from a zip (no folder on disk) is copied out once and loads the same."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from tests.paths import ROOT
from turnout.engine import resources
from turnout.engine.registry import MappingRegistry


def test_a_checkout_uses_the_folders_in_place() -> None:
    assert resources.bundled_dir("turnout.mappings") == ROOT / "mappings"
    assert resources.bundled_dir("turnout.schemas") == ROOT / "schemas"


def test_a_zipped_package_is_copied_out_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "turnout.zip"
    bundled = ROOT / "mappings"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in bundled.rglob("*.yaml"):
            if "cases" not in path.relative_to(bundled).parts:
                zf.write(path, f"turnout/mappings/{path.relative_to(bundled).as_posix()}")
    # What importlib.resources.files() answers for a package inside a zip on sys.path.
    monkeypatch.setattr(
        resources, "files", lambda package: zipfile.Path(archive, "turnout/mappings/")
    )
    resources.bundled_dir.cache_clear()
    try:
        folder = resources.bundled_dir("turnout.mappings")
        assert folder != bundled and folder.is_dir()
        assert resources.bundled_dir("turnout.mappings") is folder  # copied once
        copied = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.yaml"))
        originals = sorted(
            p.relative_to(bundled).as_posix()
            for p in bundled.rglob("*.yaml")
            if "cases" not in p.relative_to(bundled).parts
        )
        assert copied == originals
        assert MappingRegistry.load(folder).providers == MappingRegistry.load().providers
    finally:
        resources.bundled_dir.cache_clear()
