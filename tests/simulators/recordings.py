"""Recorded provider traffic from `tests/fixtures/providers/`, and how to chunk it."""

from __future__ import annotations

import base64
import random
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from .modes import ChunkSize

__all__ = ["FIXTURES_DIR", "Fixture", "fixture_names", "load_fixture", "split_bytes"]

# The repository's copy of the recordings (tests/fixtures/README.md).
FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "providers"

# Only bodies that are byte-exact recordings (or stored JSON) can be replayed; Bedrock's binary
# event streams are stored base64-encoded.
_B64 = ".eventstream.b64.txt"
_BODY_SUFFIXES = (".sse", ".json", _B64)
_SIDE_FILES = (".meta.json", ".request.json", ".frames.json")
# Recorded headers that describe the old transfer, not the reply.
_DROP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "date"}


@dataclass(frozen=True)
class Fixture:
    name: str  # "anthropic/thinking_stream"
    body: bytes
    status: int
    content_type: str
    headers: list[tuple[str, str]]
    request: dict[str, Any] | None
    url: str | None


def _body_path(name: str) -> Path:
    for suffix in _BODY_SUFFIXES:
        path = FIXTURES_DIR / f"{name}{suffix}"
        if path.is_file():
            return path
    raise KeyError(f"no replayable fixture {name!r} under {FIXTURES_DIR}")


@cache
def load_fixture(name: str) -> Fixture:
    path = _body_path(name)
    meta_path = FIXTURES_DIR / f"{name}.meta.json"
    request_path = FIXTURES_DIR / f"{name}.request.json"
    meta: dict[str, Any] = orjson.loads(meta_path.read_bytes()) if meta_path.is_file() else {}
    headers: list[tuple[str, str]] = []
    content_type = ""
    for key, values in (meta.get("response_headers") or {}).items():
        if key.lower() == "content-type":
            content_type = values[0]
        elif key.lower() not in _DROP_HEADERS:
            headers.extend((key, v) for v in values)
    if not content_type:
        content_type = "text/event-stream" if path.suffix == ".sse" else "application/json"
        if path.name.endswith(_B64):
            content_type = "application/vnd.amazon.eventstream"
    status = int(meta.get("status") or _status_from_name(name))
    request = orjson.loads(request_path.read_bytes()) if request_path.is_file() else None
    body = path.read_bytes()
    if path.name.endswith(_B64):
        body = base64.b64decode(body)
    return Fixture(name, body, status, content_type, headers, request, meta.get("url"))


def _status_from_name(name: str) -> int:
    # `gemini/error_429_retry_info` has no meta file; its name carries the status.
    match = re.search(r"error_(\d{3})", name)
    return int(match.group(1)) if match else 200


def fixture_names() -> list[str]:
    """Every replayable fixture, as `dir/stem`."""
    names = set()
    for path in FIXTURES_DIR.glob("*/*"):
        if path.name.endswith(_SIDE_FILES):
            continue
        for suffix in _BODY_SUFFIXES:
            if path.name.endswith(suffix):
                names.add(f"{path.parent.name}/{path.name.removesuffix(suffix)}")
                break
    return sorted(names)


def split_bytes(data: bytes, chunk_size: ChunkSize, seed: int = 0) -> list[bytes]:
    """Cut `data` into wire chunks; cuts may fall inside UTF-8 sequences on purpose."""
    if chunk_size is None or not data:
        return [data]
    if chunk_size == "random":
        rng = random.Random(seed)
        out, pos = [], 0
        while pos < len(data):
            step = rng.randint(1, 64)
            out.append(data[pos : pos + step])
            pos += step
        return out
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
