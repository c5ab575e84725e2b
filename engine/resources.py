"""Where the bundled mappings and schemas are, whatever the install.

`importlib.resources` finds the data packages `turnout.mappings` and `turnout.schemas` in a source
checkout (the editable install maps them to the top-level `mappings/` and `schemas/` folders), in a
wheel unpacked into site-packages, and in a zip on `sys.path`. The loaders read real files (they
report `file:line:col` and resolve `extends:` by path), so a folder that is not on disk (a zip) is
copied once to a private temporary folder, removed at exit.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

__all__ = ["bundled_dir"]


@cache
def bundled_dir(package: str) -> Path:
    """The folder of the data package ``package`` (e.g. ``"turnout.mappings"``) on disk."""
    root = files(package)
    if isinstance(root, Path):
        return root
    target = Path(tempfile.mkdtemp(prefix=f"{package}-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    _copy_tree(root, target)
    return target


def _copy_tree(source: Traversable, target: Path) -> None:
    for entry in source.iterdir():
        if entry.is_dir():
            (target / entry.name).mkdir()
            _copy_tree(entry, target / entry.name)
        elif entry.is_file():
            (target / entry.name).write_bytes(entry.read_bytes())
