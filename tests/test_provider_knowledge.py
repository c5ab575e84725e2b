"""Provider knowledge lives in the mappings, not in server/: the price catalogue id
(`provider.pricing_id`), the errors that mean "the prompt does not fit"
(`provider.context_window_errors`) and opaque reasoning state only the upstream reads
(`provider.native_state`). A provider added as YAML alone, with a dialect of its own, is priced,
classified and routed by affinity like a bundled one.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_mapping_lint import BASE
from turnout.engine.errors import UpstreamError
from turnout.engine.registry import DEFAULT_MAPPINGS_DIR, MappingRegistry, lint_dir
from turnout.engine.state import encode_state
from turnout.server.config import Deployment, ModelAlias, RouterSettings
from turnout.server.pricing import GENAI_PROVIDERS, CatalogueIds, PriceBook, UsageCounts
from turnout.server.router import (
    ProviderTraits,
    Router,
    affinity_of,
    bundled_mappings,
    is_context_window_error,
    provider_sections,
)

SERVER = Path(__file__).resolve().parents[1] / "server"
USAGE = UsageCounts(input_tokens=1000, cached_tokens=200, output_tokens=300)
WHEN = 1_765_552_659
NATIVE = [{"kind": "reasoning", "provider": None, "encrypted_content": "gAAAA-native"}]

# A dialect of its own: the Chat Completions one under a new name, with its own wire knowledge.
ACME_DIALECT_PROVIDER = {
    "auth": "required",
    "context_window_errors": [
        {"code": "acme_prompt_overflow"},
        {"message": "exceeds the acme window"},
        {"code": "bad_request", "message": "prompt runs past"},
    ],
    "native_state": "acme",
}
ACME = """\
# acme: a provider with a dialect of its own, priced as a catalogue provider genai-prices knows.
version: 1
extends: _dialects/acme_chat
provider:
  api_base: https://api.acme.test/v1
  api_key_env: ACME_API_KEY
  pricing_id: anthropic
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mappings") / "mappings"
    shutil.copytree(DEFAULT_MAPPINGS_DIR, root, ignore=shutil.ignore_patterns("cases", "__*"))
    dialect = yaml.safe_load((root / "_dialects/openai_chat.yaml").read_text(encoding="utf-8"))
    dialect["description"] = "Acme dialect"
    dialect["provider"] = ACME_DIALECT_PROVIDER
    (root / "_dialects/acme_chat.yaml").write_text(yaml.safe_dump(dialect), encoding="utf-8")
    (root / "acme.yaml").write_text(ACME, encoding="utf-8")
    # An OpenAI-compatible host genai-prices lists under its own id: nothing to declare.
    (root / "novita.yaml").write_text(
        "version: 1\nextends: _dialects/openai_chat\n"
        "provider: {api_base: 'https://api.novita.ai/v3/openai', api_key_env: NOVITA_API_KEY}\n",
        encoding="utf-8",
    )
    # A local server whose id merely contains a catalogue provider's name.
    (root / "openai_local.yaml").write_text(
        "version: 1\nextends: _dialects/openai_chat\n"
        "provider: {api_base: 'http://localhost:9000/v1', auth: optional}\n",
        encoding="utf-8",
    )
    return root


@pytest.fixture(scope="module")
def registry(folder: Path) -> MappingRegistry:
    return MappingRegistry.load(folder)


def test_the_new_folder_lints_clean(folder: Path) -> None:
    count, problems = lint_dir(folder)
    assert not problems, [str(p) for p in problems]
    assert count == len(list(DEFAULT_MAPPINGS_DIR.glob("[!_]*.yaml"))) + 3


# -- pricing -----------------------------------------------------------------------------------


def test_pricing_id_prices_the_new_provider_as_the_catalogue_provider(
    registry: MappingRegistry,
) -> None:
    book = PriceBook(mappings=registry)
    acme = book.cost("acme", "claude-sonnet-4-5", USAGE, created_at=WHEN)
    same = PriceBook().cost("anthropic", "claude-sonnet-4-5", USAGE, created_at=WHEN)
    assert acme is not None and same is not None
    assert acme.cost == same.cost > 0 and acme.source == "genai-prices"
    # The bundled mappings have no acme: no price without the registry that has it.
    assert PriceBook().cost("acme", "claude-sonnet-4-5", USAGE, created_at=WHEN) is None


