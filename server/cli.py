"""`turnout serve|migrate|lint|record|keys|teams`, `turnout --version`.

    turnout serve [--config FILE] [--host H] [--port P]   # default 127.0.0.1:4000
                  [--log-level debug|info|warning|error] [--access-log]
    turnout migrate [--config FILE]                         # bring the store's schema up to date
    turnout lint [DIR]                                      # default: the bundled mappings/
    turnout record --model PROVIDER/MODEL --input TEXT [--stream] [--config FILE] [--name NAME]
                   [--out DIR]   # one real request → fixture set + case file (server/record.py)
    turnout keys create|list|show|update|revoke [--config FILE] [--json] …
    turnout teams create|list|show|update|delete [--config FILE] [--json] …
                   # virtual keys and teams in the config's store (server/keys_cli.py)
    turnout --version                                       # `turnout <version>`

`turnout migrate` opens the configured store, which applies its pending schema migrations (the
same ones `serve` applies at start-up; PostgreSQL under an advisory lock, so replicas starting at
once and a `migrate` run beside them migrate once), prints one line and closes it:
`store postgresql://turnout:***@db:5432/turnout: schema version 2 (applied 1, 2)`.

Exit codes: 0 ok, 1 lint found problems, 2 the config or a mapping is broken (problems printed as
`file:line:col: key: message`, never a traceback).

What `turnout serve` prints, all on stderr and through logging (so through the redaction below):

* config problems found before the server starts (exit 2), e.g. an alias deployment naming a
  provider no mapping defines: `turnout.yaml:5:10: models.claude.deployments[0].model: unknown
  provider 'antropic' in model 'antropic/claude-sonnet-4-5' (did you mean 'anthropic'?)`
  (printed as they are, like every config problem);
* one WARNING per alias deployment whose credentials are missing, naming the variables to set
  (`preflight.missing_credentials`; never a value); the server still starts;
* a WARNING when the open-file limit cannot be raised to what `limits.max_connections` needs,
  and, while the cap refuses connections, one WARNING per 10 s with their count
  (`server/connections.py`);
* the ready line, exactly once, at INFO on logger `turnout`, once the socket listens (from the
  uvicorn server's `startup`, after the listening sockets exist; never before):
  `turnout 0.1.0 ready on http://127.0.0.1:4000 · store sqlite:////srv/turnout.db · 29
  providers, 2 aliases · auth: master key` (a password or secret-named query value in the store
  URL is masked; `--port 0` shows the port the system picked; no master key: `auth: none (no
  master_key set)`);
* with `--access-log` or config `server.access_log: true`, one INFO line per request, logger
  `turnout.access` (`server/access_log.py`): `POST /v1/responses 200 model=claude
  deployment=anthropic/claude-sonnet-4-5 duration_ms=412 response_id=resp_…` (`-` where a field
  is unknown).

`--log-level` (default `info`) is the level of Turnout's own loggers (`turnout.*`); other
libraries (uvicorn, httpx) log at WARNING as before, or less when the level is above it.
`--log-level warning` hides the ready line; the access log, asked for explicitly, shows at any
level.

Logging goes through `RedactingFormatter`: anything that looks like a key (`sk-…`, `Bearer …`,
`x-api-key: …`, values of secret-looking environment variables) is masked. The code already never
logs headers; this is defence in depth for the messages and tracebacks nobody foresaw.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from turnout.engine.errors import ConfigError, MappingError
from turnout.engine.registry import DEFAULT_MAPPINGS_DIR, lint_dir
from turnout.server.keys_cli import add_commands as add_key_commands
from turnout.server.redaction import redact, secret_values

if TYPE_CHECKING:
    from turnout.server.config import Settings

__all__ = [
    "RedactingFormatter",
    "configure_logging",
    "main",
    "mask_store_url",
    "ready_line",
    "redact",
    "version",
]

log = logging.getLogger("turnout")
LOG_LEVELS = ("debug", "info", "warning", "error")


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output (message, arguments, traceback) is passed through
    `redact`, with the secret environment values known when it was built."""

    def __init__(self, fmt: str | None = None, env: Mapping[str, str] | None = None) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._secrets = secret_values(os.environ if env is None else env)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)


def configure_logging(level: int = logging.WARNING, turnout_level: int | None = None) -> None:
    """One redacting stderr handler on the root logger at ``level``; Turnout's own loggers
    (``turnout.*``) at ``turnout_level`` when given (`turnout serve --log-level`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("turnout").setLevel(
        logging.NOTSET if turnout_level is None else turnout_level
    )
    # httpx logs each request at INFO: costly at load and it prints URLs (design §7).
    for name in ("httpx", "httpcore", "httpx_aiohttp"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # uvicorn's loggers go through the root handler (and so the redaction) too.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def _print_problems(exc: ConfigError | MappingError) -> None:
    for problem in exc.problems:
        print(str(problem), file=sys.stderr)


def version() -> str:
    """The installed distribution's version (pyproject.toml)."""
    try:
        return importlib.metadata.version("turnout")
    except importlib.metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "0+unknown"


