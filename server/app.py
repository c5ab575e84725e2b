"""The Litestar application factory.

Start-up order, and why:

* the mapping registry is compiled in `create_app` itself (synchronously, once): a broken mapping
  then raises `MappingError` with its `file:line:col` problems before the server binds, and the
  CLI prints them and exits instead of uvicorn dumping a traceback from inside the lifespan;
* the store and the shared upstream client are opened in the lifespan, on the server's event
  loop (the aiohttp transport and SQLite's worker are loop-bound), and closed on shutdown.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar

from turnout.engine.diagnostics import Problem
from turnout.engine.errors import ConfigError
from turnout.engine.registry import MappingRegistry
from turnout.server.access.auth import Authenticator
from turnout.server.admin import admin_router
from turnout.server.config import Settings
from turnout.server.console import Console, console_router
from turnout.server.errors import exception_handlers
from turnout.server.gateway import Gateway, RegistryLike
from turnout.server.retention import Retention
from turnout.server.routes import health, health_deployments, metrics, v1_router
from turnout.server.stores import ResponseStore, create_store
from turnout.server.stores.keys import KeyStore
from turnout.server.telemetry import Telemetry
from turnout.server.telemetry.sinks import otel_provider_names
from turnout.server.upstream import Upstream
from turnout.server.upstream_pool import PoolLimits
from turnout.server.websocket_mode import responses_socket

__all__ = ["create_app"]


def _telemetry(settings: Settings, mappings: RegistryLike) -> Telemetry:
    """The `logging:` sinks, built at once so a bad entry stops start-up as a config error."""
    try:
        return Telemetry(
            settings.logging,
            env=settings.env,
            extra_secrets=[settings.master_key] if settings.master_key else [],
            provider_names=otel_provider_names(mappings),
            known_models=_known_models(settings),
        )
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        where = settings.config_path or "<config>"
        raise ConfigError([Problem(where, 1, 1, "logging", str(exc))]) from None


def _known_models(settings: Settings) -> set[str]:
    """The model names the config names (aliases, their deployments' models): they keep their
    own metric series whatever clients send."""
    names = set(settings.models)
    for alias in settings.models.values():
        for dep in alias.deployments:
            names.update((dep.model, dep.provider_model))
    return names


def create_app(
    settings: Settings,
    *,
    registry: RegistryLike | None = None,
    store: ResponseStore | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Litestar:
    """Build the app. `registry`/`store`/`transport` replace the real ones (tests); a store
    passed in is neither opened nor closed here, since the caller owns it."""
    mappings: RegistryLike = registry or MappingRegistry.load(settings.mappings_dir)
    telemetry = _telemetry(settings, mappings)
    # The admin console (/ui): on by default with a master key, its login password.
    console = (
        Console(settings.master_key, settings.ui)
        if settings.master_key is not None and settings.ui.on(settings.master_key)
        else None
    )

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Whatever was opened is closed again, in reverse order, also when a later step of the
        # start-up fails (a store that opened, then a recovery that raised).
        async with contextlib.AsyncExitStack() as opened:
            the_store = create_store(settings.store) if store is None else store
            if store is None:
                await the_store.open()  # file, schema: blocking parts run on the store's thread
                opened.push_async_callback(the_store.aclose)
            limits = settings.limits
            pool = PoolLimits(
                total=limits.upstream_connections,
                per_host=limits.upstream_connections_per_host,
                wait_s=limits.upstream_wait_s,
            )
            upstream = Upstream(transport=transport, pool=pool)
            telemetry.metrics.watch_upstream(upstream.slots)
            upstream.start()
            opened.push_async_callback(upstream.aclose)
            # Started here, on the server's loop: sinks run worker tasks and HTTP clients.
            await telemetry.start()
            opened.push_async_callback(telemetry.aclose)
            gateway = Gateway(settings, mappings, the_store, upstream)
            app.state.gateway = gateway
            keys = the_store if isinstance(the_store, KeyStore) else None
            app.state.auth = Authenticator(settings.master_key, keys)
            # First to close: background responses stop and are recorded before the rest.
            opened.push_async_callback(gateway.aclose)
            if gateway.cooldowns is not None:
                gateway.cooldowns.start()  # shared cooldowns, read every 250 ms (off requests)
            await gateway.recover()
            gateway.leases.start()  # stopped by gateway.aclose
            if settings.retention.days is not None:
                retention = Retention(the_store, settings.retention.days)
                retention.start()
                opened.push_async_callback(retention.aclose)  # stopped before the rest
            gateway.telemetry = telemetry
            app.state.telemetry = telemetry
            app.state.console = console
            yield

    return Litestar(
        route_handlers=[
            v1_router(),
            admin_router(),  # /admin/keys, /admin/teams, /admin/audit: master key only
            responses_socket,  # WebSocket mode on /v1/responses: checks the key itself
            health,
            health_deployments,
            metrics,
            *([console_router()] if console is not None else []),  # /ui: its own login
        ],
        lifespan=[lifespan],
        exception_handlers=exception_handlers(),
        request_max_body_size=settings.limits.max_body_bytes,
        # No schema routes, no framework logging config: the CLI owns logging (and its
        # redaction filter); Litestar's defaults would add handlers of their own.
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
