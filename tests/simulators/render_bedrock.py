"""Bedrock Converse replies: sorted-key JSON, or ConverseStream event-stream frames.

Every stream event carries Bedrock's random `p` padding key (a prefix of a-zA-Z0-9), reproducible
per message here. Text blocks get no contentBlockStart; tool-use blocks do, and their input
arrives as JSON *string* fragments.
"""

from __future__ import annotations

import random
import string
from typing import Any

import orjson

from .eventstream import CONTENT_TYPE, event_frame, exception_frame
from .render_common import JSON, Rendered
from .turn import Ids, Turn, args_json, pieces

__all__ = ["bedrock_exception_frame", "render_bedrock"]

_STOP = {"end": "end_turn", "tool": "tool_use", "max_tokens": "max_tokens"}
_PAD = string.ascii_lowercase + string.ascii_uppercase + string.digits


def _usage(turn: Turn) -> dict[str, int]:
    u = turn.usage
    # Like Anthropic: inputTokens excludes cache reads and writes; totalTokens counts them all.
    return {
        "cacheReadInputTokens": u.cached,
        "cacheWriteInputTokens": u.cache_write,
        "inputTokens": u.input_total - u.cached - u.cache_write,
        "outputTokens": u.output_total,
        "totalTokens": u.input_total + u.output_total,
    }


def _latency(turn: Turn) -> int:
    return 100 + turn.usage.output_total


def _blocks(turn: Turn, ids: Ids) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if turn.thought is not None:
        reasoning = {"signature": turn.signature, "text": turn.thought}
        blocks.append({"reasoningContent": {"reasoningText": reasoning}})
    if turn.text:
        blocks.append({"text": turn.text})
    for name, args in turn.calls:
        call = {"input": args, "name": name, "toolUseId": ids.mint("tooluse_")}
        blocks.append({"toolUse": call})
    return blocks


def render_bedrock(turn: Turn, stream: bool, ids: Ids) -> Rendered:
    blocks = _blocks(turn, ids)
    if not stream:
        body = {
            "metrics": {"latencyMs": _latency(turn)},
            "output": {"message": {"content": blocks, "role": "assistant"}},
            "stopReason": _STOP[turn.stop],
            "usage": _usage(turn),
        }
        return Rendered([orjson.dumps(body, option=orjson.OPT_SORT_KEYS)], JSON, False)
    rng = random.Random(ids.mint("bedrock-pad-"))
    frames: list[bytes] = []

    def emit(event: str, payload: dict[str, Any]) -> None:
        frames.append(event_frame(event, {**payload, "p": _PAD[: rng.randint(1, len(_PAD))]}))

    emit("messageStart", {"role": "assistant"})
    for index, block in enumerate(blocks):

        def delta(value: dict[str, Any], index: int = index) -> None:
            emit("contentBlockDelta", {"contentBlockIndex": index, "delta": value})

        if "reasoningContent" in block:
            reasoning = block["reasoningContent"]["reasoningText"]
            for piece in pieces(reasoning["text"]):
                delta({"reasoningContent": {"text": piece}})
            if reasoning["signature"]:
                delta({"reasoningContent": {"signature": reasoning["signature"]}})
        elif "text" in block:
            for piece in pieces(block["text"]):
                delta({"text": piece})
        else:
            call = block["toolUse"]
            start = {"toolUse": {"name": call["name"], "toolUseId": call["toolUseId"]}}
            emit("contentBlockStart", {"contentBlockIndex": index, "start": start})
            encoded = args_json(call["input"])
            for piece in pieces(encoded, max(1, len(encoded) // 3)):
                delta({"toolUse": {"input": piece}})
        emit("contentBlockStop", {"contentBlockIndex": index})
    emit("messageStop", {"stopReason": _STOP[turn.stop]})
    emit("metadata", {"metrics": {"latencyMs": _latency(turn)}, "usage": _usage(turn)})
    return Rendered(frames, CONTENT_TYPE, True)


def bedrock_exception_frame(message: str) -> bytes:
    """A mid-stream model failure, shaped like bedrock/model_stream_error_exception."""
    payload = {"message": message, "originalStatusCode": 500, "originalMessage": message}
    return exception_frame("modelStreamErrorException", payload)
