"""server/config.py: defaults, the sample config, ${VAR} substitution, located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.engine.errors import ConfigError
from turnout.engine.registry import MappingRegistry
from turnout.server.config import (
    DEFAULT_MAPPINGS_DIR,
    Deployment,
    ProviderSettings,
    key_variables,
    load_config,
)
from turnout.server.credentials import api_key_credentials

SAMPLE = """\
store: sqlite:///turnout.db        # or memory://
providers:                          # connection overrides per provider id
  anthropic: {api_base: "http://127.0.0.1:9001", api_key: "${ANTHROPIC_API_KEY}"}
models:                             # aliases clients may send as `model`
  claude:
    deployments:
      - {model: anthropic/claude-sonnet-4-5}
auth:
  master_key: "${TURNOUT_MASTER_KEY}"   # optional
"""

ENV = {"ANTHROPIC_API_KEY": "sk-ant-secret", "TURNOUT_MASTER_KEY": "mk-secret"}


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "turnout.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _errors(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env if env is not None else ENV)
    prefix = path + ":"
    assert all(str(p).startswith(prefix) for p in info.value.problems)
    return [str(p)[len(path) :] for p in info.value.problems]


def test_defaults_without_path() -> None:
    s = load_config(None, {})
    assert s.store == "sqlite:///turnout.db"
    assert (s.server.host, s.server.port) == ("127.0.0.1", 4000)
    assert s.models == {}
    assert s.master_key is None
    assert s.mappings_dir == DEFAULT_MAPPINGS_DIR


def test_sample_config_loads(tmp_path: Path) -> None:
    s = load_config(_write(tmp_path, SAMPLE), ENV)
    # A relative sqlite path in the file is taken from the config file's folder.
    assert s.store == f"sqlite:///{(tmp_path / 'turnout.db').resolve()}"
    assert s.master_key == "mk-secret"
    assert s.models["claude"].deployments == [Deployment(model="anthropic/claude-sonnet-4-5")]
    dep = s.models["claude"].deployments[0]
    assert (dep.provider, dep.provider_model) == ("anthropic", "claude-sonnet-4-5")
    assert s.provider("anthropic") == ProviderSettings(
        api_base="http://127.0.0.1:9001", api_key="sk-ant-secret"
    )


def test_unset_variable_is_an_error_with_position(tmp_path: Path) -> None:
    env = {"ANTHROPIC_API_KEY": "k"}
    assert _errors(tmp_path, SAMPLE, env) == [
        ":9:3: auth.master_key: environment variable TURNOUT_MASTER_KEY is not set"
    ]


def test_all_unset_variables_reported(tmp_path: Path) -> None:
    problems = _errors(tmp_path, SAMPLE, {})
    assert problems == [
        ":3:50: providers.anthropic.api_key: environment variable ANTHROPIC_API_KEY is not set",
        ":9:3: auth.master_key: environment variable TURNOUT_MASTER_KEY is not set",
    ]


def test_empty_master_key_counts_as_unset(tmp_path: Path) -> None:
    s = load_config(_write(tmp_path, SAMPLE), {**ENV, "TURNOUT_MASTER_KEY": ""})
    assert s.master_key is None


def test_dollar_escape_and_partial_substitution(tmp_path: Path) -> None:
    text = 'providers:\n  openai: {api_base: "http://${HOST}:1/v1", settings: {t: "$${LIT} $x"}}\n'
    s = load_config(_write(tmp_path, text), {"HOST": "h"})
    assert s.provider("openai").api_base == "http://h:1/v1"
    assert s.provider("openai").settings == {"t": "${LIT} $x"}


def test_malformed_reference(tmp_path: Path) -> None:
    assert _errors(tmp_path, 'store: "memory://${oops"\n') == [
        ":1:1: store: unterminated ${ (write $${ for a literal ${)"
    ]
    assert _errors(tmp_path, 'store: "memory://${1X}"\n') == [
        ":1:1: store: invalid variable name in ${1X}"
    ]


def test_secrets_not_in_repr(tmp_path: Path) -> None:
    s = load_config(_write(tmp_path, SAMPLE), ENV)
    text = repr(s) + repr(s.provider("anthropic")) + repr(s.models)
    assert "sk-ant-secret" not in text
    assert "mk-secret" not in text
    assert "anthropic/claude-sonnet-4-5" in text  # repr still useful


def test_unknown_key_gets_did_you_mean(tmp_path: Path) -> None:
    text = "store: memory://\nrouter:\n  strategy: weighted\n  retires: 2\n"
    assert _errors(tmp_path, text) == [
        ":4:3: router.retires: unknown key (did you mean 'retries'?)"
    ]


def test_wrong_type_reports_right_line(tmp_path: Path) -> None:
    text = "store: memory://\nserver:\n  host: 0.0.0.0\n  port: four\n"
    assert _errors(tmp_path, text) == [":4:3: server.port: must be of integer type, got string"]


def test_deployment_wrong_type_line(tmp_path: Path) -> None:
    text = "models:\n  a:\n    deployments:\n      - model: openai/gpt-4o\n        rpm: yes\n"
    assert _errors(tmp_path, text) == [
        ":5:9: models.a.deployments[0].rpm: must be of integer type, got string"
    ]


def test_yaml_problems_become_config_errors(tmp_path: Path) -> None:
    assert _errors(tmp_path, "store: memory://\nstore: memory://\n") == [
        ":2:1: store: duplicate key 'store' (first at line 1, again at line 2)"
    ]


def test_unknown_fallback_alias(tmp_path: Path) -> None:
    text = (
        "models:\n"
        "  claude: {deployments: [{model: anthropic/c}], fallbacks: [gtp]}\n"
        "  gpt: {deployments: [{model: openai/g}]}\n"
    )
    assert _errors(tmp_path, text) == [
        ":2:61: models.claude.fallbacks[0]: unknown model alias 'gtp' (did you mean 'gpt'?)"
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(path, {})


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    s = load_config(_write(tmp_path, "# nothing yet\n"), {})
    assert s.store == "sqlite:///turnout.db"
    assert s.config_path is not None


def test_full_config(tmp_path: Path) -> None:
    text = """\
