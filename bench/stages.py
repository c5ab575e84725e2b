"""Per-stage CPU cost of one gateway request, in-process and without sockets.

    .venv/bin/python bench/stages.py [--n 2000]

Times each step `server/gateway.py` runs for one create call with the bundled openai and
anthropic mappings and the replies of bench/upstream_sim.py: normalize, resolve, build_request,
parse_response / stream decoding, ResponseBuilder, SSE encoding, the store record encoding and
the SQLite write (synchronous=FULL, as configured), and the whole Litestar app driven over ASGI
with a fake upstream transport (everything but the sockets). Numbers are µs per request, median
of 5 rounds; they add up to roughly the gateway's CPU per request that bench/run.py reports.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from upstream_sim import build_replies  # noqa: E402

from turnout.engine.builder import ResponseBuilder, make_echo  # noqa: E402
from turnout.engine.canonical import normalize  # noqa: E402
from turnout.engine.ids import IdFactory  # noqa: E402
from turnout.engine.registry import MappingRegistry  # noqa: E402
from turnout.server.config import load_config  # noqa: E402
from turnout.server.gateway import Gateway, encode_sse  # noqa: E402
from turnout.server.stores import open_store  # noqa: E402
from turnout.server.stores.sqlite import _row_params  # noqa: E402

__all__ = ["main"]


def timeit(fn: Callable[[], Any], n: int, rounds: int = 5) -> float:
    """Median over rounds of the mean µs per call."""
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        per.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(per)


async def atimeit(fn: Callable[[], Any], n: int, rounds: int = 5) -> float:
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            await fn()
        per.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(per)


def _bodies(replies: dict[tuple[bytes, bool], bytes]) -> dict[tuple[str, bool], bytes]:
    """The simulator's HTTP replies minus the HTTP framing (chunked bodies de-chunked)."""
    out = {}
    for (path, stream), raw in replies.items():
        head, _, body = raw.partition(b"\r\n\r\n")
        if b"chunked" in head:
            data, pos = b"", 0
            while True:
                eol = body.index(b"\r\n", pos)
                size = int(body[pos:eol], 16)
                if size == 0:
                    break
                data += body[eol + 2 : eol + 2 + size]
                pos = eol + 2 + size + 2
            body = data
        out[(("openai" if path == b"/v1/responses" else "anthropic"), stream)] = body
    return out


class FakeTransport(httpx.AsyncBaseTransport):
    """Answers every upstream call with the simulator's bytes, no socket."""

    def __init__(self, bodies: dict[tuple[str, bool], bytes]) -> None:
        self.bodies = bodies

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = request.content
        provider = "openai" if request.url.path.endswith("/responses") else "anthropic"
        stream = b'"stream":true' in body
        ctype = "text/event-stream" if stream else "application/json"
        return httpx.Response(
            200, headers={"content-type": ctype}, content=self.bodies[(provider, stream)]
        )


async def asgi_call(app: Any, body: bytes) -> bytes:
    """One POST /v1/responses through the ASGI app; returns the body bytes."""
    sent = False
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # the client "disconnects" once the reply is complete
        return {"type": "http.disconnect"}

    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                finished.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/responses",
        "raw_path": b"/v1/responses",
        "root_path": "",
        "query_string": b"",
        "server": ("127.0.0.1", 4000),
        "client": ("127.0.0.1", 5555),
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    await app(scope, receive, send)
    return b"".join(chunks)


