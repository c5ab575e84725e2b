"""Where a request goes: a model name resolved to a `Target` (mapping, upstream model, base URL,
credentials, settings), and the credentials that are fetched per request (OAuth tokens).

`model` is an alias from `settings.models` (the router picks the deployment) or
`provider/model` with a provider the registry knows; anything else is a 400 `model_not_found`
naming the closest provider or alias.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from turnout.engine.canonical import CanonicalRequest
from turnout.engine.diagnostics import nearest
from turnout.engine.errors import RequestError, UpstreamError
from turnout.server.config import ProviderSettings, Settings, key_variables
from turnout.server.credentials import (
    GoogleTokens,
    api_key_credentials,
    declared_credentials,
    resolve_settings,
    static_credentials,
)
from turnout.server.router import DeploymentState, Router
from turnout.server.upstream import UpstreamCall

__all__ = ["MappingLike", "RegistryLike", "StreamDecoderLike", "Target", "Targets"]


class StreamDecoderLike(Protocol):
    def feed(self, chunk: bytes) -> list[dict[str, Any]]: ...
    def close(self) -> list[dict[str, Any]]: ...


class MappingLike(Protocol):
    """The slice of `engine.mapping.CompiledMapping` the gateway uses."""

    @property
    def provider(self) -> str: ...
    @property
    def defaults(self) -> Mapping[str, Any]: ...
    @property
    def finish_reasons(self) -> Mapping[str, str]: ...

    def build_request(
        self,
        req: CanonicalRequest,
        *,
        model: str,
        api_base: str,
        credentials: dict[str, str],
        settings: dict[str, Any],
    ) -> UpstreamCall: ...
    def parse_response(self, body: bytes) -> list[dict[str, Any]]: ...
    def stream_decoder(self) -> StreamDecoderLike: ...
    def parse_error(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError: ...


class RegistryLike(Protocol):
    """The slice of `engine.registry.MappingRegistry` the gateway uses."""

    def get(self, provider: str) -> MappingLike | None: ...
    @property
    def providers(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: the resolved provider, upstream model and credentials."""

    provider: str
    mapping: MappingLike
    model: str
    api_base: str
    credentials: dict[str, str] = field(repr=False)
    settings: dict[str, Any]
    timeout_s: float | None
    deployment: str | None
    # Credentials still to fetch per request (OAuth tokens), by name.
    pending: tuple[str, ...] = ()
    # The router's id of the alias deployment ("claude#0"); None for a direct provider/model.
    deployment_id: str | None = None


