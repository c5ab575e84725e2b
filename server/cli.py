"""`turnout serve|lint|record`.

    turnout serve [--config FILE] [--host H] [--port P]   # default 127.0.0.1:4000
    turnout lint [DIR]                                      # default: the bundled mappings/
    turnout record --model PROVIDER/MODEL --input TEXT [--stream] [--config FILE] [--name NAME]
                   [--out DIR]   # one real request → fixture set + case file (server/record.py)

Exit codes: 0 ok, 1 lint found problems, 2 the config or a mapping is broken (problems printed as
`file:line:col: key: message`, never a traceback).

Logging goes through `RedactingFormatter`: anything that looks like a key (`sk-…`, `Bearer …`,
`x-api-key: …`, values of secret-looking environment variables) is masked. The code already never
logs headers; this is defence in depth for the messages and tracebacks nobody foresaw.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from turnout.engine.errors import ConfigError, MappingError
from turnout.engine.registry import DEFAULT_MAPPINGS_DIR, lint_dir
from turnout.server.redaction import redact, secret_values

__all__ = ["RedactingFormatter", "configure_logging", "main", "redact"]


class RedactingFormatter(logging.Formatter):
    """A formatter whose whole output (message, arguments, traceback) is passed through
    `redact`, with the secret environment values known when it was built."""

    def __init__(self, fmt: str | None = None, env: Mapping[str, str] | None = None) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._secrets = secret_values(os.environ if env is None else env)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)


def configure_logging(level: int = logging.WARNING) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
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


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from turnout.server.app import create_app
    from turnout.server.config import load_config

    configure_logging()
    try:
        settings = load_config(args.config, os.environ)
        app = create_app(settings)
    except (ConfigError, MappingError) as exc:
        _print_problems(exc)
        return 2
    host = args.host or settings.server.host
    port = args.port if args.port is not None else settings.server.port
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvloop + httptools when present: the measured fast path (design §7).
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        workers=1,
        timeout_graceful_shutdown=settings.server.shutdown_timeout_s,
        access_log=False,
        log_level="warning",
        log_config=None,  # keep configure_logging's redacting handler
    )
    _settle_heap()
    server = _server(config, app)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn already shut down
        server.run()
    return 0 if server.started else 3


def _server(config: Any, app: Any) -> Any:
    """uvicorn's Server, ending background responses as soon as shutdown starts.

    uvicorn lets open connections drain (up to `server.shutdown_timeout_s`) before the app's
    own shutdown runs; a client following a background response would wait for work that will
    not finish, then be cut off. Failing the background responses first sends each follower
    its `response.failed` and `[DONE]`, so those connections close at once."""
    import uvicorn

    class GatewayServer(uvicorn.Server):
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnout", description="OpenAI Responses API gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", metavar="FILE", help="YAML config file (default: defaults)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 4000)")
    serve.set_defaults(func=_serve)
    lint = sub.add_parser("lint", help="check mapping files")
    lint.add_argument("dir", nargs="?", help="mappings folder (default: the bundled one)")
    lint.set_defaults(func=_lint)
    rec = sub.add_parser("record", help="record one real provider exchange as fixtures + a case")
    rec.add_argument("--model", required=True, help="provider/model or a config alias")
    rec.add_argument("--input", required=True, metavar="TEXT", help="the user message")
    rec.add_argument("--stream", action="store_true", help="stream the reply")
    rec.add_argument("--config", metavar="FILE", help="YAML config file (keys, api_base)")
    rec.add_argument("--name", help="file name stem (default: <model>_<stream|json>_<time>)")
    rec.add_argument("--out", metavar="DIR", help="default: mappings/cases/<provider>/recorded/")
    rec.set_defaults(func=_record)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
