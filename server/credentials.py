"""Credentials and settings a mapping declares, resolved from config, environment and defaults.

A mapping without a ``credentials:`` section has one credential, ``api_key`` (see
``Gateway``). One with it names each credential and where it comes from (docs/internals.md,
"Providers beyond API keys"). Values are secrets: they are never logged, never part of an error
message (errors name the *variables* to set), never stored.

Google OAuth2 access tokens (Vertex AI) come from google-auth: a service-account file or
application default credentials, refreshed in a worker thread before they expire and cached per
source, so a request pays for a token fetch once an hour, not every time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import httpx

from turnout.engine.errors import RequestError, UpstreamError
from turnout.server.redaction import redact

__all__ = [
    "GoogleTokens",
    "api_key_credentials",
    "declared_credentials",
    "resolve_settings",
    "static_credentials",
]

GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


def _env_names(spec: Mapping[str, Any]) -> list[str]:
    names = spec.get("env") or []
    return [names] if isinstance(names, str) else [str(n) for n in names]


def _first_env(env: Mapping[str, str], names: list[str]) -> str | None:
    for name in names:
        value = env.get(name)
        if value:
            return value
    return None


def resolve_settings(
    provider: str,
    declared: Mapping[str, Any],
    configured: Mapping[str, Any],
    env: Mapping[str, str],
) -> dict[str, Any]:
    """Config settings win over the environment, which wins over the mapping's default."""
    out = dict(configured)
    for name, spec in declared.items():
        if out.get(name) not in (None, ""):
            continue
        value = _first_env(env, _env_names(spec))
        if value is None:
            value = spec.get("default")
        if value is None and spec.get("required"):
            names = " or ".join(_env_names(spec)) or "(no variable)"
            raise RequestError(
                401,
                f"Provider '{provider}' needs the setting '{name}': set {names} in the "
                f"environment or providers.{provider}.settings.{name} in the config.",
                code="missing_setting",
            )
        if value is not None:
            out[name] = value
    return out


def declared_credentials(defaults: Mapping[str, Any]) -> Mapping[str, Any] | None:
    declared = defaults.get("credentials")
    return declared if isinstance(declared, Mapping) and declared else None


def static_credentials(
    provider: str,
    declared: Mapping[str, Any],
    configured: Mapping[str, str],
    api_key: str | None,
    env: Mapping[str, str],
) -> tuple[dict[str, str], list[str]]:
    """(credentials found, names still to fetch from a token source)."""
    found: dict[str, str] = {}
    pending: list[str] = []
    for name, spec in declared.items():
        value = configured.get(name) or (api_key if name in ("api_key", "access_token") else None)
        value = value or _first_env(env, _env_names(spec))
        if value:
            found[name] = value
        elif spec.get("source") == "google":
            pending.append(name)
        elif spec.get("required", True):
            names = " or ".join(_env_names(spec)) or "(no variable)"
            raise RequestError(
                401,
                f"Provider '{provider}' needs the credential '{name}': set {names} in the "
                f"environment or providers.{provider}.credentials.{name} in the config.",
                code="missing_credentials",
            )
    return found, pending


def api_key_credentials(
    provider: str,
    defaults: Mapping[str, Any],
    api_key: str | None,
    env: Mapping[str, str],
    conventional: tuple[str, ...],
) -> dict[str, str]:
    """The credentials of a provider that takes one API key: ``api_key`` (config, or the
    conventional ``<PROVIDER>_API_KEY`` already looked up), else the mapping's own
    ``api_key_env`` variables; none for keyless providers (``auth: optional``). Else a 401 that
    names the variables to set (``conventional`` first), never a value."""
    if api_key:
        return {"api_key": api_key}
    names = defaults.get("api_key_env") or []
    names = [names] if isinstance(names, str) else [str(n) for n in names]
    value = _first_env(env, names)
    if value:
        return {"api_key": value}
    if defaults.get("auth") == "optional":
        return {}  # keyless providers (local servers)
    choices = " or ".join(dict.fromkeys([*conventional, *names]))
    raise RequestError(
        401,
        f"No API key configured for provider '{provider}': set {choices} in the "
        "environment (or api_key in the config).",
        code="missing_api_key",
    )


class _HttpxTransport:
    """google-auth's synchronous transport interface over httpx (no `requests` dependency)."""

    class _Response:
        def __init__(self, reply: httpx.Response) -> None:
            self.status = reply.status_code
            self.headers = dict(reply.headers)
            self.data = reply.content

    def __init__(self) -> None:
        self._client = httpx.Client(timeout=30)

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **_: Any,
    ) -> _HttpxTransport._Response:
        try:
            reply = self._client.request(
                method, url, content=body, headers=dict(headers or {}), timeout=timeout or 30
            )
        except httpx.HTTPError as exc:
            from google.auth.exceptions import TransportError

            raise TransportError(f"token request failed: {type(exc).__name__}") from None  # type: ignore[no-untyped-call]
        return self._Response(reply)


class GoogleTokens:
    """OAuth2 access tokens per credentials source, refreshed ahead of expiry."""

    def __init__(self) -> None:
        self._credentials: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._thread_lock = threading.Lock()
        self._transport: _HttpxTransport | None = None

    def _load(self, source: str | None) -> Any:
        import google.auth
        from google.oauth2 import service_account

        if source:
            return service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                source, scopes=GOOGLE_SCOPES
            )
        credentials, _project = google.auth.default(scopes=GOOGLE_SCOPES)
        return credentials

    def _refresh(self, key: str, source: str | None) -> str:
        with self._thread_lock:
            if self._transport is None:
                self._transport = _HttpxTransport()
            credentials = self._credentials.get(key)
            if credentials is None:
                credentials = self._credentials[key] = self._load(source)
            if not credentials.valid:  # google-auth counts a token about to expire as invalid
                credentials.refresh(self._transport)
            return str(credentials.token)

    async def token(self, provider: str, source: str | None) -> str:
        key = source or "adc"
        credentials = self._credentials.get(key)
        if credentials is not None and credentials.valid:
            return str(credentials.token)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            try:
                return await asyncio.to_thread(self._refresh, key, source)
            except Exception as exc:
                # The cause names what is wrong (file missing, no ADC); never a key or token.
                raise UpstreamError(
                    502,
                    f"Could not get a Google access token for provider '{provider}': "
                    f"{type(exc).__name__}: {redact(str(exc)[:200])}",
                    code="credentials_unavailable",
                    type="server_error",
                    provider=provider,
                ) from None