class Targets:
    """Model names to targets, with each provider's and deployment's connection settings
    resolved once per process."""

    def __init__(self, settings: Settings, registry: RegistryLike, router: Router) -> None:
        self.settings = settings
        self.registry = registry
        self.router = router
        # Keys are bounded (registry providers, configured deployments), never client strings.
        self._conns: dict[object, ProviderSettings] = {}
        self.google_tokens = GoogleTokens()

    def resolve(self, model: str) -> Target:
        """`model` as an alias (the router's first choice: `create` walks the attempts itself)
        or `provider/model`; 400 `model_not_found` otherwise, 401 `missing_api_key` without a
        key."""
        spec = self.settings.models.get(model)
        if spec is not None and spec.deployments:
            state = self.router.pick(model).state
            if state is None:
                state = self.router.groups[model][0]
            return self.for_deployment(state, model)
        provider, sep, upstream_model = model.partition("/")
        mapping = self.mapping(provider, upstream_model) if sep and upstream_model else None
        if mapping is None:
            raise self.unknown_model(model)
        conn = self._conns.get(provider)
        if conn is None:
            conn = self._conns[provider] = self.settings.provider(provider)
        return self._target(mapping, upstream_model, conn, None)

    def for_deployment(self, state: DeploymentState, model: str) -> Target:
        """The target of one alias deployment: its own mapping (a Chat-Completions deployment
        gets the chat mapping even as a fallback of a Responses one: anchor-failures 11)."""
        dep = state.deployment
        mapping = self.mapping(dep.provider, dep.provider_model)
        if mapping is None:  # config names a provider with no mapping file
            raise self.unknown_model(model)
        conn = self._conns.get(id(dep))
        if conn is None:
            conn = self._conns[id(dep)] = self.settings.for_deployment(dep)
        return self._target(mapping, dep.provider_model, conn, dep.model, state.id)

    def placeholder(self, alias: str) -> Target:
        """The alias's first deployment, without credentials: what a queued background
        response names until an attempt answers (`bind` replaces it)."""
        dep = self.router.groups[alias][0].deployment
        mapping = self.mapping(dep.provider, dep.provider_model)
        if mapping is None:
            raise self.unknown_model(alias)
        return Target(
            provider=dep.provider, mapping=mapping, model=dep.provider_model, api_base="",
            credentials={}, settings={}, timeout_s=None, deployment=dep.model,
        )  # fmt: skip

    def mapping(self, provider: str, model: str) -> MappingLike | None:
        # A provider may serve some models through a variant mapping (Claude on Vertex).
        resolve = getattr(self.registry, "resolve", None)
        return resolve(provider, model) if resolve is not None else self.registry.get(provider)

    def unknown_model(self, model: str) -> RequestError:
        providers = ", ".join(self.registry.providers) or "(none loaded)"
        aliases = ", ".join(sorted(self.settings.models))
        hint = f"an alias ({aliases}) or " if aliases else ""
        # A misspelt provider or alias is the usual mistake: name the closest one first.
        prefix, sep, rest = model.partition("/")
        provider = nearest(prefix, self.registry.providers) if sep else None
        guess = f"{provider}/{rest}" if provider else nearest(model, list(self.settings.models))
        closest = f" Did you mean '{guess}'?" if guess else ""
        return RequestError(
            400,
            f"The model '{model}' does not exist.{closest} Use {hint}'provider/model' where "
            f"provider is one of: {providers}.",
            param="model",
            code="model_not_found",
        )

    def _target(
        self,
        mapping: MappingLike,
        model: str,
        conn: ProviderSettings,
        deployment: str | None,
        deployment_id: str | None = None,
    ) -> Target:
        defaults = mapping.defaults
        env = self.settings.env
        settings = resolve_settings(
            mapping.provider, defaults.get("settings") or {}, conn.settings, env
        )
        declared = declared_credentials(defaults)
        pending: list[str] = []
        if declared is None:
            credentials = self._api_key(mapping, conn)
        else:
            credentials, pending = static_credentials(
                mapping.provider, declared, conn.credentials, conn.api_key, env
            )
        return Target(
            provider=mapping.provider,
            mapping=mapping,
            model=model,
            api_base=conn.api_base or str(defaults.get("api_base") or ""),
            credentials=credentials,
            settings=settings,
            timeout_s=conn.timeout_s or self.settings.router.timeout_s,
            deployment=deployment,
            pending=tuple(pending),
            deployment_id=deployment_id,
        )

    async def credentials(self, target: Target) -> dict[str, str]:
        """The target's credentials, with those from a token source (Vertex's OAuth2 access
        token) fetched for this request."""
        if not target.pending:
            return target.credentials
        credentials = dict(target.credentials)
        source = target.settings.get("credentials_file") or self.settings.env.get(
            "GOOGLE_APPLICATION_CREDENTIALS"
        )
        for name in target.pending:
            credentials[name] = await self.google_tokens.token(
                target.provider, str(source) if source else None
            )
        return credentials

    def _api_key(self, mapping: MappingLike, conn: ProviderSettings) -> dict[str, str]:
        pid = mapping.provider
        return api_key_credentials(
            pid, mapping.defaults, conn.api_key, self.settings.env, key_variables(pid)
        )
