"""Turn a scripted reply mode into an HTTP response in one dialect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import Dialect, Invalid, default_error_headers, error_body
from .eventstream import CONTENT_TYPE as EVENTSTREAM
from .eventstream import encode_message
from .http import HttpResponse
from .images import png_b64
from .modes import (
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
from .recordings import load_fixture, split_bytes
from .render_anthropic import anthropic_error_frame, render_anthropic
from .render_bedrock import bedrock_exception_frame, render_bedrock
from .render_chat import chat_error_frame, render_chat
from .render_common import Rendered
from .render_gemini import render_gemini
from .render_responses import render_responses
from .turn import Ids, Search, Turn, compute_usage, last_user_text, search_tool
from .wire import WireFormat

__all__ = ["Context", "error_response", "respond"]


@dataclass(frozen=True)
class Context:
    """What a reply needs to know about the request it answers."""

    dialect: Dialect
    body: dict[str, Any]
    model: str
    stream: bool
    gemini_sse: bool  # streamGenerateContent?alt=sse (else a streamed JSON array)
    ids: Ids
    wire: WireFormat | None = None  # a dialect served from data (wire.py)


def _json_type(dialect: Dialect) -> str:
    return "application/json; charset=UTF-8" if dialect == "gemini" else "application/json"


def error_response(
    dialect: Dialect,
    status: int,
    exc: Invalid | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    wire: WireFormat | None = None,
) -> HttpResponse:
    if body is None:
        body = wire.error_body(status, exc) if wire else error_body(dialect, status, exc)
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    merged = {"content-type": _json_type(dialect), **default_error_headers(dialect, status)}
    if dialect == "bedrock" and exc is not None and exc.kind:
        merged["x-amzn-ErrorType"] = exc.kind
    merged.update(headers or {})
    return HttpResponse(status, list(merged.items()), raw)


async def _frames(chunks: list[bytes], delay: float = 0.0) -> AsyncIterator[bytes]:
    for i, chunk in enumerate(chunks):
        if delay and i:
            await asyncio.sleep(delay)
        yield chunk


def _turn(reply: Reply, ctx: Context) -> Turn:
    text: str | None = None
    calls: list[tuple[str, dict[str, Any]]] = []
    thought = signature = call_signature = None
    stop = "end"
    if isinstance(reply, ToolCalls):
        text, calls, call_signature, stop = reply.text, list(reply.calls), reply.signature, "tool"
    elif isinstance(reply, Thinking):
        text, thought, signature = reply.text, reply.thought, reply.signature
    elif isinstance(reply, MaxTokens):
        text, stop = reply.text, "max_tokens"
    elif (isinstance(reply, MidStreamError) and reply.text is not None) or isinstance(reply, Image):
        text = reply.text
    elif ctx.wire is not None:
        text = ctx.wire.user_text(ctx.body)
    else:
        text = last_user_text(ctx.dialect, ctx.body)
    search = _search(reply, ctx)
    if search is not None:
        text = search.text
    images: list[tuple[str, list[str], str]] = []
    if isinstance(reply, Image):
        tool = next(
            (t for t in ctx.body.get("tools") or [] if t.get("type") == "image_generation"), {}
        )
        count = int(tool.get("partial_images") or 0)
        partials = [png_b64(reply.size, reply.size, (60 * (i + 1), 0, 0)) for i in range(count)]
        final = png_b64(reply.size, reply.size, (255, 0, 0))
        images.append((final, partials, reply.revised_prompt))
    return Turn(
        model=ctx.model,
        text=text,
        calls=calls,
        thought=thought,
        signature=signature,
        call_signature=call_signature,
        stop=stop,  # type: ignore[arg-type]
        usage=compute_usage(ctx.body, text, calls, thought),
        images=images,
        search=search,
    )


def _search(reply: Reply, ctx: Context) -> Search | None:
    """The search a WebSearch reply makes, when the request gave the provider's search tool."""
    if not isinstance(reply, WebSearch) or ctx.wire is not None:
        return None
    if search_tool(ctx.dialect, ctx.body) is None:
        return None  # no search tool: the model cannot search, it echoes
    pieces = [(text, () if reply.error else cites) for text, cites in reply.answer]
    return Search(reply.query, list(reply.results), pieces, reply.error)


def _render(turn: Turn, ctx: Context, fail: tuple[int, str] | None = None) -> Rendered:
    if ctx.wire is not None:
        return ctx.wire.render(turn, ctx.stream, ctx.ids)
    if ctx.dialect == "anthropic":
        return render_anthropic(turn, ctx.stream, ctx.ids)
    if ctx.dialect == "bedrock":
        return render_bedrock(turn, ctx.stream, ctx.ids)
    if ctx.dialect == "gemini":
        return render_gemini(turn, ctx.stream, ctx.ids, sse=ctx.gemini_sse)
    if ctx.dialect == "chat":
        options = ctx.body.get("stream_options") or {}
        return render_chat(turn, ctx.stream, ctx.ids, bool(options.get("include_usage")))
    return render_responses(turn, ctx.stream, ctx.ids, ctx.body, fail)


