"""Checks that need both the config and the loaded mappings, run by `turnout serve` before it
listens (server/cli.py).

:func:`check_providers` stops start-up when an alias deployment (or a ``providers:`` entry, or an
``access.allow`` pattern) names a provider no mapping file defines, located at its key with a
did-you-mean (else the server would start and every request to the alias would fail with a
confusing "model does not exist").
:func:`missing_credentials` lists the alias deployments whose credentials cannot be found, for a
start-up warning that names the variables to set (never a value). :func:`check_store` opens and
closes the store once, so an unwritable path (or a database that does not answer) stops start-up
with one line naming the store and the reason, not a traceback from the server's lifespan.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from typing import Any

from turnout.engine.diagnostics import PathKey, Problem, dotted, nearest
from turnout.engine.errors import ConfigError, RequestError
from turnout.engine.registry import MappingRegistry
from turnout.server.config import Deployment, Settings, key_variables
from turnout.server.credentials import (
    api_key_credentials,
    declared_credentials,
    resolve_settings,
    static_credentials,
)
from turnout.server.stores import open_store

__all__ = ["check_providers", "check_store", "missing_credentials"]


def _locate(
    settings: Settings, keys: tuple[PathKey, ...], message: str, hint: str | None
) -> Problem:
    """A problem at ``keys`` of the config file (line/col of that key)."""
    source = settings.source
    if source is not None:
        return source.problem(keys, message, hint)
    return Problem(settings.config_path or "<config>", 1, 1, dotted(keys), message, hint)


def check_providers(settings: Settings, providers: Collection[str]) -> None:
    """Every alias deployment's ``<provider>/`` and every ``providers:`` key must name a loaded
    mapping; else a :class:`ConfigError` located at that key, with a did-you-mean. Without this,
    the server would start and every request to the alias would fail."""
    known = sorted(providers)
    problems: list[Problem] = []

    def hint(pid: str) -> str:
        guess = nearest(pid, known)
        if guess is not None:
            return f"did you mean {guess!r}?"
        return "a provider is a mapping file name: " + ", ".join(known)

    for pid in settings.providers:
        if pid not in providers:
            problems.append(
                _locate(settings, ("providers", pid), f"unknown provider {pid!r}", hint(pid))
            )
    for alias, spec in settings.models.items():
        for i, dep in enumerate(spec.deployments):
            if dep.provider not in providers:
                problems.append(
                    _locate(
                        settings,
                        ("models", alias, "deployments", i, "model"),
                        f"unknown provider {dep.provider!r} in model {dep.model!r}",
                        hint(dep.provider),
                    )
                )
    for i, pattern in enumerate(settings.access.allow):
        pid = pattern.split("/", 1)[0]
        # A glob in the provider part ("*/llama-3*") may match several; a plain one must exist.
        if not any(c in pid for c in "*?[") and pid not in providers:
            problems.append(
                _locate(
                    settings,
                    ("access", "allow", i),
                    f"unknown provider {pid!r} in pattern {pattern!r}",
                    hint(pid),
                )
            )
    if problems:
        problems.sort(key=lambda p: (p.line, p.col))
        raise ConfigError(problems)


def check_store(settings: Settings, shown_url: str) -> None:
    """Open and close the configured store; a :class:`ConfigError` at the ``store`` key naming
    it (as ``shown_url``: secrets masked) and the reason when that fails."""

    async def open_and_close() -> None:
        store = await open_store(settings.store)
        await store.aclose()

    try:
        asyncio.run(open_and_close())
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problem = _locate(
            settings, ("store",), f"cannot open the store {shown_url}: {reason}",
            "check that the path is writable by this user, or that the database answers",
        )  # fmt: skip
        raise ConfigError([problem]) from None


def missing_credentials(settings: Settings, registry: MappingRegistry) -> list[Problem]:
    """The alias deployments whose credentials (or required settings) are found neither in the
    config nor in the environment, each located at its (first) ``model`` key and naming the
    variables to set, once per model and reason. Requests to them would be refused (401); this
    is for a start-up warning. Values are never part of a message. Run after
    :func:`check_providers`."""
    found: dict[str, Problem] = {}
    for alias, spec in settings.models.items():
        for i, dep in enumerate(spec.deployments):
            mapping = registry.resolve(dep.provider, dep.provider_model)
            if mapping is None:
                continue
            message = _missing(settings, mapping.provider, mapping.defaults, dep)
            if message is not None and message not in found:
                keys: tuple[PathKey, ...] = ("models", alias, "deployments", i, "model")
                found[message] = _locate(settings, keys, message, None)
    return list(found.values())


def _missing(
    settings: Settings, pid: str, defaults: Mapping[str, Any], dep: Deployment
) -> str | None:
    """Why requests to ``dep`` would be refused for want of a credential, or None: the very
    functions the gateway resolves credentials with (targets.Targets), run ahead of time."""
    conn = settings.for_deployment(dep)
    env = settings.env
    try:
        resolve_settings(pid, defaults.get("settings") or {}, conn.settings, env)
        declared = declared_credentials(defaults)
        if declared is None:
            api_key_credentials(pid, defaults, conn.api_key, env, key_variables(pid))
        else:
            # Credentials from a token source (Google ADC) are fetched per request: not checked.
            static_credentials(pid, declared, conn.credentials, conn.api_key, env)
    except RequestError as exc:
        return f"{exc.message.rstrip('.')}; requests to model {dep.model!r} will be refused"
    return None