def test_a_provider_named_like_its_catalogue_entry_needs_no_pricing_id(
    registry: MappingRegistry,
) -> None:
    price = PriceBook(mappings=registry).cost("novita", "deepseek/deepseek-r1", USAGE)
    assert price is not None and price.cost > 0


def test_an_undeclared_id_must_match_the_catalogue_exactly(registry: MappingRegistry) -> None:
    # genai-prices alone would resolve "openai_local" to OpenAI (its id contains "openai").
    book = PriceBook(mappings=registry)
    assert book.cost("openai_local", "gpt-4o", USAGE) is None
    assert book.cost("openai", "gpt-4o", USAGE) is not None


def test_pricing_id_false_means_no_price_data(registry: MappingRegistry) -> None:
    ids = CatalogueIds.of(registry)
    assert ids.get("ollama") is None and ids.get("vllm") is None
    assert ids.get("acme") == ("anthropic", False)
    assert ids.get("novita") == ("novita", True)
    assert ids.get("nowhere") is None


def test_the_bundled_ids_are_the_table_server_pricing_used_to_hold() -> None:
    assert dict(GENAI_PROVIDERS) == {
        "openai": "openai", "openai_chat": "openai", "azure": "azure", "azure_chat": "azure",
        "azure_ai": "azure", "anthropic": "anthropic", "gemini": "google",
        "vertex_ai": "google", "bedrock": "aws", "groq": "groq", "mistral": "mistral",
        "deepseek": "deepseek", "xai": "x-ai", "together": "together",
        "fireworks": "fireworks", "openrouter": "openrouter", "cerebras": "cerebras",
        "perplexity": "perplexity", "moonshot": "moonshotai",
    }  # fmt: skip


# -- context-window errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [("acme_prompt_overflow", "acme: no"), ("ACME_PROMPT_OVERFLOW", "acme: no"),
     (None, "acme: the prompt Exceeds The Acme Window (9000 > 8000)"),
     ("bad_request", "acme: the prompt runs past 8000 tokens")],
)  # fmt: skip
def test_the_dialect_says_which_errors_mean_the_prompt_is_too_long(
    registry: MappingRegistry, code: str | None, message: str
) -> None:
    exc = UpstreamError(400, message, code=code, provider="acme")
    traits = ProviderTraits.of(registry)
    assert is_context_window_error(exc, traits)
    assert is_context_window_error(exc, Router(RouterSettings(), {}, mappings=registry).traits)
    assert not is_context_window_error(exc)  # the bundled mappings know no such wording


def test_the_combined_matcher_needs_both_parts(registry: MappingRegistry) -> None:
    traits = ProviderTraits.of(registry)
    assert not is_context_window_error(UpstreamError(400, "prompt runs past", code="x"), traits)
    assert not is_context_window_error(UpstreamError(400, "bad", code="bad_request"), traits)
    # Server-side failures and rate limits never count, whatever they say.
    assert not is_context_window_error(UpstreamError(429, "acme", code="acme_prompt_overflow"))
    assert not is_context_window_error(
        UpstreamError(503, "exceeds the acme window", code=None), traits
    )


def test_the_bundled_matchers_are_the_list_server_router_used_to_hold() -> None:
    traits = ProviderTraits.of(bundled_mappings())
    assert set(traits.context_window) == {
        ("context_length_exceeded", None), ("string_above_max_length", None),
        (None, "context_length_exceeded"), (None, "maximum context length"),
        (None, "context window"), (None, "prompt is too long"),
        (None, "exceeds the maximum number of tokens"), (None, "input is too long"),
        (None, "too many tokens"), ("validationexception", "too long"),
    }  # fmt: skip


# -- opaque reasoning state --------------------------------------------------------------------