def _send(rendered: Rendered, status: int = 200) -> HttpResponse:
    headers = [("content-type", rendered.content_type)]
    if not rendered.stream:
        return HttpResponse(status, headers, rendered.frames[0])
    return HttpResponse(status, headers, chunks=_frames(rendered.frames))


async def respond(reply: Reply, ctx: Context) -> HttpResponse:
    if isinstance(reply, Slow):
        await asyncio.sleep(reply.seconds)
        return await respond(reply.then or Echo(), ctx)
    if isinstance(reply, Hang):
        await asyncio.Event().wait()  # cancelled when the client leaves or the simulator stops
    if isinstance(reply, Error):
        return error_response(
            ctx.dialect, reply.status, None, reply.native_body, reply.headers, ctx.wire
        )
    if isinstance(reply, Replay):
        return _replay(reply)
    if isinstance(reply, Garbage):
        return _garbage(reply, ctx)
    if isinstance(reply, MidStreamError):
        return _mid_stream_error(reply, ctx)
    assert isinstance(reply, Echo | ToolCalls | Thinking | MaxTokens | Image | WebSearch)
    rendered = _render(_turn(reply, ctx), ctx)
    if isinstance(reply, Echo) and reply.chunk_size is not None:
        wire = split_bytes(b"".join(rendered.frames), reply.chunk_size)
        return HttpResponse(200, [("content-type", rendered.content_type)], chunks=_frames(wire))
    return _send(rendered)


def _replay(reply: Replay) -> HttpResponse:
    fixture = load_fixture(reply.fixture)
    headers = [("content-type", fixture.content_type), *fixture.headers]
    is_stream = fixture.content_type.startswith(("text/event-stream", EVENTSTREAM))
    if reply.chunk_size is None and not is_stream:
        return HttpResponse(fixture.status, headers, fixture.body)
    wire = split_bytes(fixture.body, reply.chunk_size, reply.seed)
    return HttpResponse(fixture.status, headers, chunks=_frames(wire, reply.delay))


def _garbage(reply: Garbage, ctx: Context) -> HttpResponse:
    if reply.body is not None:
        body = reply.body
    elif ctx.stream and ctx.dialect == "bedrock":
        # A frame whose message CRC is wrong: the client's event-stream parser must refuse it.
        frame = encode_message([(":event-type", "messageStart")], b'{"role":"assistant"}')
        body = frame[:-4] + bytes(b ^ 0xFF for b in frame[-4:])
        return HttpResponse(200, [("content-type", EVENTSTREAM)], chunks=_frames([body]))
    elif ctx.stream:
        body = b'data: {"type": "message_st\n\nevent: ???\ndata: <html>oops</html>\n\n'
    else:
        body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    kind = "text/event-stream" if ctx.stream else _json_type(ctx.dialect)
    return HttpResponse(200, [("content-type", kind)], chunks=_frames([body]))


def _mid_stream_error(reply: MidStreamError, ctx: Context) -> HttpResponse:
    turn = _turn(reply, ctx)
    n = reply.after_chunks
    if not ctx.stream:
        # A JSON body cut short: the announced length is never delivered.
        full = _render(turn, ctx).frames[0]
        headers = [("content-type", _json_type(ctx.dialect))]
        return HttpResponse(
            200, headers, full[: len(full) // 2], cut=True, content_length=len(full)
        )
    if ctx.dialect == "responses":
        return _send(_render(turn, ctx, fail=(n, reply.message)))
    rendered = _render(turn, ctx)
    frames = rendered.frames[:n]
    headers = [("content-type", rendered.content_type)]
    if ctx.wire is not None:
        failure = ctx.wire.failure_frame(reply.message)
        if failure is None:  # no in-band error in this dialect: the connection drops
            return HttpResponse(200, headers, chunks=_frames(frames), cut=True)
        frames.append(failure)
        return HttpResponse(200, headers, chunks=_frames(frames))
    if ctx.dialect == "gemini":  # Gemini has no in-band error: the connection just drops
        return HttpResponse(200, headers, chunks=_frames(frames), cut=True)
    if ctx.dialect == "anthropic":
        frames.append(anthropic_error_frame(reply.message))
    elif ctx.dialect == "bedrock":
        frames.append(bedrock_exception_frame(reply.message))
    else:
        frames.append(chat_error_frame(reply.message, ctx.model))
    return HttpResponse(200, headers, chunks=_frames(frames))
