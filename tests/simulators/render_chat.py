"""OpenAI Chat Completions replies: JSON, or `data:` chunks ending in `data: [DONE]`."""

from __future__ import annotations

from typing import Any

import orjson

from .render_common import JSON, SSE, Rendered
from .turn import Ids, Turn, args_json, pieces

__all__ = ["chat_error_frame", "render_chat"]

_FINISH = {"end": "stop", "tool": "tool_calls", "max_tokens": "length"}
CREATED = 1_750_000_000


def _usage(turn: Turn) -> dict[str, Any]:
    u = turn.usage
    return {
        "prompt_tokens": u.input_total,
        "completion_tokens": u.output_total,
        "total_tokens": u.input_total + u.output_total,
        "prompt_tokens_details": {"cached_tokens": u.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def render_chat(turn: Turn, stream: bool, ids: Ids, include_usage: bool = False) -> Rendered:
    completion_id = ids.mint("chatcmpl-")
    call_ids = [ids.mint("call_") for _ in turn.calls]
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": turn.text, "refusal": None}
        if turn.thought is not None:
            message["reasoning_content"] = turn.thought
        if turn.calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": n, "arguments": args_json(a)}}
                for cid, (n, a) in zip(call_ids, turn.calls, strict=True)
            ]
        body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": CREATED,
            "model": turn.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _FINISH[turn.stop],
                }
            ],
            "usage": _usage(turn),
            "system_fingerprint": "fp_sim",
        }
        return Rendered([orjson.dumps(body)], JSON, False)
    frames: list[bytes] = []

    def emit(delta: dict[str, Any], finish: str | None = None) -> None:
        chunk: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": turn.model,
            "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            chunk["usage"] = None
        frames.append(b"data: " + orjson.dumps(chunk) + b"\n\n")

    emit({"role": "assistant", "content": "", "refusal": None})
    for piece in pieces(turn.thought or ""):  # DeepSeek-style reasoning before the answer
        emit({"content": None, "reasoning_content": piece})
    for piece in pieces(turn.text or ""):
        emit({"content": piece})
    for index, (cid, (name, args)) in enumerate(zip(call_ids, turn.calls, strict=True)):
        head = {"index": index, "id": cid, "type": "function"}
        emit({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
        encoded = args_json(args)
        for piece in pieces(encoded, max(1, len(encoded) // 3)):
            emit({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    emit({}, _FINISH[turn.stop])
    if include_usage:
        usage_chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": turn.model,
            "system_fingerprint": "fp_sim",
            "choices": [],
            "usage": _usage(turn),
        }
        frames.append(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
    frames.append(b"data: [DONE]\n\n")
    return Rendered(frames, SSE, True)


def chat_error_frame(message: str, model: str) -> bytes:
    # OpenRouter's in-band failure (openai_chat/openrouter_stream_error.sse) plus [DONE].
    chunk = {
        "id": "gen-sim-error",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "error": {"code": 502, "message": message},
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": "error",
                "native_finish_reason": "error",
                "logprobs": None,
            }
        ],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n"
