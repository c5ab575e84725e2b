"""A provider with a wire format of its own, added as files alone, is tested like a bundled one.

`tests/fixtures/new_dialect/` holds what a maintainer writes to add Cohere's v2 Chat API: the
dialect, the provider file, its case files and `wire/cohere_v2_chat.yaml` (how the simulators
speak the format, and what the tests need to know about it). Copied over the bundled mappings in a
temporary folder, with no Python written for it, the folder lints clean, its cases pass, it is
priced and its context-window errors fall back from the YAML alone, and the end-to-end suite runs
over it (`$TURNOUT_TEST_MAPPINGS`, tests/formats.py) exactly as over the bundled providers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Gateway, start_gateway, stop_gateway
from tests.formats import format_of
from tests.paths import FIXTURES, ROOT
from tests.simulators import Error, Simulator
from tests.simulators.wire import load_wire_formats
from turnout.engine.cases import find_cases, load_case, run_case
from turnout.engine.registry import DEFAULT_MAPPINGS_DIR, MappingRegistry, lint_dir

OVERLAY = FIXTURES / "new_dialect"
CASES = sorted((OVERLAY / "cases" / "cohere").glob("*.yaml"))

# The end-to-end modules and the tests in them that must have run over the new provider.
E2E_MODULES = [
    "tests/test_e2e_providers.py",
    "tests/test_e2e_errors.py",
    "tests/test_e2e_stream_failures.py",
    "tests/test_e2e_background.py",
    "tests/test_e2e_features.py",
    "tests/test_e2e_cost.py",
    "tests/test_request_roundtrip.py",
]
MUST_RUN = {
    "test_create_retrieve_items_delete",
    "test_stream_equals_non_stream",
    "test_multi_turn_chain",
    "test_function_call_round_trip",
    "test_any_text_round_trips_byte_exact",
    "test_every_providers_native_error_body_is_translated",
    "test_mid_stream_failure_ends_in_response_failed_and_is_stored",
    "test_a_mid_stream_failure_says_what_the_provider_said",
    "test_background_is_queued_then_polled_to_completion_and_priced",
    "test_usage_is_normalised_like_openai_counts_it",
    "test_structured_output_reaches_every_provider",
    "test_image_input_as_data_url",
    "test_image_input_by_url",
    "test_max_tokens_stop_is_incomplete",
    "test_tool_choice_is_translated",
    "test_cost_per_provider_streamed_equals_non_streamed",
    "test_examples",
    "test_any_text_as_input_and_instructions",
    "test_any_text_through_function_calls",
    "test_a_history_opening_with_the_assistant_is_accepted",
    "test_text_parts_of_one_message_keep_their_words_apart",
    "test_consecutive_assistant_messages_keep_their_phases",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled mappings plus the overlay, as a maintainer's checkout would hold them."""
    root = tmp_path_factory.mktemp("new-dialect") / "mappings"
    shutil.copytree(DEFAULT_MAPPINGS_DIR, root, ignore=shutil.ignore_patterns("__*"))
    shutil.copytree(OVERLAY, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.md"))
    return root


@pytest.fixture(scope="module")
def registry(folder: Path) -> MappingRegistry:
    return MappingRegistry.load(folder)


def test_the_folder_lints_clean_and_serves_cohere(folder: Path, registry: MappingRegistry) -> None:
    count, problems = lint_dir(folder)
    assert not problems, [str(p) for p in problems]
    assert count == len(list(DEFAULT_MAPPINGS_DIR.glob("[!_]*.yaml"))) + 1
    assert "cohere" in registry.providers
    # The tests read its format from its extends: chain and the wire file beside it.
    assert format_of("cohere", folder) == "cohere_v2_chat"


def test_the_overlay_has_cases_for_every_kind_of_reply() -> None:
    names = {p.stem for p in CASES}
    assert len(names) >= 6, names


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path, registry: MappingRegistry) -> None:
    failures = run_case(load_case(path), registry)
    assert not failures, "\n".join(failures)


