"""Gemini generateContent replies: pretty JSON, CRLF SSE of whole responses, or a JSON array."""

from __future__ import annotations

import json
from typing import Any

from .render_common import JSON, Rendered
from .turn import Ids, Turn, pieces

__all__ = ["render_gemini"]

_FINISH = {"end": "STOP", "tool": "STOP", "max_tokens": "MAX_TOKENS"}


def _dumps(obj: Any) -> bytes:
    # Google's stream JSON style: `"key": value` with no space after commas, raw UTF-8.
    return json.dumps(obj, separators=(",", ": "), ensure_ascii=False).encode()


def _usage(turn: Turn, *, final: bool) -> dict[str, Any]:
    u = turn.usage
    usage: dict[str, Any] = {"promptTokenCount": u.input_total}
    candidates = u.output_total - u.reasoning
    total = u.input_total + u.reasoning + (candidates if final else 0)
    if final:
        usage["candidatesTokenCount"] = candidates
    usage["totalTokenCount"] = total
    if u.cached:
        usage["cachedContentTokenCount"] = u.cached
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": u.input_total}]
    if u.reasoning:
        usage["thoughtsTokenCount"] = u.reasoning
    return usage


def _response(turn: Turn, parts: list[dict[str, Any]], response_id: str, final: bool) -> Any:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if final:
        candidate["finishReason"] = _FINISH[turn.stop]
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
    if not stream:
        body = _response(turn, _all_parts(turn), response_id, final=True)
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
    bodies = [
        _response(turn, parts, response_id, final=i == len(chunks) - 1)
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
