"""Gemini generateContent replies: pretty JSON, CRLF SSE of whole responses, or a JSON array.

Grounding with Google Search follows the documented shapes
(https://ai.google.dev/gemini-api/docs/google-search, "Understanding the grounding response";
https://ai.google.dev/api/generate-content#GroundingMetadata, #Segment):
`candidates[0].groundingMetadata` = webSearchQueries, searchEntryPoint.renderedContent,
groundingChunks `{web: {uri, title}}` (a vertexaisearch redirect URI, the site's domain as
title) and groundingSupports `{segment: {startIndex, endIndex, text}, groundingChunkIndices}`,
the offsets in UTF-8 bytes of the text part, `startIndex` left out when 0 (proto3 JSON omits
defaults). Streamed, the metadata rides on the last text chunk and is resent, accumulated, on
the finishing chunk (as langchain-ai/langchainjs#11456 and vercel/ai#13123 observed), and usage
gains `toolUsePromptTokenCount`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

from .render_common import JSON, Rendered
from .turn import Ids, Search, Turn, pieces

__all__ = ["grounding_uri", "render_gemini"]

_FINISH = {"end": "STOP", "tool": "STOP", "max_tokens": "MAX_TOKENS"}


def _dumps(obj: Any) -> bytes:
    # Google's stream JSON style: `"key": value` with no space after commas, raw UTF-8.
    return json.dumps(obj, separators=(",", ": "), ensure_ascii=False).encode()


def _usage(turn: Turn, *, final: bool) -> dict[str, Any]:
    u = turn.usage
    usage: dict[str, Any] = {"promptTokenCount": u.input_total}
    if turn.search is not None:  # the search results count as tool-use prompt
        usage["promptTokenCount"] = u.input_total - u.input_total // 5
    candidates = u.output_total - u.reasoning
    total = u.input_total + u.reasoning + (candidates if final else 0)
    if final:
        usage["candidatesTokenCount"] = candidates
    usage["totalTokenCount"] = total
    if u.cached:
        usage["cachedContentTokenCount"] = u.cached
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": usage["promptTokenCount"]}]
    if turn.search is not None:
        usage["toolUsePromptTokenCount"] = u.input_total // 5
    if u.reasoning:
        usage["thoughtsTokenCount"] = u.reasoning
    return usage


def grounding_uri(url: str) -> str:
    """The redirect URI Google gives for a grounding source (the page's own URL stays hidden)."""
    token = hashlib.sha256(url.encode()).hexdigest()
    return f"https://vertexaisearch.cloud.google.com/grounding-api-redirect/AUZIYQ{token}"


def _grounding(search: Search) -> dict[str, Any]:
    chunks = [
        {"web": {"uri": grounding_uri(url), "title": urlsplit(url).hostname or url}}
        for url, _ in search.results
    ]
    supports: list[dict[str, Any]] = []
    at = 0  # bytes of the text so far
    for text, cited in search.pieces:
        size = len(text.encode())
        if cited:
            segment: dict[str, Any] = {"startIndex": at} if at else {}
            segment.update(endIndex=at + size, text=text)
            supports.append({"segment": segment, "groundingChunkIndices": list(cited)})
        at += size
    return {
        "webSearchQueries": [search.query],
        "searchEntryPoint": {
            "renderedContent": '<style>.container{display:flex}</style><div class="container">'
            f'<a class="chip" href="https://www.google.com/search?q={search.query}">'
            f"{search.query}</a></div>"
        },
        "groundingChunks": chunks,
        "groundingSupports": supports,
    }


def _response(
    turn: Turn,
    parts: list[dict[str, Any]],
    response_id: str,
    final: bool,
    grounding: dict[str, Any] | None = None,
) -> Any:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if final:
        candidate["finishReason"] = _FINISH[turn.stop]
    if grounding is not None:
        candidate["groundingMetadata"] = grounding
    candidate["index"] = 0
    return {
        "candidates": [candidate],
        "usageMetadata": _usage(turn, final=final),
        "modelVersion": turn.model,
        "responseId": response_id,
    }


def _call_parts(turn: Turn) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for name, args in turn.calls:  # Gemini sends calls whole, without ids
        part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
        if turn.call_signature and not parts:
            part["thoughtSignature"] = turn.call_signature
        parts.append(part)
    return parts


def _all_parts(turn: Turn) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if turn.thought is not None:
        parts.append({"text": turn.thought, "thought": True})
    if turn.text or not (turn.calls or turn.images):
        part: dict[str, Any] = {"text": turn.text or ""}
        if turn.signature:
            part["thoughtSignature"] = turn.signature
        parts.append(part)
    return parts + _image_parts(turn) + _call_parts(turn)


def _image_parts(turn: Turn) -> list[dict[str, Any]]:
    # Gemini image models answer with whole inlineData parts, no partials.
    return [{"inlineData": {"mimeType": "image/png", "data": final}} for final, _, _ in turn.images]


def render_gemini(turn: Turn, stream: bool, ids: Ids, sse: bool = True) -> Rendered:
    response_id = ids.mint("")
    grounding = _grounding(turn.search) if turn.search is not None else None
    if not stream:
        body = _response(turn, _all_parts(turn), response_id, final=True, grounding=grounding)
        return Rendered([json.dumps(body, indent=2, ensure_ascii=False).encode()], JSON, False)
    chunks: list[list[dict[str, Any]]] = []
    if turn.thought is not None:
        chunks += [[{"text": p, "thought": True}] for p in pieces(turn.thought, 16)]
    for i, piece in enumerate(pieces(turn.text or "")):
        part: dict[str, Any] = {"text": piece}
        if i == 0 and turn.signature:  # the signature rides on the first answer part
            part["thoughtSignature"] = turn.signature
        chunks.append([part])
    if turn.images:
        chunks.append(_image_parts(turn))
    if turn.calls:
        chunks.append(_call_parts(turn))
    if not turn.text and not turn.calls and not turn.images:  # an empty answer: one empty part
        chunks.append([{"text": ""}])
    if grounding is not None:  # the finishing chunk carries no text, the metadata again
        chunks.append([{"text": ""}])
    last = len(chunks) - 1
    bodies = [
        _response(
            turn,
            parts,
            response_id,
            final=i == last,
            grounding=grounding if grounding is not None and i >= last - 1 else None,
        )
        for i, parts in enumerate(chunks)
    ]
    if not sse:  # streamGenerateContent without alt=sse: one JSON array, sent in pieces
        out = [b"[" + _dumps(bodies[0])]
        out += [b",\r\n" + _dumps(b) for b in bodies[1:]]
        out.append(b"]")
        return Rendered(out, "application/json; charset=UTF-8", True)
    return Rendered(
        [b"data: " + _dumps(b) + b"\r\n\r\n" for b in bodies], "text/event-stream", True
    )