_USERINFO = re.compile(r"(?<=://)([^/@:?#]*):([^/@?#]*)@")
_SECRET_QUERY = re.compile(r"(?i)([?&][^=&#]*(?:pass|secret|token|key|auth)[^=&#]*=)[^&#]*")


def mask_store_url(url: str) -> str:
    """The store URL as the ready line shows it: a password (`user:***@`) and the values of
    secret-named query parameters masked."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1:***@", url))


def _plural(count: int, word: str, plural: str) -> str:
    return f"{count} {word if count == 1 else plural}"


def ready_line(
    url: str, store: str, providers: int, aliases: int, master_key: bool, state: str | None = None
) -> str:
    shared = f" · state {mask_store_url(state)}" if state else ""
    return (
        f"turnout {version()} ready on {url} · store {mask_store_url(store)}{shared} · "
        f"{_plural(providers, 'provider', 'providers')}, {_plural(aliases, 'alias', 'aliases')}"
        f" · auth: {'master key' if master_key else 'none (no master_key set)'}"
    )


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from turnout.engine.registry import MappingRegistry
    from turnout.server.access_log import AccessLog
    from turnout.server.app import create_app
    from turnout.server.config import load_config
    from turnout.server.http_protocol import MAX_HEAD_BYTES
    from turnout.server.preflight import check_providers, check_store, missing_credentials

    level = getattr(logging, args.log_level.upper())
    # Other libraries: as quiet as before (WARNING), quieter when asked.
    others = max(level, logging.WARNING)
    configure_logging(others, turnout_level=level)
    try:
        settings = load_config(args.config, os.environ)
        registry = MappingRegistry.load(settings.mappings_dir)
        check_providers(settings, registry.providers)
        check_store(settings, mask_store_url(settings.store))
        app = create_app(settings, registry=registry)
    except (ConfigError, MappingError) as exc:
        _print_problems(exc)
        return 2
    for problem in missing_credentials(settings, registry):
        log.warning("%s", problem)
    asgi: Any = app
    if args.access_log or settings.server.access_log:
        # Installed only when asked: off, the request path has no wrapper at all.
        logging.getLogger(AccessLog.LOGGER).setLevel(logging.INFO)
        asgi = AccessLog(app)
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    ready = {
        "store": settings.store,
        "providers": len(registry),
        "aliases": len(settings.models),
        "master_key": bool(settings.master_key),
        "state": settings.state,
    }
    http, ws = _protocols(settings)
    config = uvicorn.Config(
        asgi,
        host=host,
        port=port,
        # uvloop + httptools when present: the measured fast path (design §7).
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=http,
        # WebSocket mode on /v1/responses (server/websocket_mode.py): websockets' sans-I/O
        # protocol, messages up to the body limit of a POST.
        ws=ws,
        ws_max_size=settings.limits.max_body_bytes,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        workers=1,
        timeout_graceful_shutdown=settings.server.shutdown_timeout_s,
        access_log=False,
        log_level=logging.getLevelName(others).lower(),
        log_config=None,  # keep configure_logging's redacting handler
    )
    _settle_heap()
    if args.workers > 1:
        return _serve_workers(args.workers, config, app, ready)
    server = _server(config, app, ready)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn already shut down
        server.run()
    return 0 if server.started else 3


def _serve_workers(workers: int, config: Any, app: Any, ready: Mapping[str, Any]) -> int:
    """N forked workers on one port (server/workers.py); the ready line once all listen."""
    import socket as socket_module

    from turnout.server.workers import Supervisor

    def serve_one(sock: socket_module.socket, listening: Callable[[], None]) -> int:
        server = _server(config, app, None, listening)
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
        return 0 if server.started else 3

    try:
        supervisor = Supervisor(workers, config.host, config.port, serve_one)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        return 1

    def all_ready(port: int) -> None:
        host = f"[{config.host}]" if ":" in config.host else config.host
        url = f"http://{host}:{port}"
        log.info("%s · workers: %d", ready_line(url, **ready), workers)

    return supervisor.run(all_ready)


def _protocols(settings: Settings) -> tuple[Any, Any]:
    """The HTTP and WebSocket protocols: uvicorn's httptools one with the read deadline, the
    connection cap (server/connections.py) and its parser's refusals as OpenAI JSON
    (http_protocol.py), and uvicorn's websockets (sans-I/O) one counted against the same cap.
    Without httptools (a platform uvicorn[standard] has no wheel for) uvicorn's h11 protocol
    serves, refusing in JSON too but without either limit, and says so."""
    limits = settings.limits
    if importlib.util.find_spec("httptools") is None:
        log.warning(
            "httptools is not installed: server.read_timeout_s and limits.max_connections "
            "are not enforced"
        )
        from turnout.server.http_protocol import protocol_class as json_refusals

        # Its own parser refusals still as OpenAI JSON.
        return json_refusals("h11"), "websockets-sansio"
    from turnout.server.connections import (
        ConnectionLimits,
        protocol_class,
        raise_file_limit,
        ws_protocol_class,
    )

    problem = raise_file_limit(limits.max_connections)
    if problem:
        log.warning("%s", problem)
    shared = ConnectionLimits(settings.server.read_timeout_s, limits.max_connections)
    return protocol_class(shared), ws_protocol_class(shared)


def _server(
    config: Any,
    app: Any,
    ready: Mapping[str, Any] | None = None,
    listening: Callable[[], None] | None = None,
) -> Any:
    """uvicorn's Server, saying when it is ready and ending background responses as soon as
    shutdown starts.

    The ready line is logged at the end of `startup`: the app's lifespan has run (store open)
    and the listening sockets exist, so a client that reads it can connect at once.

    uvicorn lets open connections drain (up to `server.shutdown_timeout_s`) before the app's
    own shutdown runs; a client following a background response would wait for work that will
    not finish, then be cut off. Failing the background responses first sends each follower
    its `response.failed` and `[DONE]`, so those connections close at once."""
    import uvicorn

    class GatewayServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:
                if ready is not None:
                    log.info("%s", ready_line(self._url(), **ready))
                if listening is not None:  # a worker tells its supervisor (server/workers.py)
                    listening()

        def _url(self) -> str:
            host, port = self.config.host, self.config.port
            for server in getattr(self, "servers", []):
                for sock in server.sockets or ():
                    address = sock.getsockname()
                    if isinstance(address, tuple):
                        port = address[1]  # the real one, also for --port 0
                        break
            host = f"[{host}]" if ":" in host else host
            return f"{'https' if self.config.ssl else 'http'}://{host}:{port}"

        async def shutdown(self, sockets: Any = None) -> None:
            gateway = getattr(app.state, "gateway", None)
            if gateway is not None:
                await gateway.aclose()
            await super().shutdown(sockets)

    return GatewayServer(config)


def _settle_heap() -> None:
    """Load what every request will need, then move the start-up heap out of the collector's way.

    The compiled mappings, the price data and the libraries are tens of MB of objects that live
    as long as the process; each full collection walked all of them (a 40-60 ms pause, every
    few thousand requests). `gc.freeze()` parks them in a generation the collector never scans
    (measured in-process: the full collections and their pauses are gone, ~20 us per request
    on average). The generation thresholds stay at their defaults: raising the young one made
    each collection scan more live objects and cost more in total."""
    import gc

    from turnout.server.pricing import load_price_data

    load_price_data()
    gc.collect()
    gc.freeze()


def _migrate(args: argparse.Namespace) -> int:
    import asyncio

    from turnout.server.config import load_config
    from turnout.server.stores import open_store

    configure_logging()
    try:
        settings = load_config(args.config, os.environ)
    except ConfigError as exc:
        _print_problems(exc)
        return 2
    shown = mask_store_url(settings.store)

    async def run() -> str:
        store = await open_store(settings.store)  # opening migrates
        version, applied = store.schema_version, store.migrations_applied
        await store.aclose()
        if version is None:
            return "nothing to migrate"
        done = f" (applied {', '.join(map(str, applied))})" if applied else " (up to date)"
        return f"schema version {version}{done}"

    try:
        outcome = asyncio.run(run())
    except Exception as exc:
        # The store's own words (they never hold the URL's password), one line.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"turnout migrate: store {shown}: {reason}", file=sys.stderr)
        return 1
    print(f"store {shown}: {outcome}")
    return 0


def _lint(args: argparse.Namespace) -> int:
    count, problems = lint_dir(args.dir or DEFAULT_MAPPINGS_DIR)
    for problem in problems:
        print(str(problem))
    if problems:
        return 1
    print(f"ok: {count} mappings")
    return 0


def _record(args: argparse.Namespace) -> int:
    import asyncio

    from turnout.engine.errors import RequestError, UpstreamError
    from turnout.server.config import load_config
    from turnout.server.record import record

    configure_logging()
    try:
        settings = load_config(args.config, os.environ)
        result = asyncio.run(
            record(args.model, args.input, settings=settings, stream=args.stream,
                   name=args.name, out_dir=args.out)
        )  # fmt: skip
    except (ConfigError, MappingError) as exc:
        _print_problems(exc)
        return 2
    except (RequestError, UpstreamError) as exc:
        # Nothing was recorded; the message names variables, never values.
        print(f"turnout record: {exc.status} {exc.code or ''}: {exc.message}", file=sys.stderr)
        return 1
    for path in result.files:
        print(path)
    if result.error is not None:
        print(f"recorded an error reply: {result.error.status} {result.error.code}")
    if result.case_failures:
        print("the recorded case does not pass yet:", file=sys.stderr)
        for failure in result.case_failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


# What `turnout serve` reads from the environment (kept in step with server/config.py,
# server/credentials.py and the bundled mappings' `api_key_env`/`credentials`/`settings`:
# tests/test_cli_startup.py checks every name the mappings declare is listed here).
SERVE_ENVIRONMENT = """\
environment variables:
  <PROVIDER>_API_KEY    a provider's API key, PROVIDER being the provider id (the mapping
                        file name) in upper case with non-alphanumerics as `_`:
                        OPENAI_API_KEY, ANTHROPIC_API_KEY, GROQ_API_KEY, TOGETHER_API_KEY, ...
                        (config providers.<id>.api_key or a deployment's api_key wins)
  <PROVIDER>_API_BASE   a provider's base URL (config api_base wins)
  GOOGLE_API_KEY        gemini, after GEMINI_API_KEY
  AZURE_OPENAI_API_KEY  azure, azure_chat, after AZURE_API_KEY (azure_ai: AZURE_API_KEY too)
  AZURE_API_VERSION, AZURE_AI_API_VERSION
                        azure / azure_chat, azure_ai API versions
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
                        bedrock credentials (SigV4)
  AWS_REGION, AWS_DEFAULT_REGION
                        bedrock region (default us-east-1)
  VERTEX_PROJECT, GOOGLE_CLOUD_PROJECT, VERTEX_LOCATION, GOOGLE_CLOUD_LOCATION
                        vertex_ai project and location
  VERTEX_ACCESS_TOKEN   vertex_ai static access token (else an OAuth2 token from google-auth)
  GOOGLE_APPLICATION_CREDENTIALS
                        vertex_ai service-account file for google-auth (else application
                        default credentials)
  ${VAR}                in any string value of the config file reads VAR (an unset VAR stops
                        start-up; $${ is a literal ${), e.g. master_key: "${TURNOUT_MASTER_KEY}"

Values of variables whose names contain KEY, SECRET, TOKEN, PASSWORD or CREDENTIAL are masked in
every log line and upstream error message. `turnout serve` reads no TURNOUT_* variable of its
own: TURNOUT_MASTER_KEY above is just a name a config file chose.
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnout", description="OpenAI Responses API gateway")
    parser.add_argument("--version", action="version", version=f"turnout {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway (OpenAI's Responses API at /v1/responses).",
        epilog=SERVE_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", metavar="FILE", help="YAML config file (default: defaults)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 4000; 0: any free port)")
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="level of Turnout's own log lines (default info: the ready line; other libraries "
        "log warnings and errors)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per request: method, path, status, model, deployment, duration_ms, "
        "response_id (also config server.access_log: true)",
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="worker processes serving the port (default 1; each has its own event loop, store "
        "connection and background leases: README 'Running several replicas')",
    )
    serve.set_defaults(func=_serve)
    migrate = sub.add_parser(
        "migrate",
        help="apply the store's pending schema migrations (serve also does at start-up)",
        description="Open the configured store, apply its pending schema migrations and close "
        "it (PostgreSQL: under an advisory lock, so concurrent starts migrate once).",
    )
    migrate.add_argument("--config", metavar="FILE", help="YAML config file (its store:)")
    migrate.set_defaults(func=_migrate)
    lint = sub.add_parser("lint", help="check mapping files")
    lint.add_argument("dir", nargs="?", help="mappings folder (default: the bundled one)")
    lint.set_defaults(func=_lint)
    rec = sub.add_parser("record", help="record one real provider exchange as fixtures + a case")
    rec.add_argument("--model", required=True, help="provider/model or a config alias")
    rec.add_argument("--input", required=True, metavar="TEXT", help="the user message")
    rec.add_argument("--stream", action="store_true", help="stream the reply")
    rec.add_argument("--config", metavar="FILE", help="YAML config file (keys, api_base)")
    rec.add_argument("--name", help="file name stem (default: <model>_<stream|json>_<time>)")
    rec.add_argument(
        "--out",
        metavar="DIR",
        help="default: <mappings_dir>/cases/<provider>/recorded/ when the mappings folder has a "
        "cases/ folder (a source checkout), else ./recorded/<provider>/",
    )
    rec.set_defaults(func=_record)
    add_key_commands(sub)  # turnout keys …, turnout teams … (server/keys_cli.py)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