def test_native_state_gives_affinity_to_the_providers_that_mint_it(
    registry: MappingRegistry,
) -> None:
    traits = ProviderTraits.of(registry)
    # The format's namesakes first (each mints its own), then the hosts reusing a format.
    assert traits.native_state == ("acme", "openai", "azure")
    assert affinity_of(NATIVE, traits=traits).providers == ("acme", "openai", "azure")
    assert affinity_of(NATIVE).providers == ("openai", "azure")  # bundled
    # Turnout's own blobs name their provider; no mapping knowledge needed.
    tnt = [{"kind": "reasoning", "provider": "acme", "encrypted_content": encode_state("acme", {})}]
    assert affinity_of(tnt, traits=traits).providers == ("acme",)


def test_the_router_sends_a_native_blob_to_the_provider_that_declares_it(
    registry: MappingRegistry,
) -> None:
    deps = [Deployment("groq/llama", weight=100), Deployment("acme/a1", weight=1)]
    router = Router(RouterSettings(), {"g": ModelAlias(deps)}, mappings=registry)
    affinity = affinity_of(NATIVE, traits=router.traits)
    picks = {router.pick("g", affinity=affinity).state.provider for _ in range(50)}  # type: ignore[union-attr]
    assert picks == {"acme"}


# -- reading mapping folders -------------------------------------------------------------------


def test_provider_sections_read_the_same_knowledge_as_the_compiled_registry(
    folder: Path, registry: MappingRegistry
) -> None:
    sections = provider_sections(folder)
    assert sections.providers == registry.providers
    assert ProviderTraits.of(sections) == ProviderTraits.of(registry)
    assert CatalogueIds.of(sections) == CatalogueIds.of(registry)


def test_no_mapping_declares_supports_any_more() -> None:
    sections = bundled_mappings()
    assert all("supports" not in sections.get(p).defaults for p in sections.providers)  # type: ignore[union-attr]


# -- lint --------------------------------------------------------------------------------------


def _lint(tmp_path: Path, provider: str) -> list[str]:
    text = BASE.replace("description: lint fixture\n", f"description: lint fixture\n{provider}")
    (tmp_path / "prov.yaml").write_text(text, encoding="utf-8")
    _, problems = lint_dir(tmp_path)
    return [str(p) for p in problems]


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        ("provider: {pricing_id: true}\n", "provider.pricing_id: "),
        ("provider: {pricing_id: 'Google AI'}\n", "provider.pricing_id: "),
        ("provider: {context_window_errors: [{}]}\n", "give code, message"),
        ("provider: {context_window_errors: [{text: x}]}\n", "unknown key"),
        ("provider: {context_window_errors: [{message: ''}]}\n", "must not be empty"),
        ("provider: {context_window_errors: too long}\n", "provider.context_window_errors"),
        ("provider: {native_state: true}\n", "provider.native_state"),
        ("provider: {supports: {tools: true}}\n", "provider.supports: unknown key"),
    ],
)
def test_lint_checks_the_new_keys(tmp_path: Path, provider: str, expected: str) -> None:
    problems = _lint(tmp_path, provider)
    assert len(problems) == 1 and expected in problems[0], problems
    assert ":3:" in problems[0]  # the line of the provider section


@pytest.mark.parametrize(
    "provider",
    [
        "provider: {pricing_id: x-ai}\n",
        "provider: {pricing_id: false}\n",
        "provider: {context_window_errors: [{code: c}, {message: m}, {code: c, message: m}]}\n",
        "provider: {native_state: openai}\n",
    ],
)
def test_lint_accepts_the_new_keys(tmp_path: Path, provider: str) -> None:
    assert _lint(tmp_path, provider) == []


# -- server/ names no provider -----------------------------------------------------------------

# Known leftovers: (file, provider id). Empty: server/ names no provider.
LEFTOVERS: set[tuple[str, str]] = set()


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module, docstrings left out (they may name examples)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        body: Any = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            docstrings.add(id(first.value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
    ]  # fmt: skip


def test_server_code_names_no_provider_id() -> None:
    ids = set(bundled_mappings().providers)
    found = {
        (str(path.relative_to(SERVER)), value, line)
        for path in SERVER.rglob("*.py")
        for line, value in _code_strings(path)
        if value in ids or ("/" in value and value.split("/", 1)[0] in ids)
    }
    assert {(f, v) for f, v, _ in found} <= LEFTOVERS, sorted(found)
