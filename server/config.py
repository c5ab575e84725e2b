"""Turnout's settings: defaults, or a strict YAML config file with ``${VAR}`` references.

Loading order matters: strict YAML (dates stay strings, duplicate keys fail) → Cerberus shape
check against ``schemas/config.yaml`` → ``${VAR}`` substitution in every string value →
cross-reference checks (fallback aliases exist). Every failure is a :class:`ConfigError`
whose problems read ``file:line:col: key.path: message (hint)``.

Checks that need the loaded mappings too are in server/preflight.py.

Relative paths (the one rule, for ``store: sqlite:///<path>`` and ``mappings_dir``): a path
written in the config file is relative to *the config file's folder*, so a config works from
any working directory; the defaults (no config file, or a file that does not set the key) are
relative to the *current directory* (``./turnout.db``; ``mappings_dir`` defaults to the bundled
mappings). ``sqlite:////abs/path.db`` (four slashes) is absolute, as in SQLAlchemy, and
``sqlite:///:memory:`` is no path. :class:`Settings` holds the resolved values (absolute paths).

Secrets (``api_key``, ``master_key``) are ``repr=False`` so logging a Settings never leaks them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnout.engine.diagnostics import PathKey, Problem, nearest
from turnout.engine.errors import ConfigError, MappingError
from turnout.engine.registry import DEFAULT_MAPPINGS_DIR as DEFAULT_MAPPINGS_FOLDER
from turnout.engine.schema_check import check, load_schema
from turnout.engine.yamlstrict import LoadedYaml, load_yaml
from turnout.server.stores import parse_store_url

__all__ = [
    "ALIASES_ONLY",
    "DEFAULT_MAPPINGS_DIR",
    "DEFAULT_STORE",
    "AccessSettings",
    "BackgroundSettings",
    "Deployment",
    "LimitsSettings",
    "ModelAlias",
    "ProviderSettings",
    "RetentionSettings",
    "RouterSettings",
    "ServerSettings",
    "Settings",
    "UiSettings",
    "env_prefix",
    "key_variables",
    "load_config",
    "resolve_store",
]

DEFAULT_STORE = "sqlite:///turnout.db"
DEFAULT_MAPPINGS_DIR = str(DEFAULT_MAPPINGS_FOLDER)


@dataclass(frozen=True)
class ProviderSettings:
    """How to reach one provider: config overrides, else ``<PID>_API_KEY``/``<PID>_API_BASE``."""

    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    # Credentials other than `api_key`, by the names the mapping declares (AWS keys...).
    credentials: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Deployment:
    """One concrete ``<provider>/<model>`` behind an alias, with optional overrides."""

    model: str
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    region: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict, repr=False)
    timeout_s: float | None = None  # read timeout of this deployment (else the provider's)
    # Dollars per million tokens for this deployment (server/pricing.py), None: the price data.
    pricing: dict[str, Any] | None = None

    @property
    def provider(self) -> str:
        """The provider id (mapping file stem): ``anthropic`` in ``anthropic/claude-x``."""
        return self.model.split("/", 1)[0]

    @property
    def provider_model(self) -> str:
        """The model name the provider knows: ``claude-x`` in ``anthropic/claude-x``."""
        return self.model.split("/", 1)[1] if "/" in self.model else self.model


@dataclass(frozen=True)
class ModelAlias:
    """A name clients send as ``model``, served by one or more deployments."""

    deployments: list[Deployment]
    fallbacks: list[str] = field(default_factory=list)
    context_window_fallbacks: list[str] = field(default_factory=list)
    # A hosted tool a deployment's provider cannot serve: "refuse" (a 400 naming tools[i]) or
    # "drop" (left out for that provider; the reply says so in x-turnout-dropped-tools).
    unsupported_tools: str = "refuse"


@dataclass(frozen=True)
class RouterSettings:
    strategy: str = "weighted"  # weighted | least-busy | latency | usage
    retries: int = 2
    timeout_s: float = 600.0
    cooldown_s: float = 5.0
    allowed_fails: int = 3
    backoff_s: float = 0.5  # first retry wait of the same deployment; doubles, with jitter


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 4000
    # On SIGTERM, replies in flight get this long to finish before they are cut (a stream can
    # last minutes); then shutdown runs (background responses are recorded as failed). Under
    # the 30 s most process managers wait before SIGKILL, so that shutdown always happens.
    shutdown_timeout_s: int = 25
    # One log line per request (method, path, status, model, deployment, duration, response id);
    # `turnout serve --access-log` turns it on too. Off, it adds nothing to the request path.
    access_log: bool = False
    # A request's headers and body must arrive within this long of its first byte (a new
    # connection's first request: of the connection's opening); else the connection is closed,
    # after a 408 when the headers were in (server/connections.py). Slowloris protection.
    read_timeout_s: float = 30.0


@dataclass(frozen=True)
class LimitsSettings:
    max_body_bytes: int = 32 * 1024 * 1024
    # A generated image larger than this fails the response with image_too_large.
    max_image_bytes: int = 20 * 1024 * 1024
    # Background responses running at once in this process; one more is a 429 (each holds an
    # upstream stream, and the create call returns at once, so nothing else would bound them).
    max_background: int = 256
    # Open client connections (idle keep-alive ones included); one more gets a JSON 503 with
    # Retry-After (server/connections.py). None: no cap. Each in-flight request also holds an
    # upstream connection, so the open-file limit is raised to about twice this at start-up.
    max_connections: int | None = 4096
    # Upstream connections open at once (each reply holds one for its whole length), in all and
    # to any one host; a request waits at most `upstream_wait_s` for one, then gets a 503
    # upstream_busy with Retry-After (server/upstream_pool.py).
    upstream_connections: int = 4096
    upstream_connections_per_host: int = 1024
    upstream_wait_s: float = 10.0


ALIASES_ONLY = "aliases_only"


@dataclass(frozen=True)
class AccessSettings:
    """Which model names the gateway serves at all, to every caller (the master key included;
    a virtual key's own `models` list narrows it further: server/access/models.py)."""

    # "any": every `provider/model` name of every mapping; "aliases_only": the aliases under
    # `models:` and the names matching `allow` (the recommended setting for a shared gateway).
    models: str = "any"
    allow: tuple[str, ...] = ()  # fnmatch globs of `provider/model` names ("openai/gpt-4o*")

    @property
    def aliases_only(self) -> bool:
        return self.models == ALIASES_ONLY


@dataclass(frozen=True)
class BackgroundSettings:
    # How long a background response's lease holds without a renewal (server/leases.py): a
    # replica that stops (kill -9) has its background responses failed by another one this
    # long after its last renewal, plus a few seconds.
    lease_s: float = 30.0


@dataclass(frozen=True)
class RetentionSettings:
    # Stored responses older than this many days are forgotten (server/retention.py); None: kept.
    days: int | None = None


@dataclass(frozen=True)
class UiSettings:
    """The admin console at `/ui` (server/console/): the master key logs in."""

    # None (not written): on exactly when auth.master_key is set. Without a master key the
    # console is off whatever this says (there is nothing to log in with; the loader refuses
    # `enabled: true` without one).
    enabled: bool | None = None
    # The session cookie's Secure flag: "auto" sets it when the request came over https (as
    # uvicorn sees it: X-Forwarded-Proto from a trusted proxy counts), "always" on every reply
    # (a TLS proxy whose forwarded scheme uvicorn does not trust).
    secure_cookie: str = "auto"
    # A login lasts this long (the signed cookie carries its expiry).
    session_ttl_s: int = 8 * 3600

    def on(self, master_key: str | None) -> bool:
        return master_key is not None and self.enabled is not False


def env_prefix(pid: str) -> str:
    """``together-ai`` → ``TOGETHER_AI``: the prefix of a provider's environment variables."""
    return re.sub(r"[^A-Za-z0-9]", "_", pid).upper()


def key_variables(pid: str) -> tuple[str, ...]:
    """The conventional API key variables of provider ``pid``, in the order they are tried."""
    # A provider's other names (Gemini's GOOGLE_API_KEY) are its mapping's `api_key_env`.
    return (f"{env_prefix(pid)}_API_KEY",)


@dataclass(frozen=True)
class Settings:
    """Everything the server needs, resolved once at start-up."""

    store: str = DEFAULT_STORE
    # `state: redis://…` (server/state/): what replicas share; None: in-process (one replica).
    # May hold a password: never shown unmasked (cli.mask_store_url).
    state: str | None = field(default=None, repr=False)
    models: dict[str, ModelAlias] = field(default_factory=dict)
    providers: dict[str, ProviderSettings] = field(default_factory=dict)  # config file only
    master_key: str | None = field(default=None, repr=False)
    # auth.compaction_key: seals compaction summaries (server/compaction.py).
    compaction_key: str | None = field(default=None, repr=False)
    router: RouterSettings = field(default_factory=RouterSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    ui: UiSettings = field(default_factory=UiSettings)
    background: BackgroundSettings = field(default_factory=BackgroundSettings)
    mappings_dir: str = DEFAULT_MAPPINGS_DIR
    logging: list[dict[str, Any]] = field(default_factory=list)
    # Price overrides by alias, provider/model or glob (server/pricing.py).
    pricing: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_path: str | None = None
    # The parsed file with the line/column of every key, for problems found after loading
    # (check_providers); None without a config file.
    source: LoadedYaml | None = field(default=None, repr=False, compare=False)
    # The environment given to load_config (a snapshot), for the conventional variables.
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def provider(self, pid: str) -> ProviderSettings:
        """Connection settings for provider ``pid``: config first, then environment variables."""
        cfg = self.providers.get(pid) or ProviderSettings()
        prefix = env_prefix(pid)
        key_vars = key_variables(pid)
        return ProviderSettings(
            api_base=cfg.api_base or self._env(f"{prefix}_API_BASE"),
            api_key=cfg.api_key or self._env(*key_vars),
            settings=dict(cfg.settings),
            timeout_s=cfg.timeout_s,
            credentials=dict(cfg.credentials),
        )

    def for_deployment(self, deployment: Deployment) -> ProviderSettings:
        """:meth:`provider` with the deployment's own overrides on top (settings merged)."""
        base = self.provider(deployment.provider)
        return ProviderSettings(
            api_base=deployment.api_base or base.api_base,
            api_key=deployment.api_key or base.api_key,
            settings={
                **base.settings,
                **({"region": deployment.region} if deployment.region else {}),
                **deployment.settings,
            },
            timeout_s=deployment.timeout_s or base.timeout_s,
            credentials={**base.credentials, **deployment.credentials},
        )

    def _env(self, *names: str) -> str | None:
        for name in names:
            value = self.env.get(name)
            if value:  # an empty variable counts as unset
                return value
        return None


def load_config(path: str | None, env: Mapping[str, str]) -> Settings:
    """Defaults when ``path`` is None; else the validated file. Raises :class:`ConfigError`."""
    snapshot = dict(env)
    if path is None:
        return Settings(env=snapshot)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError([Problem(path, 1, 1, "", f"cannot read config file: {reason}")]) from None
    try:
        loaded = load_yaml(text, path)
    except MappingError as exc:
        raise ConfigError(exc.problems) from None
    if loaded.data is None:  # an empty (or all-comments) file means "all defaults"
        loaded = LoadedYaml(path, {}, loaded.marks)

    problems = check(loaded, load_schema("config"), path)
    if problems:
        raise ConfigError(problems)
    data = _substitute_tree(loaded, snapshot)
    _check_references(loaded, data)
    return _build(data, path, snapshot, loaded)


# `$${` is a literal `${`; `${NAME}` a reference; a `${` left over is unterminated.
_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _substitute_tree(loaded: LoadedYaml, env: Mapping[str, str]) -> Any:
    problems: list[Problem] = []

    def walk(value: Any, path: tuple[PathKey, ...]) -> Any:
        if isinstance(value, str):
            return _substitute(value, env, lambda msg: problems.append(loaded.problem(path, msg)))
        if isinstance(value, dict):
            # Keys are names, not values: they are never substituted.
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        return value

    result = walk(loaded.data, ())
    if problems:
        raise ConfigError(problems)
    return result


def _substitute(text: str, env: Mapping[str, str], report: Callable[[str], None]) -> str:
    def repl(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        name = match.group(1)
        if name is None:
            report("unterminated ${ (write $${ for a literal ${)")
        elif not _NAME.fullmatch(name):
            report(f"invalid variable name in ${{{name}}}")
        elif name not in env:
            report(f"environment variable {name} is not set")
        else:
            return env[name]
        return token

    return _REF.sub(repl, text)


def _check_references(loaded: LoadedYaml, data: dict[str, Any]) -> None:
    aliases = data.get("models") or {}
    problems: list[Problem] = []
    for alias, spec in aliases.items():
        for key in ("fallbacks", "context_window_fallbacks"):
            for i, target in enumerate(spec.get(key) or []):
                if target not in aliases:
                    guess = nearest(target, list(aliases))
                    problems.append(
                        loaded.problem(
                            ("models", alias, key, i),
                            f"unknown model alias {target!r}",
                            f"did you mean {guess!r}?"
                            if guess
                            else "fallbacks name aliases defined under models",
                        )
                    )
    access = data.get("access") or {}
    if access.get("allow") and access.get("models") != ALIASES_ONLY:
        # A list that would silently do nothing: `any` serves every name already.
        problems.append(
            loaded.problem(
                ("access", "allow"),
                f"allow only applies with models: {ALIASES_ONLY} "
                f"(models is {access.get('models', 'any')!r}, which serves every name)",
                f"add models: {ALIASES_ONLY} under access, or remove allow",
            )
        )
    ui = data.get("ui") or {}
    if ui.get("enabled") is True and not _opt((data.get("auth") or {}).get("master_key")):
        # The console logs in with the master key: without one nobody could use it.
        problems.append(
            loaded.problem(
                ("ui", "enabled"),
                "the admin console needs auth.master_key (its login password)",
                "set auth.master_key, or remove ui.enabled",
            )
        )
    if data.get("store"):
        # Checked here, not when the server opens it: a bad URL stops start-up at its line.
        try:
            parse_store_url(str(data["store"]))
        except ValueError as exc:
            problems.append(loaded.problem(("store",), str(exc)))
    if data.get("state"):
        from turnout.server.state.base import parse_state_url

        try:
            parse_state_url(str(data["state"]))
        except ValueError as exc:
            problems.append(loaded.problem(("state",), str(exc)))
    if problems:
        raise ConfigError(problems)


def _opt(value: Any) -> Any:
    # After substitution an empty string means "not configured".
    return None if value == "" else value


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _relative_to_config(path: str, value: str) -> str:
    """``value`` as an absolute path: a relative one is taken from the config file's folder
    (the rule in the module docstring)."""
    return str((Path(path).parent / value).resolve())


def resolve_store(url: str, base: str | None) -> str:
    """``url`` with a relative SQLite path made absolute against the folder ``base`` (the config
    file's; None: left relative, i.e. the current directory). Anything else is unchanged."""
    scheme, sep, rest = url.partition("://")
    if base is None or scheme.lower() != "sqlite" or not sep or not rest.startswith("/"):
        return url
    file, qsep, query = rest[1:].partition("?")
    if not file or file == ":memory:" or Path(file).is_absolute():
        return url
    return f"{scheme}:///{_relative_to_config(base, file)}{qsep}{query}"


def _build(
    data: dict[str, Any], path: str, env: dict[str, str], loaded: LoadedYaml | None = None
) -> Settings:
    providers = {
        pid: ProviderSettings(
            api_base=_opt(p.get("api_base")),
            api_key=_opt(p.get("api_key")),
            settings=dict(p.get("settings") or {}),
            timeout_s=_num(p.get("timeout_s")),
            credentials={k: str(v) for k, v in (p.get("credentials") or {}).items() if v},
        )
        for pid, p in ((pid, p or {}) for pid, p in (data.get("providers") or {}).items())
    }
    models = {
        alias: ModelAlias(
            deployments=[_deployment(d) for d in spec["deployments"]],
            fallbacks=list(spec.get("fallbacks") or []),
            context_window_fallbacks=list(spec.get("context_window_fallbacks") or []),
            unsupported_tools=str(spec.get("unsupported_tools") or "refuse"),
        )
        for alias, spec in (data.get("models") or {}).items()
    }
    router = data.get("router") or {}
    server = data.get("server") or {}
    limits = data.get("limits") or {}
    defaults_r, defaults_s, defaults_l = RouterSettings(), ServerSettings(), LimitsSettings()
    mappings_dir = DEFAULT_MAPPINGS_DIR
    if data.get("mappings_dir"):
        mappings_dir = _relative_to_config(path, data["mappings_dir"])
    # A store written in the file is resolved like mappings_dir; the default stays ./turnout.db.
    store = resolve_store(data["store"], path) if data.get("store") else DEFAULT_STORE
    return Settings(
        store=store,
        state=_opt(data.get("state")),
        models=models,
        providers=providers,
        master_key=_opt((data.get("auth") or {}).get("master_key")),
        compaction_key=_opt((data.get("auth") or {}).get("compaction_key")),
        router=RouterSettings(
            strategy=router.get("strategy", defaults_r.strategy),
            retries=router.get("retries", defaults_r.retries),
            timeout_s=float(router.get("timeout_s", defaults_r.timeout_s)),
            cooldown_s=float(router.get("cooldown_s", defaults_r.cooldown_s)),
            allowed_fails=router.get("allowed_fails", defaults_r.allowed_fails),
            backoff_s=float(router.get("backoff_s", defaults_r.backoff_s)),
        ),
        server=ServerSettings(
            host=server.get("host", defaults_s.host),
            port=server.get("port", defaults_s.port),
            shutdown_timeout_s=server.get("shutdown_timeout_s", defaults_s.shutdown_timeout_s),
            access_log=bool(server.get("access_log", defaults_s.access_log)),
            read_timeout_s=float(server.get("read_timeout_s", defaults_s.read_timeout_s)),
        ),
        limits=LimitsSettings(
            max_body_bytes=limits.get("max_body_bytes", defaults_l.max_body_bytes),
            max_image_bytes=limits.get("max_image_bytes", defaults_l.max_image_bytes),
            max_background=limits.get("max_background", defaults_l.max_background),
            max_connections=limits.get("max_connections", defaults_l.max_connections),
            upstream_connections=limits.get(
                "upstream_connections", defaults_l.upstream_connections
            ),
            upstream_connections_per_host=limits.get(
                "upstream_connections_per_host", defaults_l.upstream_connections_per_host
            ),
            upstream_wait_s=limits.get("upstream_wait_s", defaults_l.upstream_wait_s),
        ),
        access=AccessSettings(
            models=str((data.get("access") or {}).get("models") or "any"),
            allow=tuple((data.get("access") or {}).get("allow") or ()),
        ),
        retention=RetentionSettings(days=(data.get("retention") or {}).get("days")),
        ui=_ui(data.get("ui") or {}),
        background=BackgroundSettings(
            lease_s=float((data.get("background") or {}).get("lease_s", BackgroundSettings.lease_s))
        ),
        mappings_dir=mappings_dir,
        logging=[dict(entry) for entry in data.get("logging") or []],
        pricing={k: dict(v) for k, v in (data.get("pricing") or {}).items()},
        config_path=path,
        source=loaded,
        env=env,
    )


def _ui(ui: dict[str, Any]) -> UiSettings:
    defaults = UiSettings()
    return UiSettings(
        enabled=ui.get("enabled"),
        secure_cookie=str(ui.get("secure_cookie") or defaults.secure_cookie),
        session_ttl_s=int(ui.get("session_ttl_s") or defaults.session_ttl_s),
    )


def _deployment(d: dict[str, Any]) -> Deployment:
    return Deployment(
        model=d["model"],
        api_base=_opt(d.get("api_base")),
        api_key=_opt(d.get("api_key")),
        weight=float(d.get("weight", 1.0)),
        rpm=d.get("rpm"),
        tpm=d.get("tpm"),
        region=_opt(d.get("region")),
        settings=dict(d.get("settings") or {}),
        credentials={k: str(v) for k, v in (d.get("credentials") or {}).items() if v},
        timeout_s=_num(d.get("timeout_s")),
        pricing=dict(d["pricing"]) if d.get("pricing") else None,
    )