store: memory://
mappings_dir: maps
providers:
  gemini: {settings: {safety: off}, timeout_s: 30}
models:
  fast:
    deployments:
      - model: groq/llama-3.1-8b
        weight: 3
        rpm: 100
        tpm: 10000
        region: us
        api_base: http://dep
        settings: {x: 1}
      - {model: gemini/gemini-2.5-flash, weight: 0.5}
    fallbacks: [fast]
    context_window_fallbacks: [fast]
router: {strategy: least-busy, retries: 0, timeout_s: 5, cooldown_s: 1.5, allowed_fails: 1}
server: {host: 0.0.0.0, port: 8080}
limits: {max_body_bytes: 1000}
logging: [{type: stdout, level: info}]
"""
    env = {"GOOGLE_API_KEY": "g-key", "GROQ_API_KEY": "groq-key", "GROQ_API_BASE": "http://gq"}
    s = load_config(_write(tmp_path, text), env)
    assert s.mappings_dir == str((tmp_path / "maps").resolve())
    fast = s.models["fast"]
    assert [d.weight for d in fast.deployments] == [3.0, 0.5]
    assert fast.deployments[0].rpm == 100 and fast.deployments[0].region == "us"
    assert fast.fallbacks == ["fast"] and fast.context_window_fallbacks == ["fast"]
    assert s.router.strategy == "least-busy" and s.router.retries == 0
    assert s.router.cooldown_s == 1.5
    assert (s.server.host, s.server.port, s.limits.max_body_bytes) == ("0.0.0.0", 8080, 1000)
    assert s.logging == [{"type": "stdout", "level": "info"}]
    gemini = s.provider("gemini")
    assert _gemini_key(gemini.api_key, env) == "g-key"  # GOOGLE_API_KEY fallback
    assert gemini.settings == {"safety": "off"}  # `off` stayed a string
    assert gemini.timeout_s == 30.0
    groq = s.for_deployment(fast.deployments[0])
    # A deployment's region is a setting the mapping reads (settings.region), like its own.
    assert (groq.api_key, groq.api_base, groq.settings) == (
        "groq-key",
        "http://dep",
        {"region": "us", "x": 1},
    )


def _gemini_key(configured: str | None, env: dict[str, str]) -> str:
    """The key a gemini request is sent with, resolved as the gateway does."""
    mapping = MappingRegistry.load().get("gemini")
    assert mapping is not None
    found = api_key_credentials(
        "gemini", mapping.defaults, configured, env, key_variables("gemini")
    )
    return found["api_key"]


def test_provider_env_conventions() -> None:
    env = {
        "OPENAI_API_KEY": "o",
        "GEMINI_API_KEY": "gm",
        "GOOGLE_API_KEY": "gg",
        "TOGETHER_AI_API_KEY": "t",
        "MISTRAL_API_KEY": "",
    }
    s = load_config(None, env)
    assert s.provider("openai").api_key == "o"
    assert s.provider("openai").api_base is None
    # GEMINI_API_KEY wins over GOOGLE_API_KEY (gemini.yaml's api_key_env names the latter).
    assert _gemini_key(s.provider("gemini").api_key, env) == "gm"
    assert s.provider("together-ai").api_key == "t"
    assert s.provider("mistral").api_key is None  # empty counts as unset


def test_config_overrides_environment(tmp_path: Path) -> None:
    text = "providers:\n  openai: {api_key: from-file, api_base: http://file}\n"
    s = load_config(_write(tmp_path, text), {"OPENAI_API_KEY": "env", "OPENAI_API_BASE": "x"})
    assert (s.provider("openai").api_key, s.provider("openai").api_base) == (
        "from-file",
        "http://file",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # No backend registers the scheme: refused at load, naming the ones that exist.
        ("store: mysql://x\n", "store: unknown store url scheme 'mysql'"),
        # A registered backend checks the rest of its URL at load, naming no part of it.
        ("store: postgres://u:pw@x\n", ":1:1: store: postgresql store url needs a host and a"),
        ("store: not-a-url\n", ":1:1: store: value does not match regex"),
        ("models:\n  a: {deployments: []}\n", ":2:7: models.a.deployments: min length is 1"),
        ("models:\n  a: {deployments: [{model: gpt}]}\n", ":2:22: models.a.deployments[0].model"),
        ("router: {strategy: fastest}\n", ":1:10: router.strategy: unallowed value 'fastest'"),
        ("providers: {openai: {timout_s: 1}}\n", "did you mean 'timeout_s'?"),
    ],
)
def test_schema_rejections(tmp_path: Path, text: str, expected: str) -> None:
    (problem,) = _errors(tmp_path, text)
    assert expected in problem


def test_background_lease(tmp_path: Path) -> None:
    assert load_config(None, {}).background.lease_s == 30.0
    s = load_config(_write(tmp_path, "background: {lease_s: 3}\n"), {})
    assert s.background.lease_s == 3.0
    for bad in ("0.5", "301", "'soon'"):
        problems = _errors(tmp_path, f"background: {{lease_s: {bad}}}\n", {})
        assert any("lease_s" in p for p in problems), problems
