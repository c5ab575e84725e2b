"""tests/formats.py: the tests read each mapping's wire format from its own `extends:` chain."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.formats import FORMATS, format_of
from turnout.engine.registry import DEFAULT_MAPPINGS_DIR, MappingRegistry


def test_every_bundled_mapping_has_a_format() -> None:
    formats = {pid: format_of(pid) for pid in MappingRegistry.load().providers}
    assert set(formats.values()) <= set(FORMATS.values())
    assert formats["groq"] == "chat" and formats["vertex_ai"] == "gemini"
    assert format_of("_variants/vertex_anthropic") == "anthropic"


def test_a_dialect_of_unknown_format_is_an_error_not_chat(tmp_path: Path) -> None:
    root = tmp_path / "mappings"
    shutil.copytree(DEFAULT_MAPPINGS_DIR, root, ignore=shutil.ignore_patterns("cases"))
    chat = (root / "_dialects" / "openai_chat.yaml").read_text(encoding="utf-8")
    (root / "_dialects" / "cohere_chat.yaml").write_text(chat, encoding="utf-8")
    (root / "cohere.yaml").write_text("version: 1\nextends: _dialects/cohere_chat\n")
    (root / "acme.yaml").write_text("version: 1\nextends: _dialects/openai_chat\n")
    assert format_of("acme", root) == "chat"
    with pytest.raises(AssertionError, match=r"formats\.yaml") as info:
        format_of("cohere", root)
    assert "cohere -> _dialects/cohere_chat -> _dialects/not_openai" in str(info.value)
