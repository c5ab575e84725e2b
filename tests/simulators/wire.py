"""Wire formats as data: the simulator speaks a dialect it has no Python for from a YAML file.

A mapping dialect the Python renderers (`render_*.py`) do not know is described beside it, in
`<mappings root>/wire/<dialect>.yaml` (not shipped: package data lists only the mapping folders).
The file says where the dialect lives, what it refuses, where the user's text is in its requests,
and how it answers, error and stream included; the reply modes (`Echo`, `ToolCalls`,
`Thinking`, `MaxTokens`, `Error`, `MidStreamError`, …) then work for it as for any other::

    route: /v2/chat                   # path suffix below the provider label
    auth: bearer                      # `Authorization: Bearer <key>` or 401; omit for none
    request: {model: {type: string, required: true}, ...}   # Cerberus; other keys: 400
    stream: "$.stream"                # JSONPath: true = stream the reply
    model: "$.model"                  # JSONPath (default "sim-model")
    user_text: "$.messages[?role == 'user'].content"  # the last match is the echo text
    stop_reasons: {end: COMPLETE, tool: TOOL_CALL, max_tokens: MAX_TOKENS}
    reply: {...}                      # template (engine/template.py) of the JSON body
    stream_reply:
      steps: [...]                    # see `_compile_steps`
      done: null                      # a final `data: ...` frame (Chat's "[DONE]"), if any
      failure: {event: error, data: {...}}  # in-band error after a MidStreamError; omit: drop
    error: {message: "{{ message }}"} # template of the error body, over status and message
    error_messages: {400: "...", default: "..."}
    facts: {...}                      # what the tests need to know (tests/formats.py)

Templates see: `id`, `model`, `text`, `thought`, `signature`, `stop` (the native reason),
`text_index` (1 after a thinking block, else 0), `text_pieces`, `thought_pieces`, `calls`
(each `index`, `id`, `name`, `arguments` as JSON text, `argument_pieces`) and `usage` (`input`
with `cached` and `cache_write` inside it, `output` with `reasoning` inside it; see turn.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from cerberus import Validator
from jsonpath_ng.ext import parse as parse_path

from turnout.engine.expressions import Expression
from turnout.engine.template import Node, compile_template, render

from .errors import Invalid
from .render_common import JSON, SSE, Rendered
from .turn import Ids, Turn, args_json, pieces

__all__ = ["WireFormat", "load_wire_formats"]

Step = Callable[[dict[str, Any], list[bytes]], None]


def _frame(event: str | None, data: Node) -> Step:
    def emit(ctx: dict[str, Any], frames: list[bytes]) -> None:
        head = f"event: {event}\n".encode() if event else b""
        frames.append(head + b"data: " + orjson.dumps(render(data, ctx)) + b"\n\n")

    return emit


def _each(name: str, source: Expression, body: list[Step]) -> Step:
    def loop(ctx: dict[str, Any], frames: list[bytes]) -> None:
        for value in source(ctx) or []:
            inner = {**ctx, name: value}
            for step in body:
                step(inner, frames)

    return loop


def _when(condition: Expression, body: list[Step]) -> Step:
    def branch(ctx: dict[str, Any], frames: list[bytes]) -> None:
        if condition(ctx):
            for step in body:
                step(ctx, frames)

    return branch


def _compile_steps(steps: list[Mapping[str, Any]], where: str) -> list[Step]:
    """`{event: name, data: template}` writes one SSE frame (`event:` only when named);
    `{for: name, in: "{{ list }}", steps: [...]}` repeats steps per element;
    `{if: "{{ condition }}", steps: [...]}` runs them when the condition is truthy."""
    compiled: list[Step] = []
    for i, step in enumerate(steps):
        at = f"{where}[{i}]"
        if "for" in step:
            body = _compile_steps(step["steps"], f"{at}.steps")
            compiled.append(_each(str(step["for"]), Expression(step["in"]), body))
        elif "if" in step:
            compiled.append(_when(Expression(step["if"]), _compile_steps(step["steps"], at)))
        elif "data" in step:
            compiled.append(_frame(step.get("event"), compile_template(step["data"])))
        else:
            raise ValueError(f"{at}: a step needs `data`, `for` or `if`: {dict(step)!r}")
    return compiled


def _cerberus_message(errors: Mapping[str, Any], prefix: str = "") -> str:
    """Cerberus' nested error tree as one line naming the first offending field."""
    field, problems = next(iter(errors.items()))
    path = f"{prefix}.{field}" if prefix else str(field)
    first = problems[0] if isinstance(problems, list) and problems else problems
    if isinstance(first, dict):
        return _cerberus_message(first, path)
    return f"{path}: {first}"


