"""`turnout record` against the loopback simulator: files written, no secret anywhere, and the
case file it writes passes as it stands."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.simulators import Replay, Simulator
from turnout.engine.cases import fixtures_dir, load_case, run_case
from turnout.engine.registry import MappingRegistry
from turnout.server import cli
from turnout.server.record import redact_url

SECRET = "sk-live-SECRET-0123456789abcdef"
REGISTRY = MappingRegistry.load()


@pytest.fixture(autouse=True)
def _one_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    # Compiling every mapping takes seconds; `record` would do it once per call.
    monkeypatch.setattr(MappingRegistry, "load", classmethod(lambda cls, folder=None: REGISTRY))


@pytest.fixture
def sim() -> Simulator:  # type: ignore[misc]
    with Simulator() as simulator:
        yield simulator


def _assert_no_secret(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data, path
            assert SECRET[8:].encode() not in data, path


def _record(
    monkeypatch: pytest.MonkeyPatch, sim: Simulator, tmp_path: Path, provider: str, *args: str
) -> tuple[int, Path]:
    prefix = provider.upper()
    monkeypatch.setenv(f"{prefix}_API_KEY", SECRET)
    base = sim.base(provider) + ("/v1" if provider == "openai" else "")
    monkeypatch.setenv(f"{prefix}_API_BASE", base)
    out = tmp_path / "out"
    code = cli.main(["record", "--out", str(out), "--name", "rec", *args])
    return code, out


def test_anthropic_stream(
    monkeypatch: pytest.MonkeyPatch,
    sim: Simulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim.script("anthropic", Replay("anthropic/thinking_stream", chunk_size="random", seed=3))
    code, out = _record(
        monkeypatch, sim, tmp_path, "anthropic",
        "--model", "anthropic/claude-sonnet-4-0", "--input", "How do I cross the street?",
        "--stream",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["rec.case.yaml", "rec.meta.json", "rec.request.json", "rec.sse"]
    # The key reached the provider...
    assert sim.last.headers["x-api-key"] == SECRET
    # ...and no file holds it.
    _assert_no_secret(tmp_path)
    meta = orjson.loads((out / "rec.meta.json").read_bytes())
    assert meta["request_headers"]["x-api-key"] == ["***"]
    assert meta["status"] == 200 and meta["method"] == "POST"
    assert orjson.loads((out / "rec.request.json").read_bytes()) == sim.last.json
    recorded = fixtures_dir()
    assert (out / "rec.sse").read_bytes() == (
        recorded / "anthropic/thinking_stream.sse"
    ).read_bytes()
    case = load_case(out / "rec.case.yaml")
    assert case.expect["status"] == "completed"
    assert [i["type"] for i in case.expect["output"]] == ["reasoning", "message"]
    assert case.expect["usage"]["input_tokens"] == 43
    assert run_case(case, REGISTRY) == []


def test_gemini_json(
    monkeypatch: pytest.MonkeyPatch,
    sim: Simulator,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = _record(
        monkeypatch, sim, tmp_path, "gemini",
        "--model", "gemini/gemini-2.5-flash", "--input", "Say hello",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [
        "rec.case.yaml", "rec.json", "rec.meta.json", "rec.request.json",
    ]  # fmt: skip
    assert sim.last.headers["x-goog-api-key"] == SECRET
    _assert_no_secret(tmp_path)
    meta = orjson.loads((out / "rec.meta.json").read_bytes())
    assert meta["request_headers"]["x-goog-api-key"] == ["***"]
    assert meta["url"].endswith("/models/gemini-2.5-flash:generateContent")
    case = load_case(out / "rec.case.yaml")
    assert case.expect["output"] == [{"type": "message", "text": "Say hello"}]  # the echo reply
    assert case.upstream["url"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert run_case(case, REGISTRY) == []


def test_an_upstream_error_is_recorded_as_an_error_case(
    monkeypatch: pytest.MonkeyPatch, sim: Simulator, tmp_path: Path
) -> None:
    from tests.simulators import Error

    sim.script("openai", Error(429))
    code, out = _record(
        monkeypatch, sim, tmp_path, "openai", "--model", "openai/gpt-4o", "--input", "Hi"
    )
    assert code == 0
    _assert_no_secret(tmp_path)
    case = load_case(out / "rec.case.yaml")
    assert case.expect["error"]["status"] == 429
    assert run_case(case, REGISTRY) == []


def test_a_missing_key_records_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    code = cli.main(["record", "--model", "groq/llama", "--input", "x", "--out", str(tmp_path)])
    assert code == 1
    assert "GROQ_API_KEY" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_query_string_keys_are_masked() -> None:
    url = "https://h/v1/models/m:generateContent?key=AIzaSECRET&alt=sse&X-Amz-Signature=abc"
    assert redact_url(url) == (
        "https://h/v1/models/m:generateContent?key=***&alt=sse&X-Amz-Signature=***"
    )
