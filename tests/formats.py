"""A mapping's wire format and what the tests know about it, read from data.

The format is the first dialect of the mapping's `extends:` chain that
`tests/simulators/formats.yaml` names (a format the Python simulators speak) or that has a wire
file `<mappings root>/wire/<dialect>.yaml` (a format served from data, tests/simulators/wire.py).
A mapping whose chain has neither is an error that says what to add, never a silent default.

The mappings the tests run over are the bundled ones, or the folder `$TURNOUT_TEST_MAPPINGS`
names (how tests/test_new_dialect.py runs the end-to-end suite over a provider added in a
temporary folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import yaml
from jsonpath_ng.ext import parse as parse_path

from tests.simulators.wire import WireFormat, load_wire_formats
from turnout.engine.registry import DEFAULT_MAPPINGS_DIR
from turnout.engine.template import compile_template, render

__all__ = ["FORMATS", "MAPPINGS_ROOT", "WIRES", "Facts", "facts", "format_of"]

MAPPINGS_ROOT = Path(os.environ.get("TURNOUT_TEST_MAPPINGS") or DEFAULT_MAPPINGS_DIR)
_TABLE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "simulators" / "formats.yaml").read_text(encoding="utf-8")
)
FORMATS: dict[str, str] = _TABLE["dialects"]
WIRES: dict[str, WireFormat] = load_wire_formats(MAPPINGS_ROOT)


@cache
def format_of(name: str, root: Path = MAPPINGS_ROOT) -> str:
    """The simulator format of mapping file `<root>/<name>.yaml` (`name` may be a variant's
    `_variants/x`)."""
    chain: list[str] = []
    current: str | None = name
    while current is not None:
        chain.append(current)
        stem = current.rsplit("/", 1)[-1]
        if current.startswith("_dialects/"):
            if stem in FORMATS:
                return FORMATS[stem]
            if (root / "wire" / f"{stem}.yaml").is_file():
                return stem
        data = yaml.safe_load((root / f"{current}.yaml").read_text(encoding="utf-8")) or {}
        parent = data.get("extends")
        current = str(parent) if parent else None
    raise AssertionError(
        f"{name}: no dialect of tests/simulators/formats.yaml in its extends chain "
        f"({' -> '.join(chain)}); add the dialect there, or describe its wire format in "
        f"{root / 'wire'}/<dialect>.yaml (tests/simulators/wire.py)"
    )


@dataclass(frozen=True)
class Facts:
    """Where a format puts what the end-to-end tests look for (formats.yaml `facts:`)."""

    data: dict[str, Any]

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise AssertionError(f"format facts lack {key!r} (tests/simulators/formats.yaml)")
        return self.data[key]

    @property
    def asks_for_reasoning(self) -> bool:
        return bool(self._get("asks_for_reasoning"))

    @property
    def reports_cache_writes(self) -> bool:
        return bool(self._get("usage")["cache_writes"])

    @property
    def reports_reasoning_tokens(self) -> bool:
        return bool(self._get("usage")["reasoning_tokens"])

    @property
    def counts_tokens(self) -> bool:
        """The format has a token-counting endpoint (POST /v1/responses/input_tokens)."""
        return bool(self._get("counts_tokens"))

    @property
    def call_ids_sent(self) -> bool:
        return bool(self._get("call_ids_sent"))

    @property
    def web_search(self) -> dict[str, Any] | None:
        """Where the provider's own web search goes and what comes back (formats.yaml); None:
        the format has none, a web_search tool is refused."""
        found = self.data.get("web_search")
        return dict(found) if found else None

    def _at(self, section: str, body: Any) -> Any:
        found = parse_path(self._get(section)["at"]).find(body)
        assert found, f"{section}: nothing at {self._get(section)['at']} in {body!r}"
        return found[0].value

    def schema_sent(self, body: Any) -> Any:
        value = self._at("schema", body)
        return orjson.loads(value) if self._get("schema").get("json_text") else value

    def image_sent(self, body: Any) -> Any:
        return self._at("image", body)

    def image_expected(self, kind: str, **values: str) -> Any:
        """What an image input becomes (`kind` data_url or url); None when refused."""
        spec = self._get("image")[kind]
        return None if spec == "refused" else render(compile_template(spec), values)

    def tool_choice_sent(self, body: Any) -> Any:
        return self._at("tool_choice", body)

    def tool_choice_expected(self, choice: str) -> Any:
        return self._get("tool_choice")[choice]

    # -- tests/test_request_roundtrip.py: where the request's pieces land --------------------

    def _text(self, which: str, body: Any) -> Any:
        spec = self._get("request")[which]
        node = body
        if "message" in spec:
            node = _one(spec["message"], body, which)
            assert node.get("role") == spec["role"], f"{which}: {node!r} is not a {spec['role']}"
        return _one(spec["text"], node, which)

    def user_text(self, body: Any) -> Any:
        return self._text("user", body)

    def instructions(self, body: Any) -> Any:
        return self._text("instructions", body)

    def call(self, body: Any) -> tuple[Any, Any, Any]:
        """(id or None where the format has none, name, arguments) of the one function call."""
        spec = self._get("request")["call"]
        node = _one(spec["at"], body, "call")
        call_id = _one(spec["id"], node, "call id") if "id" in spec else None
        return call_id, _one(spec["name"], node, "call name"), _one(spec["arguments"], node, "")

    def call_output(self, body: Any) -> tuple[Any, Any, Any]:
        """(call id or None, function name or None, value) of the one function output."""
        spec = self._get("request")["output"]
        node = _one(spec["at"], body, "output")
        call_id = _one(spec["id"], node, "output id") if "id" in spec else None
        name = _one(spec["name"], node, "output name") if "name" in spec else None
        return call_id, name, _one(spec["value"], node, "output value")

    @property
    def output_is_struct(self) -> bool:
        return bool(self._get("request")["output"].get("struct"))

    # -- history fidelity: the assistant messages sent back up ------------------------------

    def assistant_turns(self, body: Any) -> list[Any]:
        """Every assistant message (or turn) in the upstream body, in order."""
        return [m.value for m in parse_path(self._get("history")["assistant"]).find(body)]

    def phases(self, body: Any) -> list[Any] | None:
        """The phase of each assistant message sent; None where the format has no phase."""
        spec = self._get("history").get("phase")
        if spec is None:
            return None
        path = parse_path(spec)
        return [next((f.value for f in path.find(m)), None) for m in self.assistant_turns(body)]


def _one(path: str, node: Any, what: str) -> Any:
    found = parse_path(path).find(node)
    assert len(found) == 1, f"{what}: {path} matches {len(found)} times in {node!r}"
    return found[0].value


def facts(fmt: str) -> Facts:
    if fmt in WIRES:
        return Facts(dict(WIRES[fmt].facts))
    return Facts(_TABLE["facts"][fmt])