async def run(n: int) -> list[tuple[str, str, float]]:
    from turnout.server.app import create_app

    rows: list[tuple[str, str, float]] = []
    bodies = _bodies(build_replies())
    tmp = Path(tempfile.mkdtemp(prefix="turnout-stages-"))
    cfg = tmp / "c.yaml"
    cfg.write_text(
        orjson.dumps(
            {
                "store": f"sqlite:///{tmp / 's.db'}",
                "providers": {
                    "openai": {"api_base": "http://up/v1", "api_key": "x"},
                    "anthropic": {"api_base": "http://up", "api_key": "x"},
                },
            }
        ).decode()
    )
    settings = load_config(str(cfg), {})
    registry = MappingRegistry.load(settings.mappings_dir)
    ids = IdFactory()
    store = await open_store(settings.store)
    gw = Gateway(settings, registry, store, upstream=None)  # type: ignore[arg-type]

    for provider, model, q in (
        ("openai", "openai/gpt-4o-mini", "What is the capital of France?"),
        ("anthropic", "anthropic/claude-sonnet-4-5", "What is 1+1? Answer with just the number."),
    ):
        for stream in (False, True):
            label = f"{provider} {'stream' if stream else 'json'}"
            body = {"model": model, "input": q, "stream": stream}
            raw_body = orjson.dumps(body)

            def add(stage: str, us: float, label: str = label) -> None:
                rows.append((label, stage, us))
                print(f"  {label:16s} {stage:52s} {us:9.1f}", file=sys.stderr, flush=True)

            add("orjson.loads(request)", timeit(lambda: orjson.loads(raw_body), n))
            add("normalize", timeit(lambda: normalize(body, []), n))
            canon = normalize(body, [])
            add("resolve (model -> target)", timeit(lambda: gw.resolve(model), n))
            target = gw.resolve(model)
            m = target.mapping

            def build() -> Any:
                return m.build_request(
                    canon,
                    model=target.model,
                    api_base=target.api_base,
                    credentials=target.credentials,
                    settings=target.settings,
                )

            add("mapping.build_request", timeit(build, n))
            upstream = bodies[(provider, stream)]
            if stream:

                def decode() -> list[dict[str, Any]]:
                    dec = m.stream_decoder()
                    return dec.feed(upstream) + dec.close()

                add("stream_decoder feed+close", timeit(decode, n))
                ops = decode()
            else:
                add("mapping.parse_response", timeit(lambda: m.parse_response(upstream), n))
                ops = m.parse_response(upstream)
            add("ids.response()", timeit(ids.response, n))
            add("make_echo", timeit(lambda: make_echo(body), n))

            def build_reply() -> tuple[ResponseBuilder, list[dict[str, Any]]]:
                b = ResponseBuilder(
                    ids.response(),
                    int(time.time()),
                    make_echo(body),
                    m.finish_reasons,
                    canon.model,
                    ids=ids,
                    provider=provider,
                )
                ev = b.start() + b.feed(ops) + b.finish()
                return b, ev

            add("ResponseBuilder start+feed+finish", timeit(build_reply, n))
            b, events = build_reply()
            if stream:
                add("encode_sse (all events)", timeit(lambda: [encode_sse(e) for e in events], n))
            else:
                add("orjson.dumps(response)", timeit(lambda: orjson.dumps(b.response), n))
            rec = _record(b, canon, events, body)
            add("store: _row_params (orjson)", timeit(lambda: _row_params(rec), n))
            add(
                "store: SQLiteStore.put (thread + fsync)",
                await atimeit(lambda: store.put(_record(b, canon, events, body)), max(50, n // 10)),
            )
            add("events kept for store (count)", float(len(events)))

    await _key_stages(gw, store, rows, n)

    # The whole app over ASGI (Litestar + gateway + httpx with a socket-free transport).
    for store_url in (f"sqlite:///{tmp / 'app.db'}", "memory://"):
        settings2 = load_config(str(cfg), {})
        object.__setattr__(settings2, "store", store_url)
        app = create_app(settings2, transport=FakeTransport(bodies))
        async with _lifespan(app):
            for provider, model in (
                ("openai", "openai/gpt-4o-mini"),
                ("anthropic", "anthropic/claude-sonnet-4-5"),
            ):
                for stream in (False, True):
                    label = f"{provider} {'stream' if stream else 'json'}"
                    raw = orjson.dumps({"model": model, "input": "hi", "stream": stream})
                    # Fail loudly (with the traceback) rather than time error replies.
                    await app.state.gateway.create(orjson.loads(raw))
                    await asgi_call(app, raw)
                    kind = store_url.split(":")[0]
                    us = await atimeit(lambda raw=raw: asgi_call(app, raw), max(100, n // 4), 3)
                    rows.append((label, f"WHOLE APP over ASGI, fake upstream, {kind} store", us))
                    print(f"  {label:16s} {rows[-1][1]:52s} {us:9.1f}", file=sys.stderr, flush=True)
    await store.close()
    return rows


async def _key_stages(gw: Gateway, store: Any, rows: list[tuple[str, str, float]], n: int) -> None:
    """What a virtual key adds per request: the authenticator's (cached) lookup, then the
    admission checks and the settle of a key with a budget and rpm/tpm limits; beside them the
    same for the master key (which has none)."""
    from turnout.server.access.auth import Authenticator
    from turnout.server.access.secrets import display_prefix, new_key_id, new_secret, secret_hash
    from turnout.server.pricing import UsageCounts
    from turnout.server.stores.keys import AuditEntry, StoredKey

    secret = new_secret()
    key = StoredKey(
        id=new_key_id(), secret_hash=secret_hash(secret), prefix=display_prefix(secret),
        created_at=int(time.time()), max_budget_usd=1e9, budget_period="30d",
        rpm=1_000_000_000, tpm=1_000_000_000_000,
    )  # fmt: skip
    await store.create_key(key, AuditEntry("bench", "key.create", key.id, None, None, 0))
    master = "sk-bench-master-0123456789abcdef"
    auth = Authenticator(master, store)
    usage = UsageCounts(input_tokens=20, output_tokens=10)
    label = "keys"
    for who, token in (("virtual key", secret), ("master key", master)):
        caller = (await auth.identify(f"Bearer {token}")).caller(None, None)
        await gw.admission.admit(caller, "openai/gpt-4o-mini")  # seeds the budget's period

        async def identify(token: str = token) -> Any:
            return await auth.identify(f"Bearer {token}")

        async def admit(caller: Any = caller) -> None:
            await gw.admission.admit(caller, "openai/gpt-4o-mini")
            gw.admission.settle(caller, 1e-6, usage)

        for stage, fn in (("auth.identify (cached)", identify), ("admission admit+settle", admit)):
            us = await atimeit(fn, n)
            rows.append((label, f"{who}: {stage}", us))
            print(f"  {label:16s} {rows[-1][1]:52s} {us:9.1f}", file=sys.stderr, flush=True)


class _lifespan:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.cm: Any = None

    async def __aenter__(self) -> None:
        self.cm = self.app.lifespan()
        await self.cm.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        await self.cm.__aexit__(*exc)


def _record(
    b: ResponseBuilder, canon: Any, events: list[dict[str, Any]], body: dict[str, Any]
) -> Any:
    from turnout.server.stores.base import StoredResponse

    r = b.response
    return StoredResponse(
        id=str(r["id"]),
        created_at=int(r["created_at"]),
        model=str(r["model"]),
        provider="x",
        status=str(r["status"]),
        response=r,
        input_items=canon.input_items,
        events=events,
        request={k: v for k, v in body.items() if k != "input"},
        previous_response_id=None,
        deployment=None,
        attempts=[{"provider": "x", "model": "m", "status": 200}],
        cost=None,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="per-stage CPU cost of one gateway request")
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args(argv)
    try:
        import uvloop

        rows = uvloop.run(run(args.n))
    except ImportError:
        rows = asyncio.run(run(args.n))
    label = None
    for lab, stage, us in rows:
        if lab != label:
            print(f"\n{lab}")
            label = lab
        unit = "" if stage.endswith("(count)") else " us"
        print(f"  {stage:52s} {us:9.1f}{unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
