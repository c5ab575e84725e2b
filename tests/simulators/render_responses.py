"""OpenAI Responses replies: a Response object, or `event:` SSE with contiguous sequence numbers."""

from __future__ import annotations

from typing import Any

import orjson

from .render_common import JSON, SSE, Rendered
from .turn import Ids, Turn, args_json, pieces

__all__ = ["render_responses", "sse_event"]

CREATED = 1_750_000_000


def _usage(turn: Turn) -> dict[str, Any]:
    u = turn.usage
    return {
        "input_tokens": u.input_total,
        "input_tokens_details": {"cached_tokens": u.cached},
        "output_tokens": u.output_total,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.input_total + u.output_total,
    }


def _response(turn: Turn, rid: str, req: dict[str, Any], status: str) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "model": turn.model,
        "output": [],
        "parallel_tool_calls": req.get("parallel_tool_calls", True),
        "previous_response_id": req.get("previous_response_id"),
        "reasoning": req.get("reasoning") or {"effort": None, "summary": None},
        "store": req.get("store", True),
        "temperature": req.get("temperature", 1.0),
        "text": req.get("text") or {"format": {"type": "text"}},
        "tool_choice": req.get("tool_choice", "auto"),
        "tools": req.get("tools", []),
        "top_p": req.get("top_p", 1.0),
        "truncation": req.get("truncation", "disabled"),
        "usage": None,
        "user": req.get("user"),
        "metadata": req.get("metadata") or {},
    }


def _items(turn: Turn, ids: Ids) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if turn.thought is not None:
        items.append(
            {
                "id": ids.mint("rs_"),
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": turn.thought}],
                "encrypted_content": turn.signature,
            }
        )
    if turn.text is not None and (turn.text or not turn.calls):
        part = {"type": "output_text", "text": turn.text, "annotations": [], "logprobs": []}
        items.append(
            {
                "id": ids.mint("msg_"),
                "type": "message",
                "status": "incomplete" if turn.stop == "max_tokens" else "completed",
                "role": "assistant",
                "content": [part],
            }
        )
    for final, _partials, revised in turn.images:
        items.append(
            {
                "id": ids.mint("ig_"),
                "type": "image_generation_call",
                "status": "completed",
                "result": final,
                "revised_prompt": revised,
                "background": "opaque",
                "output_format": "png",
                "quality": "low",
                "size": "1024x1024",
            }
        )
    for name, args in turn.calls:
        items.append(
            {
                "id": ids.mint("fc_"),
                "type": "function_call",
                "status": "completed",
                "arguments": args_json(args),
                "call_id": ids.mint("call_"),
                "name": name,
            }
        )
    return items


def _final(turn: Turn, rid: str, req: dict[str, Any], items: list[dict[str, Any]]) -> Any:
    incomplete = turn.stop == "max_tokens"
    response = _response(turn, rid, req, "incomplete" if incomplete else "completed")
    if incomplete:
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    response["output"] = items
    response["usage"] = _usage(turn)
    return response


def render_responses(
    turn: Turn,
    stream: bool,
    ids: Ids,
    req: dict[str, Any],
    fail: tuple[int, str] | None = None,
) -> Rendered:
    """`fail=(n, message)`: keep the first n events, then end with `response.failed`."""
    rid = ids.mint("resp_")
    items = _items(turn, ids)
    if not stream:
        return Rendered([orjson.dumps(_final(turn, rid, req, items))], JSON, False)
    events: list[dict[str, Any]] = []
    emit = events.append
    emit({"type": "response.created", "response": _response(turn, rid, req, "in_progress")})
    emit({"type": "response.in_progress", "response": _response(turn, rid, req, "in_progress")})
    partials = iter([p for _final, p, _revised in turn.images])
    for index, item in enumerate(items):
        if item["type"] == "image_generation_call":
            _image_events(emit, index, item, next(partials))
        else:
            _item_events(emit, index, item)
    final = _final(turn, rid, req, items)
    terminal = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
    emit({"type": terminal, "response": final})
    if fail is not None:
        failed = _response(turn, rid, req, "failed")
        failed["error"] = {"code": "server_error", "message": fail[1]}
        events = [*events[: fail[0]], {"type": "response.failed", "response": failed}]
    return Rendered([sse_event(event, n) for n, event in enumerate(events)], SSE, True)


def sse_event(event: dict[str, Any], sequence_number: int) -> bytes:
    payload = {**event, "sequence_number": sequence_number}
    return b"event: %s\ndata: %s\n\n" % (event["type"].encode(), orjson.dumps(payload))


def _image_events(emit: Any, index: int, item: dict[str, Any], partials: list[str]) -> None:
    """OpenAI's order (providers.md §8): added, in_progress, generating, partials, completed."""
    at = {"item_id": item["id"], "output_index": index}
    emit(
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": {"id": item["id"], "type": "image_generation_call", "status": "in_progress"},
        }
    )
    emit({"type": "response.image_generation_call.in_progress", **at})
    emit({"type": "response.image_generation_call.generating", **at})
    for n, partial in enumerate(partials):
        emit(
            {
                "type": "response.image_generation_call.partial_image",
                **at,
                "partial_image_index": n,
                "partial_image_b64": partial,
                "size": item["size"],
                "quality": item["quality"],
                "background": item["background"],
                "output_format": item["output_format"],
            }
        )
    emit({"type": "response.image_generation_call.completed", **at})
    emit({"type": "response.output_item.done", "output_index": index, "item": item})


def _item_events(emit: Any, index: int, item: dict[str, Any]) -> None:
    iid = item["id"]
    at = {"item_id": iid, "output_index": index}
    if item["type"] == "reasoning":
        text = item["summary"][0]["text"]
        emit(
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "summary": []},
            }
        )
        part = {"type": "summary_text", "text": ""}
        emit(
            {
                "type": "response.reasoning_summary_part.added",
                **at,
                "summary_index": 0,
                "part": part,
            }
        )
        for piece in pieces(text):
            emit(
                {
                    "type": "response.reasoning_summary_text.delta",
                    **at,
                    "summary_index": 0,
                    "delta": piece,
                }
            )
        emit(
            {"type": "response.reasoning_summary_text.done", **at, "summary_index": 0, "text": text}
        )
        emit(
            {
                "type": "response.reasoning_summary_part.done",
                **at,
                "summary_index": 0,
                "part": {**part, "text": text},
            }
        )
    elif item["type"] == "message":
        part = item["content"][0]
        emit(
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "status": "in_progress", "content": []},
            }
        )
        emit(
            {
                "type": "response.content_part.added",
                **at,
                "content_index": 0,
                "part": {**part, "text": ""},
            }
        )
        for piece in pieces(part["text"]):
            emit(
                {
                    "type": "response.output_text.delta",
                    **at,
                    "content_index": 0,
                    "delta": piece,
                    "logprobs": [],
                }
            )
        emit(
            {
                "type": "response.output_text.done",
                **at,
                "content_index": 0,
                "text": part["text"],
                "logprobs": [],
            }
        )
        emit({"type": "response.content_part.done", **at, "content_index": 0, "part": part})
    else:
        emit(
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "status": "in_progress", "arguments": ""},
            }
        )
        encoded = item["arguments"]
        for piece in pieces(encoded, max(1, len(encoded) // 3)):
            emit({"type": "response.function_call_arguments.delta", **at, "delta": piece})
        emit({"type": "response.function_call_arguments.done", **at, "arguments": encoded})
    emit({"type": "response.output_item.done", "output_index": index, "item": item})