def test_the_case_runner_finds_the_overlay_cases(folder: Path) -> None:
    assert {p.name for p in find_cases(folder / "cases" / "cohere")} == {p.name for p in CASES}


# -- from the YAML alone: priced, context-window fallback ---------------------------------------


@pytest.fixture(scope="module")
def cohere_gateway(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[Gateway, Simulator]
]:  # fmt: skip
    with Simulator(wires=load_wire_formats(folder)) as sim:
        c1, g1 = sim.base("c1"), sim.base("g1")
        work = tmp_path_factory.mktemp("cohere-gateway")
        config = work / "turnout.yaml"
        config.write_text(
            f"mappings_dir: '{folder}'\n"
            f"store: sqlite:///{work / 'turnout.db'}\n"
            "models:\n"
            "  ctx:\n"
            f"    deployments: [{{model: cohere/command-a-03-2025, api_base: '{c1}'}}]\n"
            "    context_window_fallbacks: [long]\n"
            "  long:\n"
            f"    deployments: [{{model: groq/llama-3.3-70b, api_base: '{g1}'}}]\n",
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_API_BASE"))}
        env.update(COHERE_API_KEY="co-test-key-0123456789", GROQ_API_KEY="gsk-test-0123456789")
        gw = start_gateway(config, env, work / "gateway.log")
        try:
            yield gw, sim
        finally:
            stop_gateway(gw)


def test_cohere_is_priced_from_its_mapping(cohere_gateway: tuple[Gateway, Simulator]) -> None:
    gw, sim = cohere_gateway
    reply = httpx.post(f"{gw.url}/v1/responses", json={"model": "ctx", "input": "Price me"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["output"][0]["content"][0]["text"] == "Price me"
    assert sim.last.provider == "c1" and sim.last.path.endswith("/v2/chat")
    assert body["usage"]["cost"] > 0  # genai-prices' cohere entry, found through pricing_id


def test_a_cohere_too_many_tokens_error_falls_back_to_the_long_context_alias(
    cohere_gateway: tuple[Gateway, Simulator],
) -> None:
    gw, sim = cohere_gateway
    too_long = {
        "id": "0b7d6a52-1f7e-4c4e-8a51-3d1b0f2f7f10",
        "message": "too many tokens: total number of tokens in the prompt cannot exceed "
        "128000 - received 130512. Try using a shorter prompt.",
    }
    sim.script("c1", Error(400, native_body=too_long))
    reply = httpx.post(f"{gw.url}/v1/responses", json={"model": "ctx", "input": "long prompt"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-turnout-deployment"] == "groq/llama-3.3-70b"
    assert [r.provider for r in sim.requests[-2:]] == ["c1", "g1"]


# -- the end-to-end suite over the new provider ------------------------------------------------


def test_the_end_to_end_suite_runs_over_the_new_provider(folder: Path, tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    env = {**os.environ, "TURNOUT_TEST_MAPPINGS": str(folder)}
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cohere",
        f"--junitxml={report}", *E2E_MODULES,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    cases = ET.parse(report).getroot().iter("testcase")
    ran: dict[str, int] = {}
    for case in cases:
        name = case.get("name", "")
        assert "cohere" in name, name
        assert not [c.tag for c in case], (name, [c.tag for c in case])  # no skip/fail/error
        function = name.split("[", 1)[0]
        ran[function] = ran.get(function, 0) + 1
    assert set(ran) >= MUST_RUN, sorted(MUST_RUN - set(ran))
    assert sum(ran.values()) >= 60, ran


def test_without_the_wire_file_the_tests_say_what_to_add(folder: Path, tmp_path: Path) -> None:
    bare = tmp_path / "mappings"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns("wire"))
    with pytest.raises(AssertionError, match=r"wire/<dialect>\.yaml"):
        format_of("cohere", bare)