@dataclass(frozen=True)
class WireFormat:
    """One dialect the simulator serves from data (see the module docstring)."""

    name: str
    route: str
    auth: str | None
    validator: Validator
    stream_path: Any
    model_path: Any
    user_text_path: Any
    stop_reasons: Mapping[str, str]
    reply: Node
    steps: list[Step]
    done: str | None
    failure: Step | None
    error: Node
    error_messages: Mapping[str, str]
    facts: Mapping[str, Any]
    source: Path

    @classmethod
    def load(cls, path: Path) -> WireFormat:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        stream = spec.get("stream_reply") or {}
        failure = stream.get("failure")
        return cls(
            name=path.stem,
            route=spec["route"],
            auth=spec.get("auth"),
            validator=Validator(spec["request"], allow_unknown=False),
            stream_path=parse_path(spec.get("stream", "$.stream")),
            model_path=parse_path(spec.get("model", "$.model")),
            user_text_path=parse_path(spec["user_text"]),
            stop_reasons=spec["stop_reasons"],
            reply=compile_template(spec["reply"]),
            steps=_compile_steps(stream.get("steps") or [], f"{path.name}: stream_reply.steps"),
            done=stream.get("done"),
            failure=_frame(failure.get("event"), compile_template(failure["data"]))
            if failure is not None
            else None,
            error=compile_template(spec["error"]),
            error_messages={str(k): str(v) for k, v in (spec.get("error_messages") or {}).items()},
            facts=spec.get("facts") or {},
            source=path,
        )

    # -- requests ----------------------------------------------------------------------------

    def serves(self, rest: str) -> bool:
        return rest.endswith(self.route)

    def validate(self, headers: Mapping[str, str], body: Any) -> None:
        if self.auth == "bearer":
            auth = headers.get("authorization", "")
            if not auth.startswith("Bearer ") or not auth[7:].strip():
                raise Invalid(self.error_messages.get("401", "invalid api token"), status=401)
        if not isinstance(body, dict):
            raise Invalid(self.error_messages.get("400", "invalid request") + ": not an object")
        if not self.validator.validate(body):
            detail = _cerberus_message(self.validator.errors)
            raise Invalid(f"{self.error_messages.get('400', 'invalid request')}: {detail}")

    def is_stream(self, body: Mapping[str, Any]) -> bool:
        return any(match.value is True for match in self.stream_path.find(body))

    def model(self, body: Mapping[str, Any]) -> str:
        found = [m.value for m in self.model_path.find(body) if isinstance(m.value, str)]
        return found[-1] if found else "sim-model"

    def user_text(self, body: Mapping[str, Any]) -> str:
        """The last match: a string as is, a list of parts by its last part's `text`."""
        for match in reversed(self.user_text_path.find(body)):
            value = match.value
            if isinstance(value, str):
                return value
            for part in reversed(value if isinstance(value, list) else []):
                if isinstance(part, str):
                    return part
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    return str(part["text"])
        return ""

    # -- replies -----------------------------------------------------------------------------

    def _context(self, turn: Turn, ids: Ids) -> dict[str, Any]:
        calls = []
        for index, (name, args) in enumerate(turn.calls):
            encoded = args_json(args)
            calls.append(
                {
                    "index": index,
                    "id": ids.mint("call_"),
                    "name": name,
                    "arguments": encoded,
                    "argument_pieces": pieces(encoded, max(1, len(encoded) // 3)),
                }
            )
        u = turn.usage
        return {
            "id": ids.mint("msg_"),
            "model": turn.model,
            "text": turn.text,
            "thought": turn.thought,
            "signature": turn.signature,
            "stop": self.stop_reasons[turn.stop],
            "text_index": 1 if turn.thought else 0,
            "text_pieces": pieces(turn.text or ""),
            "thought_pieces": pieces(turn.thought or ""),
            "calls": calls,
            "usage": {
                "input": u.input_total,
                "cached": u.cached,
                "cache_write": u.cache_write,
                "output": u.output_total,
                "reasoning": u.reasoning,
            },
        }

    def render(self, turn: Turn, stream: bool, ids: Ids) -> Rendered:
        ctx = self._context(turn, ids)
        if not stream:
            return Rendered([orjson.dumps(render(self.reply, ctx))], JSON, False)
        frames: list[bytes] = []
        for step in self.steps:
            step(ctx, frames)
        if self.done is not None:
            frames.append(f"data: {self.done}\n\n".encode())
        return Rendered(frames, SSE, True)

    def failure_frame(self, message: str) -> bytes | None:
        """The in-band error a stream ends with, or None when this dialect just drops."""
        if self.failure is None:
            return None
        frames: list[bytes] = []
        self.failure({"message": message}, frames)
        return frames[0]

    def error_body(self, status: int, exc: Invalid | None) -> Any:
        default = self.error_messages.get("default", f"HTTP {status}")
        message = exc.message if exc else self.error_messages.get(str(status), default)
        return render(self.error, {"status": status, "message": message})


def load_wire_formats(mappings_root: Path) -> dict[str, WireFormat]:
    """Every `wire/<dialect>.yaml` beside a mappings folder, by dialect name."""
    folder = mappings_root / "wire"
    return {p.stem: WireFormat.load(p) for p in sorted(folder.glob("*.yaml"))}
