"""Image generation through /v1/responses, end to end, with streamed partial images.

The seed's own example: stream with `partial_images: 2`, decode every `partial_image_b64` into
a file and check each file is a valid PNG; plus the same item from Gemini-family image models,
images kept in the store and sent back for an edit on the next turn.
"""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from tests import oas
from tests.conftest import Gateway
from tests.simulators import Image, Simulator

IMAGE_TOOL: Any = {"type": "image_generation", "partial_images": 2, "size": "1024x1024"}


def draw_streamed(gateway: Gateway) -> list[dict[str, Any]]:
    """A streamed image request as raw SSE; every event checked against OpenAI's schema."""
    events: list[dict[str, Any]] = []
    body = {"model": "openai/gpt-4.1", "input": "Draw", "tools": [IMAGE_TOOL], "stream": True}
    with httpx.stream("POST", f"{gateway.url}/v1/responses", json=body, timeout=30) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                events.append(orjson.loads(line[6:]))
    for event in events:
        oas.validate_event(event)
    return events


def check_png(data: bytes) -> tuple[int, int]:
    """Parse a PNG by the spec (signature, chunk CRCs, IHDR, IDAT size): (width, height)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, width, height, idat = 8, 0, 0, b""
    kinds: list[bytes] = []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        kinds.append(kind)
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert (depth, colour) == (8, 2)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert kinds[0] == b"IHDR"
    assert kinds[-1] == b"IEND"
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
    return width, height


@pytest.mark.parametrize("provider", ["openai", "azure"])
def test_streamed_partial_images_decode_to_valid_files(
    provider: str, client: OpenAI, gateway: Gateway, sim: Simulator, tmp_path: Path
) -> None:
    sim.script(provider, Image())
    model = "openai/gpt-4.1" if provider == "openai" else "azure/gpt-image-deployment"
    partial_files: list[Path] = []
    with client.responses.stream(
        model=model, input="Draw a red square", tools=[IMAGE_TOOL]
    ) as stream:
        for event in stream:
            if event.type == "response.image_generation_call.partial_image":
                target = tmp_path / f"partial-{event.partial_image_index}.png"
                target.write_bytes(base64.b64decode(event.partial_image_b64))
                partial_files.append(target)
        final = stream.get_final_response()
    assert [p.name for p in partial_files] == ["partial-0.png", "partial-1.png"]
    for path in partial_files:
        assert check_png(path.read_bytes()) == (8, 8)
    image = next(item for item in final.output if item.type == "image_generation_call")
    assert image.status == "completed"
    assert image.result is not None
    assert check_png(base64.b64decode(image.result)) == (8, 8)
    assert image.revised_prompt == "A red square on white"  # type: ignore[attr-defined]
    sent = sim.last.json
    assert sent["tools"] == [IMAGE_TOOL]  # the tool went upstream as the client sent it


def test_image_event_order_and_numbering(gateway: Gateway, sim: Simulator) -> None:
    sim.script("openai", Image())
    events = draw_streamed(gateway)
    for event in events:
        oas.validate_event_sdk(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    image_events = [e for e in events if e["type"].startswith("response.image_generation_call")]
    assert [e["type"].rsplit(".", 1)[1] for e in image_events] == [
        "in_progress", "generating", "partial_image", "partial_image", "completed",
    ]  # fmt: skip
    image_added = ("response.output_item.added", "image_generation_call")
    added = next(e for e in events if (e["type"], e.get("item", {}).get("type")) == image_added)
    assert {e["item_id"] for e in image_events} == {added["item"]["id"]}
    assert {e["output_index"] for e in image_events} == {added["output_index"]}
    partials = [e for e in image_events if e["type"].endswith("partial_image")]
    assert [e["partial_image_index"] for e in partials] == [0, 1]
    assert all(e["size"] == "1024x1024" and e["output_format"] == "png" for e in partials)
    image_done = ("response.output_item.done", "image_generation_call")
    done = next(e for e in events if (e["type"], e.get("item", {}).get("type")) == image_done)
    assert done["item"]["result"]
    assert done["item"]["quality"] == "low"
    assert events[-1]["type"] == "response.completed"
    assert done["item"] in events[-1]["response"]["output"]


@pytest.mark.parametrize(
    "model", ["gemini/gemini-2.5-flash-image", "vertex_ai/gemini-2.5-flash-image"]
)
@pytest.mark.parametrize("streamed", [False, True])
def test_gemini_image_models_give_the_same_item(
    model: str, streamed: bool, client: OpenAI, sim: Simulator
) -> None:
    sim.script(model.split("/")[0], Image(text="A red square."))
    args: Any = {"model": model, "input": "Draw a red square", "tools": [IMAGE_TOOL]}
    if streamed:
        with client.responses.stream(**args) as stream:
            response = stream.get_final_response()
    else:
        response = client.responses.create(**args)
    kinds = [item.type for item in response.output]
    assert kinds == ["message", "image_generation_call"]
    image = response.output[1]
    assert check_png(base64.b64decode(image.result)) == (8, 8)  # type: ignore[union-attr]
    config = sim.last.json["generationConfig"]
    assert config["responseModalities"] == ["TEXT", "IMAGE"]
    assert config["imageConfig"] == {"aspectRatio": "1:1"}
    assert "tools" not in sim.last.json  # image_generation is a modality there, not a tool


def test_images_are_stored_and_sent_back_for_an_edit(
    client: OpenAI, gateway: Gateway, sim: Simulator
) -> None:
    sim.script("openai", Image())
    first = client.responses.create(model="openai/gpt-4.1", input="Draw", tools=[IMAGE_TOOL])
    image = next(item for item in first.output if item.type == "image_generation_call")
    stored = httpx.get(f"{gateway.url}/v1/responses/{first.id}").json()
    oas.validate_response(stored)
    assert image.result in [i.get("result") for i in stored["output"]]
    # The next turn edits it, on another provider: the picture goes along as an input image.
    client.responses.create(
        model="anthropic/claude-sonnet-4-5", input="Make it blue", previous_response_id=first.id
    )
    blocks = [b for m in sim.last.json["messages"] for b in m["content"] if isinstance(b, dict)]
    images = [b for b in blocks if b["type"] == "image"]
    assert images == [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                   "data": image.result}}]  # fmt: skip
    # A client that replays the item itself sees it among the response's input items.
    again = client.responses.create(
        model="openai/gpt-4.1",
        input=[
            {
                "type": "image_generation_call",
                "id": image.id,
                "result": image.result,
                "status": "completed",
            },
            {"role": "user", "content": "Make it green"},
        ],
    )
    listed = client.responses.input_items.list(again.id, order="asc")
    assert [i.type for i in listed.data] == ["image_generation_call", "message"]


@pytest.fixture
def small_image_gateway(provider_sim_session: Simulator, tmp_path: Path) -> Any:
    from tests.conftest import gateway_env, start_gateway, stop_gateway

    config = tmp_path / "turnout.yaml"
    config.write_text("store: memory://\nlimits: {max_image_bytes: 40}\n", encoding="utf-8")
    gw = start_gateway(config, gateway_env(provider_sim_session), tmp_path / "gateway.log")
    yield gw
    stop_gateway(gw)


def test_an_image_over_the_size_limit_fails_clearly(
    small_image_gateway: Gateway, provider_sim_session: Simulator
) -> None:
    provider_sim_session.reset()
    provider_sim_session.script("openai", Image())
    events = draw_streamed(small_image_gateway)
    assert events[-1]["type"] == "response.failed"
    error = events[-1]["response"]["error"]
    assert error["code"] == "image_too_large"
    assert "max_image_bytes" in error["message"]
    assert not any("partial_image_b64" in e for e in events)  # nothing oversized went out
