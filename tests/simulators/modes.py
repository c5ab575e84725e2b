"""Reply modes a test scripts per provider with `Simulator.script(provider, *replies)`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ChunkSize",
    "Echo",
    "Error",
    "Garbage",
    "Hang",
    "Image",
    "MaxTokens",
    "MidStreamError",
    "Replay",
    "Reply",
    "Slow",
    "Thinking",
    "ToolCalls",
    "WebSearch",
]

# None: whole body at once; int: fixed-size pieces; "random": sizes 1..64 drawn with `seed`.
ChunkSize = int | Literal["random"] | None


@dataclass(frozen=True)
class Replay:
    """A recorded fixture body, byte for byte (`"anthropic/thinking_stream"`)."""

    fixture: str
    chunk_size: ChunkSize = None
    seed: int = 0
    delay: float = 0.0  # seconds between chunks


@dataclass(frozen=True)
class Echo:
    """The default: the assistant text is the last user text of the request."""

    chunk_size: ChunkSize = None  # re-chunk the bytes on the wire (frames are independent)


@dataclass(frozen=True)
class ToolCalls:
    """Parallel tool calls; `signature` becomes Gemini's thoughtSignature on the first call."""

    calls: list[tuple[str, dict[str, Any]]]
    text: str | None = None
    signature: str | None = None


@dataclass(frozen=True)
class Image:
    """A generated image (Responses image_generation_call; Gemini inlineData part).

    Streamed Responses replies send as many partial images as the request's image_generation
    tool asks for (`partial_images`), each a distinct valid PNG, then the final one.
    """

    text: str | None = "Here is your image."
    revised_prompt: str = "A red square on white"
    size: int = 8  # pixels a side


@dataclass(frozen=True)
class WebSearch:
    """The model searches the web once, then answers citing what it found, in the provider's
    documented shapes: Anthropic `server_tool_use` + `web_search_tool_result` blocks and text
    blocks with `web_search_result_location` citations (`citations_delta` when streamed);
    Gemini `groundingMetadata` (queries, chunks, supports with UTF-8 byte offsets) with the last
    chunks. A request without the provider's search tool gets a plain echo: the model cannot
    search. `answer` is (text, indices of the `results` it cites) pieces; `error` an Anthropic
    `web_search_tool_result_error` code (the search failed, the answer cites nothing).
    """

    query: str = "turnout gateway web search"
    results: tuple[tuple[str, str], ...] = (
        ("https://docs.example.com/turnout/tools", "Turnout: hosted tools"),
        ("https://news.example.org/2025/gateways", "Gateways in 2025 — naïve ünïcode ✓"),
    )
    answer: tuple[tuple[str, tuple[int, ...]], ...] = (
        ("Here is what I found. ", ()),
        ("Turnout maps a hosted web search to the provider\u2019s own search.", (0,)),
        (" ", ()),
        ("Café naïve ✓ 🦜: citations keep their place in ünïcode text.", (0, 1)),
        (" That is all.", ()),
    )
    error: str | None = None


@dataclass(frozen=True)
class Thinking:
    thought: str
    signature: str
    text: str


@dataclass(frozen=True)
class MaxTokens:
    """Text cut off by the provider's max-tokens stop."""

    text: str


@dataclass(frozen=True)
class Error:
    """An HTTP error; `native_body=None` uses the provider's default body for `status`."""

    status: int
    native_body: Any = None  # dict/list (JSON-encoded) or bytes (sent as is)
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class MidStreamError:
    """Start an echo stream, then fail after `after_chunks` frames in the provider's way.

    Frames are SSE events (Anthropic's ping counts). Anthropic: `event: error` overloaded_error;
    Responses: `response.failed`; Chat: OpenRouter-style error chunk + [DONE]; Gemini: the
    connection drops; Bedrock: a `modelStreamErrorException` event-stream frame. A
    non-streaming request gets half its JSON body, then the drop.
    """

    after_chunks: int = 1
    message: str = "Overloaded"
    text: str | None = None  # streamed text before the failure (default: the echo text)


@dataclass(frozen=True)
class Garbage:
    """HTTP 200 whose body is not what the provider promises (non-JSON / broken SSE)."""

    body: bytes | None = None


@dataclass(frozen=True)
class Slow:
    """Wait `seconds` before answering, then answer with `then` (echo by default)."""

    seconds: float
    then: Reply | None = None


@dataclass(frozen=True)
class Hang:
    """Never answer (the connection stays open until the client gives up)."""


Reply = (
    Replay
    | Echo
    | ToolCalls
    | Thinking
    | MaxTokens
    | Error
    | MidStreamError
    | Garbage
    | Slow
    | Hang
    | Image
    | WebSearch
)
