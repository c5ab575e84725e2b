"""server/access/models.py on its own: which `model` names a caller may send (globs, aliases,
a key's list, its team's, both), the gateway-wide `access.models: aliases_only` switch, and the
list `GET /v1/models` shows. End to end: tests/test_e2e_isolation.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from turnout.engine.errors import ConfigError, RequestError
from turnout.server.access.models import ModelAccess, Patterns
from turnout.server.access.teams import Teams
from turnout.server.config import AccessSettings, load_config
from turnout.server.preflight import check_providers
from turnout.server.request_context import Caller
from turnout.server.stores import MemoryStore
from turnout.server.stores.keys import AuditEntry, StoredKey, StoredTeam

pytestmark = pytest.mark.anyio

ALIASES = ("claude", "fast")
PROVIDERS = ("anthropic", "groq", "openai")
MASTER = Caller(key_id="key_master", role="master")
OPEN = Caller(key_id=None, role="open")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def key_caller(models: list[str] | None = None, team: str | None = None) -> Caller:
    key = StoredKey(id="key_k", secret_hash="h", prefix="sk-tnt-abcd", created_at=0, team=team,
                    models=models)  # fmt: skip
    return Caller(key_id=key.id, team=team, role="key", key=key)


async def access(
    teams: dict[str, list[str] | None] | None = None, **settings: Any
) -> tuple[ModelAccess, MemoryStore]:
    store = MemoryStore()
    for name, models in (teams or {}).items():
        audit = AuditEntry("test", "team.create", name, None, None, 0)
        await store.put_team(StoredTeam(name=name, created_at=0, models=models), audit)
    return ModelAccess(AccessSettings(**settings), ALIASES, Teams(store)), store


def test_patterns_match_names_exactly_and_globs_whole() -> None:
    patterns = Patterns(["claude", "openai/gpt-4o*", "groq/llama-3.?-70b", "x/[ab]"])
    assert patterns.match("claude") and not patterns.match("claude-2")
    assert patterns.match("openai/gpt-4o") and patterns.match("openai/gpt-4o-mini")
    assert not patterns.match("openai/gpt-4.1") and not patterns.match("xopenai/gpt-4o")
    assert patterns.match("groq/llama-3.3-70b") and not patterns.match("groq/llama-3.3-70b-x")
    assert patterns.match("x/a") and not patterns.match("x/c")
    assert not Patterns(["OpenAI/*"]).match("openai/gpt-4o")  # case-sensitive everywhere
    assert not Patterns([]).match("claude")


async def test_no_list_anywhere_allows_every_name() -> None:
    models, _ = await access()
    for caller in (OPEN, MASTER, key_caller()):
        assert await models.allows(caller, "openai/gpt-4o")
        assert await models.allows(caller, "claude")


async def test_a_keys_list_allows_only_its_aliases_names_and_globs() -> None:
    models, _ = await access()
    caller = key_caller(["claude", "groq/*", "openai/gpt-4o"])
    for name in ("claude", "groq/llama-3.3-70b", "openai/gpt-4o"):
        assert await models.allows(caller, name), name
    for name in ("fast", "openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5"):
        assert not await models.allows(caller, name), name
    with pytest.raises(RequestError) as refused:
        await models.admit(caller, "anthropic/claude-sonnet-4-5")
    error = refused.value
    assert (error.status, error.code, error.param) == (403, "model_not_allowed", "model")
    assert "'anthropic/claude-sonnet-4-5'" in error.message and "key_k" in error.message
    # An empty list allows nothing; the master key and an open gateway are never limited.
    assert not await models.allows(key_caller([]), "claude")
    assert await models.allows(MASTER, "anthropic/claude-sonnet-4-5")


async def test_an_alias_is_allowed_by_its_name_not_by_what_it_routes_to() -> None:
    """`anthropic/*` does not open the alias `claude` (served by Anthropic), nor the reverse:
    lists name what the client sends as `model`."""
    models, _ = await access()
    assert not await models.allows(key_caller(["anthropic/*"]), "claude")
    assert not await models.allows(key_caller(["claude"]), "anthropic/claude-sonnet-4-5")


async def test_a_teams_list_binds_its_keys_and_a_keys_list_narrows_it() -> None:
    models, _ = await access({"green": ["claude", "groq/*"], "open-team": None})
    team_only = key_caller(team="green")
    assert await models.allows(team_only, "claude")
    assert await models.allows(team_only, "groq/llama")
    with pytest.raises(RequestError) as refused:
        await models.admit(team_only, "fast")
    assert refused.value.status == 403 and "team 'green'" in refused.value.message
    # Both lists: a name must be on both.
    both = key_caller(["claude", "fast"], team="green")
    assert await models.allows(both, "claude")
    assert not await models.allows(both, "fast")  # the key's, not the team's
    assert not await models.allows(both, "groq/llama")  # the team's, not the key's
    # A team without a list, or a team the store does not know, adds no limit.
    assert await models.allows(key_caller(team="open-team"), "openai/gpt-4o")
    assert await models.allows(key_caller(team="unknown"), "openai/gpt-4o")


async def test_a_team_change_is_seen_within_the_cache_lifetime() -> None:
    now = [0.0]
    store = MemoryStore()
    audit = AuditEntry("test", "team.create", "t", None, None, 0)
    await store.put_team(StoredTeam(name="t", created_at=0, models=["claude"]), audit)
    teams = Teams(store, ttl_s=1.0, monotonic=lambda: now[0])
    models = ModelAccess(AccessSettings(), ALIASES, teams)
    caller = key_caller(team="t")
    assert not await models.allows(caller, "fast")
    await store.put_team(StoredTeam(name="t", created_at=0, models=["fast"]), audit)
    now[0] = 0.5
    assert not await models.allows(caller, "fast")  # cached
    now[0] = 1.0
    assert await models.allows(caller, "fast")


async def test_aliases_only_serves_the_aliases_and_the_allowed_globs_to_everyone() -> None:
    models, _ = await access(models="aliases_only", allow=("groq/llama-*",))
    for caller in (OPEN, MASTER, key_caller(), key_caller(["anthropic/*", "claude"])):
        assert await models.allows(caller, "claude")
        assert not await models.allows(caller, "anthropic/claude-sonnet-4-5")
    assert await models.allows(MASTER, "groq/llama-3.3-70b")
    assert not await models.allows(MASTER, "groq/mixtral")
    with pytest.raises(RequestError) as refused:
        await models.admit(MASTER, "openai/gpt-4o")
    error = refused.value
    assert (error.status, error.code) == (403, "model_not_allowed")
    assert "'openai/gpt-4o' is not served by this gateway" in error.message


async def test_the_listing_is_what_the_caller_may_use() -> None:
    models, _ = await access({"green": ["claude"]})
    assert await models.listing(MASTER, PROVIDERS) == ["claude", "fast"]
    assert await models.listing(key_caller(["fast", "groq/*"]), PROVIDERS) == ["fast", "groq/*"]
    assert await models.listing(key_caller(team="green"), PROVIDERS) == ["claude"]
    assert await models.listing(key_caller([]), PROVIDERS) == []
    # No alias configured: one provider/* pattern per provider, narrowed to the key's globs.
    bare = ModelAccess(AccessSettings(), (), Teams(None))
    assert await bare.listing(MASTER, PROVIDERS) == ["anthropic/*", "groq/*", "openai/*"]
    narrowed = await bare.listing(key_caller(["groq/*", "openai/gpt-4o*"]), PROVIDERS)
    assert narrowed == ["groq/*", "openai/gpt-4o*"]
    # aliases_only: the aliases and the allow globs; a key's own glob only where served.
    strict, _ = await access(models="aliases_only", allow=("groq/llama-*",))
    assert await strict.listing(MASTER, PROVIDERS) == ["claude", "fast", "groq/llama-*"]
    keyed = await strict.listing(key_caller(["claude", "openai/*", "groq/*"]), PROVIDERS)
    assert keyed == ["claude", "groq/llama-*"]  # served, and within the key's groq/*


# -- the config setting (server/config.py, server/preflight.py) ------------------------------


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "turnout.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_access_setting_loads_and_defaults_to_any(tmp_path: Path) -> None:
    assert load_config(None, {}).access == AccessSettings(models="any", allow=())
    text = "access:\n  models: aliases_only\n  allow: ['openai/gpt-4o*', 'ollama/*']\n"
    access = load_config(_config(tmp_path, text), {}).access
    assert access.aliases_only and access.allow == ("openai/gpt-4o*", "ollama/*")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("access: {models: some}\n", ":1:10: access.models: unallowed value 'some'"),
        (
            "access: {models: aliases_only, allow: [gpt-4o]}\n",
            ":1:40: access.allow[0]: value does not match regex",
        ),
        (
            "access:\n  allow: ['openai/*']\n",
            ":2:3: access.allow: allow only applies with models: aliases_only (models is 'any'",
        ),
    ],
)
def test_a_wrong_access_setting_names_its_file_key_and_value(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    (problem,) = info.value.problems
    assert str(problem).startswith(path + expected), str(problem)


def test_an_allow_pattern_naming_no_provider_stops_start_up(tmp_path: Path) -> None:
    text = "access:\n  models: aliases_only\n  allow: ['*/llama-3*', 'antropic/claude-*']\n"
    settings = load_config(_config(tmp_path, text), {})
    with pytest.raises(ConfigError) as info:
        check_providers(settings, PROVIDERS)
    (problem,) = info.value.problems
    assert ":3:25: access.allow[1]: unknown provider 'antropic'" in str(problem)
    assert "did you mean 'anthropic'?" in str(problem)
