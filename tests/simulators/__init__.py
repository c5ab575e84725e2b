"""Loopback provider simulators the gateway's tests run against.

from tests.simulators import Simulator, Replay, ToolCalls

with Simulator() as sim:
    sim.script("anthropic", Replay("anthropic/thinking_stream", chunk_size=7))
    ...  # point the gateway at sim.base("anthropic")
    assert sim.requests[-1].json["max_tokens"] == 1024
"""

from __future__ import annotations

from .cloud import VERTEX_ANTHROPIC_VERSION
from .eventstream import encode_message
from .google_oauth import make_service_account
from .modes import (
    ChunkSize,
    Echo,
    Error,
    Garbage,
    Hang,
    Image,
    MaxTokens,
    MidStreamError,
    Replay,
    Reply,
    Slow,
    Thinking,
    ToolCalls,
    WebSearch,
)
from .recordings import FIXTURES_DIR, Fixture, fixture_names, load_fixture, split_bytes
from .server import RecordedRequest, Simulator
from .sigv4 import TEST_ACCESS_KEY, TEST_SECRET_KEY
from .turn import Usage, compute_usage, last_user_text, prompt_chars

__all__ = [
    "FIXTURES_DIR",
    "TEST_ACCESS_KEY",
    "TEST_SECRET_KEY",
    "VERTEX_ANTHROPIC_VERSION",
    "ChunkSize",
    "Echo",
    "Error",
    "Fixture",
    "Garbage",
    "Hang",
    "Image",
    "MaxTokens",
    "MidStreamError",
    "RecordedRequest",
    "Replay",
    "Reply",
    "Simulator",
    "Slow",
    "Thinking",
    "ToolCalls",
    "Usage",
    "WebSearch",
    "compute_usage",
    "encode_message",
    "fixture_names",
    "last_user_text",
    "load_fixture",
    "make_service_account",
    "prompt_chars",
    "split_bytes",
]
