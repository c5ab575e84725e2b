"""Turnout's compaction blobs (engine/compaction.py), their expansion by engine/canonical.py and
the compact call itself (server/compaction.py) with a stand-in create path."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from turnout.engine.canonical import normalize
from turnout.engine.compaction import COMPACTION_PREFIX, SUMMARY_LEAD, open_summary, seal_summary
from turnout.engine.errors import RequestError, UpstreamError
from turnout.engine.ids import IdFactory
from turnout.server.compaction import SUMMARY_INSTRUCTION, Compactor, compaction_key
from turnout.server.config import Settings
from turnout.server.replies import JsonReply, StreamReply
from turnout.server.request_context import ANONYMOUS, Caller

KEY = b"k" * 32


def test_seal_and_open_round_trip() -> None:
    blob = seal_summary("The cat is Quillon, 7.", KEY)
    assert blob.startswith(COMPACTION_PREFIX) and "Quillon" not in blob
    assert open_summary(blob, KEY) == "The cat is Quillon, 7."


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-2] + ("AA" if not b.endswith("AA") else "BB"),  # the seal
        lambda b: b.replace(COMPACTION_PREFIX, COMPACTION_PREFIX + "x", 1),  # the payload
        lambda b: b.split(".", 2)[0] + "." + b.split(".", 2)[1],  # no seal at all
        lambda b: "tnt1." + b[len(COMPACTION_PREFIX) :],  # another format
    ],
)
def test_an_altered_blob_does_not_open(mangle: Any) -> None:
    assert open_summary(mangle(seal_summary("summary", KEY)), KEY) is None


def test_another_key_or_no_key_does_not_open() -> None:
    blob = seal_summary("summary", KEY)
    assert open_summary(blob, b"o" * 32) is None
    assert open_summary(blob, None) is None


def body(*items: Any) -> dict[str, Any]:
    return {"model": "anthropic/x", "input": list(items)}


def test_canonical_puts_the_summary_before_the_new_input() -> None:
    item = {"type": "compaction", "id": "cmp_1", "encrypted_content": seal_summary("S!", KEY)}
    canon = normalize(body(item, {"role": "user", "content": "next"}), seal_key=KEY)
    texts = [(e["role"], e["text"]) for e in canon.view["entries"]]
    assert texts == [("user", SUMMARY_LEAD + "S!"), ("user", "next")]
    assert canon.view["native_compaction"] is None
    assert canon.input_items[0] == item  # stored as sent, for the next turn of the chain


def test_canonical_refuses_a_tampered_blob_naming_it() -> None:
    blob = seal_summary("S!", b"o" * 32)
    for key in (KEY, None):
        with pytest.raises(RequestError) as err:
            normalize(
                body(
                    {"role": "user", "content": "a"},
                    {"type": "compaction", "encrypted_content": blob},
                ),
                seal_key=key,
            )
        assert err.value.param == "input[1].encrypted_content"
        assert err.value.code == "invalid_encrypted_content" and err.value.status == 400


def test_canonical_marks_a_providers_own_blob() -> None:
    item = {"type": "compaction", "encrypted_content": "gAAAA-native"}
    canon = normalize(body({"role": "user", "content": "a"}, item), seal_key=KEY)
    assert canon.view["native_compaction"] == "input[1].encrypted_content"
    assert canon.view["entries"][-1] == {
        "role": "assistant", "kind": "compaction", "encrypted_content": "gAAAA-native"
    }  # fmt: skip
    with pytest.raises(RequestError) as err:
        normalize(body({"type": "compaction"}), seal_key=KEY)
    assert err.value.param == "input[0].encrypted_content"


def response(text: str | None, status: str = "completed") -> dict[str, Any]:
    output = [] if text is None else [
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": text, "annotations": []}]}
    ]  # fmt: skip
    return {
        "id": "resp_1", "created_at": 5, "status": status, "output": output,
        "error": {"code": "server_error", "message": "boom"} if status == "failed" else None,
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5, "cost": 0.1},
    }  # fmt: skip


class FakeCreate:
    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        self.bodies: list[Any] = []

    async def __call__(self, body: Any, caller: Caller) -> JsonReply | StreamReply:
        self.bodies.append(body)
        return JsonReply(self.reply, {"x-turnout-attempts": "1"})


def run(compactor: Compactor, payload: Any) -> JsonReply:
    return asyncio.run(compactor.compact(payload, ANONYMOUS))


def test_compactor_summarises_through_create_and_seals() -> None:
    create = FakeCreate(response("The summary."))
    reply = run(Compactor(create, KEY, IdFactory()), {
        "model": "m", "input": "hello", "instructions": "be brief", "prompt_cache_key": "k",
        "prompt_cache_retention": "24h",
    })  # fmt: skip
    (sent,) = create.bodies
    assert sent["model"] == "m" and sent["stream"] is False and sent["instructions"] == "be brief"
    assert sent["input"][0] == {"type": "message", "role": "user", "content": "hello"}
    assert sent["input"][-1]["content"] == SUMMARY_INSTRUCTION
    assert "prompt_cache_retention" not in sent
    out = reply.response
    assert out["object"] == "response.compaction" and out["id"] == "resp_1"
    assert out["usage"]["cost"] == 0.1 and reply.headers == {"x-turnout-attempts": "1"}
    (item,) = out["output"]
    assert open_summary(item["encrypted_content"], KEY) == "The summary."


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": 3, "input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": {"a": 1}}, "input"),
        ({"model": "m", "input": "x", "tools": []}, "tools"),
        ([1], None),
    ],
)
def test_compactor_refuses_bad_bodies(payload: Any, param: str | None) -> None:
    create = FakeCreate(response("s"))
    with pytest.raises(RequestError) as err:
        run(Compactor(create, KEY, IdFactory()), payload)
    assert err.value.status == 400 and err.value.param == param
    assert create.bodies == []


@pytest.mark.parametrize("reply", [response(None), response("  "), response(None, "failed")])
def test_no_summary_is_an_upstream_error(reply: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError) as err:
        run(Compactor(FakeCreate(reply), KEY, IdFactory()), {"model": "m", "input": "x"})
    assert err.value.status == 502


def test_the_key_comes_from_the_config_then_the_master_key() -> None:
    from_env = compaction_key(Settings(compaction_key="s3cret"))
    assert from_env == compaction_key(Settings(compaction_key="s3cret", master_key="mk"))
    from_master = compaction_key(Settings(master_key="mk"))
    assert from_master == compaction_key(Settings(master_key="mk")) != from_env
    assert compaction_key(Settings()) != compaction_key(Settings())  # random per process


def compact_request(provider: str, settings: dict[str, Any] | None = None) -> Any:
    from turnout.engine.registry import DEFAULT_MAPPINGS_DIR, MappingRegistry

    mapping = MappingRegistry.load(DEFAULT_MAPPINGS_DIR).resolve(provider, "m")
    assert mapping.compacts
    canon = normalize(
        {"model": f"{provider}/m", "input": "hi", "instructions": "short", "service_tier": "flex"}
    )
    return mapping.build_compact(
        canon, model="m", api_base="https://h.example/v1" if provider == "openai" else
        "https://r.openai.azure.com", credentials={"api_key": "sk-x"}, settings=settings or {},
    )  # fmt: skip


def test_the_responses_dialect_builds_the_providers_own_compact_call() -> None:
    call = compact_request("openai")
    assert call.url == "https://h.example/v1/responses/compact" and call.stream is False
    assert call.headers["authorization"] == "Bearer sk-x"
    sent = orjson.loads(call.body)
    assert sent == {
        "model": "m", "instructions": "short", "service_tier": "flex",
        "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "hi"}]}],
    }  # fmt: skip
    azure = compact_request("azure", {"api_version": "2025-04-01-preview", "auth": "api-key"})
    assert azure.url == (
        "https://r.openai.azure.com/openai/responses/compact?api-version=2025-04-01-preview"
    )
    assert compact_request("azure", {"auth": "api-key"}).url == (
        "https://r.openai.azure.com/openai/v1/responses/compact"
    )


def test_other_dialects_do_not_compact() -> None:
    from turnout.engine.registry import DEFAULT_MAPPINGS_DIR, MappingRegistry

    registry = MappingRegistry.load(DEFAULT_MAPPINGS_DIR)
    assert not registry.resolve("anthropic", "m").compacts
    assert not registry.resolve("openai_chat", "m").compacts
