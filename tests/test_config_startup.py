"""server/preflight.py's checks that need the mappings (unknown providers, missing credentials)
and server/config.py's one rule for relative paths (store, mappings_dir), in-process;
tests/test_cli_startup.py checks the same through real `turnout serve` processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turnout.engine.errors import ConfigError
from turnout.engine.registry import MappingRegistry
from turnout.server.config import DEFAULT_STORE, Settings, load_config, resolve_store
from turnout.server.preflight import check_providers, missing_credentials

REGISTRY = MappingRegistry.load()


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[str, Settings]:
    path = tmp_path / "turnout.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path), load_config(str(path), env or {})


def _problems(tmp_path: Path, text: str) -> list[str]:
    path, settings = _load(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        check_providers(settings, REGISTRY.providers)
    return [str(p).removeprefix(path) for p in info.value.problems]


# -- unknown providers ----------------------------------------------------------------------------


def test_unknown_provider_in_a_deployment_is_located_with_a_guess(tmp_path: Path) -> None:
    text = (
        "models:\n"
        "  claude:\n"
        "    deployments:\n"
        "      - {model: antropic/claude-sonnet-4-5}\n"
        "  fast:\n"
        "    deployments:\n"
        "      - model: groq/llama\n"
        "      - model: zzqx/model\n"
    )
    assert _problems(tmp_path, text) == [
        ":4:10: models.claude.deployments[0].model: unknown provider 'antropic' in model "
        "'antropic/claude-sonnet-4-5' (did you mean 'anthropic'?)",
        ":8:9: models.fast.deployments[1].model: unknown provider 'zzqx' in model 'zzqx/model' "
        f"(a provider is a mapping file name: {', '.join(REGISTRY.providers)})",
    ]


def test_unknown_provider_key_is_located(tmp_path: Path) -> None:
    text = "providers:\n  openai: {timeout_s: 1}\n  Anthropic: {timeout_s: 2}\n"
    assert _problems(tmp_path, text) == [
        ":3:3: providers.Anthropic: unknown provider 'Anthropic' (did you mean 'anthropic'?)"
    ]


def test_known_providers_pass(tmp_path: Path) -> None:
    text = (
        "providers:\n  vllm: {timeout_s: 1}\n"
        "models:\n  a:\n    deployments:\n"
        "      - {model: vertex_ai/claude-sonnet-4-5@20250929}\n"
        "      - {model: openai_chat/gpt-4o-mini}\n"
    )
    _path, settings = _load(tmp_path, text)
    check_providers(settings, REGISTRY.providers)
    check_providers(load_config(None, {}), [])  # no config: nothing to check


# -- missing credentials --------------------------------------------------------------------------

ALIASES = (
    "models:\n"
    "  claude:\n    deployments:\n      - {model: anthropic/claude-sonnet-4-5}\n"
    "  gem:\n    deployments:\n      - {model: gemini/gemini-2.5-flash}\n"
    "  local:\n    deployments:\n      - {model: ollama/llama3}\n"
    "  aws:\n    deployments:\n      - {model: bedrock/anthropic.claude}\n"
    "  keyed:\n    deployments:\n      - {model: mistral/small, api_key: inline-secret-1}\n"
    "  vx:\n    deployments:\n      - {model: vertex_ai/gemini-2.5-flash}\n"
)


def _warnings(tmp_path: Path, env: dict[str, str], text: str = ALIASES) -> list[str]:
    path, settings = _load(tmp_path, text, env)
    return [str(p).removeprefix(path) for p in missing_credentials(settings, REGISTRY)]


def test_missing_credentials_name_the_variables(tmp_path: Path) -> None:
    warnings = _warnings(tmp_path, {})
    assert [w.split(": ")[0] for w in warnings] == [
        ":4:10",
        ":7:10",
        ":13:10",
        ":19:10",
    ]
    claude, gem, aws, vertex = warnings
    assert (
        "models.claude.deployments[0].model: No API key configured for provider 'anthropic': set "
        in claude
    )
    assert "ANTHROPIC_API_KEY" in claude and "'anthropic/claude-sonnet-4-5'" in claude
    assert "set GEMINI_API_KEY or GOOGLE_API_KEY" in gem
    assert "AWS_ACCESS_KEY_ID" in aws
    assert "VERTEX_PROJECT or GOOGLE_CLOUD_PROJECT" in vertex
    # ollama: keyless; mistral: key in the config; neither is named. No value is ever printed.
    assert not any("ollama" in w or "mistral" in w or "inline-secret-1" in w for w in warnings)


def test_credentials_found_anywhere_silence_the_warning(tmp_path: Path) -> None:
    env = {
        "ANTHROPIC_API_KEY": "sk-ant-x",
        "GOOGLE_API_KEY": "g-x",  # the second name gemini tries
        "AWS_ACCESS_KEY_ID": "AKID",
        "AWS_SECRET_ACCESS_KEY": "s",
        "VERTEX_PROJECT": "p",
    }
    assert _warnings(tmp_path, env) == []
    text = "providers:\n  anthropic: {api_key: k}\n" + ALIASES.split("  gem:")[0]
    assert _warnings(tmp_path, {}, text) == []
    # An empty variable counts as unset, as at request time.
    assert len(_warnings(tmp_path, {**env, "ANTHROPIC_API_KEY": ""})) == 1


def test_one_warning_per_deployment_model_and_reason(tmp_path: Path) -> None:
    text = (
        "models:\n"
        "  a:\n    deployments:\n      - {model: groq/x}\n      - {model: groq/x}\n"
        "  b:\n    deployments:\n      - {model: groq/x}\n      - {model: groq/y}\n"
    )
    warnings = _warnings(tmp_path, {}, text)
    assert len(warnings) == 2 and all("GROQ_API_KEY" in w for w in warnings)


# -- relative paths -------------------------------------------------------------------------------


def test_relative_store_and_mappings_dir_follow_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = folder / "turnout.yaml"
    config.write_text("store: sqlite:///data/t.db\nmappings_dir: ../maps\n", encoding="utf-8")
    s = load_config(os.path.relpath(config), {})
    assert s.store == f"sqlite:///{folder.resolve() / 'data' / 't.db'}"
    assert s.mappings_dir == str((tmp_path / "maps").resolve())


def test_store_urls_that_stay_as_written(tmp_path: Path) -> None:
    base = str(tmp_path / "turnout.yaml")
    here = tmp_path.resolve()
    assert resolve_store("sqlite:///x.db?synchronous=normal", base) == (
        f"sqlite:///{here / 'x.db'}?synchronous=normal"
    )
    for url in ("sqlite:////abs/x.db", "sqlite:///:memory:", "memory://", "sqlite:///"):
        assert resolve_store(url, base) == url
    assert resolve_store("sqlite:///x.db", None) == "sqlite:///x.db"  # no config file: cwd
    # Without a `store:` key, the default stays the working directory's ./turnout.db.
    assert load_config(base if Path(base).write_text("{}\n") else None, {}).store == DEFAULT_STORE
    assert load_config(None, {}).store == DEFAULT_STORE


def test_access_log_setting(tmp_path: Path) -> None:
    _path, s = _load(tmp_path, "server: {access_log: true}\n")
    assert s.server.access_log is True
    assert load_config(None, {}).server.access_log is False
    path = tmp_path / "bad.yaml"
    path.write_text("server: {access_log: sometimes}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert [str(p) for p in info.value.problems] == [
        f"{path}:1:10: server.access_log: must be of boolean type, got string"
    ]


def test_a_store_url_the_store_cannot_open_stops_loading_at_its_line(tmp_path: Path) -> None:
    for text in ("store: sqlite:///x.db?foo=1\n", "store: sqlite:///x.db?synchronous=off\n"):
        with pytest.raises(ConfigError) as caught:
            _load(tmp_path, "models: {}\n" + text)
        (problem,) = caught.value.problems
        assert (problem.line, problem.key_path) == (2, "store"), str(problem)
        assert "synchronous" in problem.message
