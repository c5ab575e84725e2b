"""Turnout gateway benchmark: added latency, throughput, stream TTFB and peak RSS.

    .venv/bin/python bench/run.py [--quick] [--json out.json] [--store sqlite|memory]
                                  [--profile DIR] [--no-pin]

Three processes: a fast upstream simulator (bench/upstream_sim.py), the gateway started the way
a user starts it (`turnout serve --config ... --port ...`, or
`python -m turnout.server.cli serve` when the console script is not installed), and this
process as the load generator (raw asyncio sockets, HTTP/1.1 keep-alive; no SDK: a client
library would cost more than the gateway).

On a machine with two or more cores the gateway is pinned to core 0 and the simulator plus the
load generator to core 1, so the gateway's numbers are those of one worker on one core.

For each of openai and anthropic, non-stream and stream:
  * latency at concurrency 1, upstream direct vs through the gateway (p50/p99, "added");
  * throughput at concurrency 16 through the gateway (and direct, for reference);
  * stream time to first SSE event through the gateway (p50/p99);
  * gateway CPU time per request (from /proc/<pid>/stat), which bounds req/s on one core;
and at the end the gateway's peak RSS (VmHWM).

`--profile DIR` adds, after the measured run, one py-spy pass per scenario at concurrency 16
(py-spy must be installed in the virtualenv: `.venv/bin/pip install py-spy`) and writes the
collapsed stacks plus a top-functions summary to DIR.

The whole run stops by itself (`--timeout`, default 600 s) and always stops its children.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGET_ADDED_P50_MS = 2.0
TARGET_RPS = 1000.0
TARGET_CHAIN_EXTRA_MS = 5.0  # a request at the chain's last turn vs its first

# The gateway runs with a master key; the "vkey" scenarios call it with a virtual key that has a
# budget and rpm/tpm limits (never reached: every check runs, none refuses), created in the
# SQLite store before the gateway starts.
MASTER_KEY = "sk-bench-master-0123456789abcdef"
_VKEY: list[str] = []  # the virtual key's secret, once created

# -- child processes -----------------------------------------------------------------------------

_children: list[subprocess.Popen[bytes]] = []


def _stop_children() -> None:
    for proc in reversed(_children):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in reversed(_children):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _on_alarm(signum: int, frame: Any) -> None:
    print("\nbench: overall timeout reached, stopping", file=sys.stderr, flush=True)
    _stop_children()
    os._exit(3)


def _pin(cores: set[int] | None) -> Any:
    if cores is None:
        return None
    return lambda: os.sched_setaffinity(0, cores)


def _pin_all_threads(pid: int, cores: set[int]) -> None:
    """sched_setaffinity(pid) pins one thread; pin every thread the process already has."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), cores)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_upstream(cores: set[int] | None) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "upstream_sim.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        preexec_fn=_pin(cores),
    )
    _children.append(proc)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("READY "):
        raise RuntimeError(f"upstream simulator did not start (got {line!r})")
    return proc, int(line.split()[1])


def gateway_command(config: Path, port: int, workers: int = 1) -> tuple[list[str], str]:
    extra = ["--workers", str(workers)] if workers > 1 else []
    script = Path(sys.executable).parent / "turnout"
    if script.exists():
        cmd = [str(script), "serve", "--config", str(config), "--port", str(port)]
        return [*cmd, *extra], "turnout"
    # The console script only exists once the project is pip-installed; this is the same entry.
    cmd = [sys.executable, "-m", "turnout.server.cli", "serve", "--config", str(config)]
    return [*cmd, "--port", str(port), *extra], "python -m turnout.server.cli"


# `--store postgresql`: a schema of its own on the local server, dropped afterwards.
POSTGRES_BASE = "postgresql://postgres@127.0.0.1:5432/postgres"
POSTGRES_SCHEMA = f"turnout_bench_{os.getpid()}"


def store_url_for(tmp: Path, store: str) -> str:
    return {
        "sqlite": f"sqlite:///{tmp / 'bench.db'}",
        "sqlite-normal": f"sqlite:///{tmp / 'bench.db'}?synchronous=normal",
        "memory": "memory://",
        "postgresql": f"{POSTGRES_BASE}?schema={POSTGRES_SCHEMA}",
    }[store]


def drop_postgres_schema() -> None:
    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_BASE)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE")
        finally:
            await conn.close()

    asyncio.run(drop())


def write_config(tmp: Path, upstream_port: int, store: str, state: str | None = None) -> Path:
    store_url = store_url_for(tmp, store)
    config = tmp / "turnout.yaml"
    # JSON is YAML; quoted strings keep the strict loader happy.
    config.write_text(
        json.dumps(
            {
                "store": store_url,
                "providers": {
                    "openai": {"api_base": f"http://127.0.0.1:{upstream_port}/v1", "api_key": "x"},
                    "anthropic": {"api_base": f"http://127.0.0.1:{upstream_port}", "api_key": "x"},
                },
                "auth": {"master_key": MASTER_KEY},
                # `--state redis://…`: the vkey scenarios' limits and budget live in Redis.
                **({"state": state} if state else {}),
            },
            indent=2,
        )
    )
    return config


def create_virtual_key(store_url: str) -> str:
    """A virtual key with a budget and rpm/tpm limits in the store at `store_url` (the way
    tests/keys.py writes one), before the gateway opens it; its secret."""
    from turnout.server.access.secrets import display_prefix, new_key_id, new_secret, secret_hash
    from turnout.server.stores import create_store
    from turnout.server.stores.keys import AuditEntry, KeyStore, StoredKey, public_key

    secret = new_secret()
    key = StoredKey(
        id=new_key_id(),
        secret_hash=secret_hash(secret),
        prefix=display_prefix(secret),
        created_at=int(time.time()),
        name="bench",
        max_budget_usd=1e9,
        budget_period="30d",
        rpm=1_000_000_000,
        tpm=1_000_000_000_000,
    )

    async def write() -> None:
        store = create_store(store_url)
        await store.open()
        try:
            assert isinstance(store, KeyStore)
            audit = AuditEntry("bench", "key.create", key.id, None, public_key(key), key.created_at)
            await store.create_key(key, audit)
        finally:
            await store.aclose()

    asyncio.run(write())
    return secret


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def start_gateway(
    config: Path, port: int, cores: set[int] | None, log_path: Path, workers: int = 1
) -> tuple[subprocess.Popen[bytes], str, float]:
    cmd, how = gateway_command(config, port, workers)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None) if how == "turnout" else None
    log = log_path.open("wb")
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_pin(cores)
    )
    _children.append(proc)
    deadline = started + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"gateway exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        try:
            status, _ = http_get(port, "/health", timeout=1.0)
            # With several workers, the supervisor logs the ready line once all of them listen.
            if status == 200 and (workers == 1 or b"ready on" in log_path.read_bytes()):
                return proc, how, time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"gateway not healthy after 60 s:\n{log_path.read_text()[-3000:]}")


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """The process's CPU time, its live children's (`--workers N`) included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    # utime, stime are fields 14, 15 (1-based); after the ')' they are at 11, 12 (0-based).
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    return total + sum(cpu_seconds(child) for child in children)


# -- load generator ------------------------------------------------------------------------------


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time; times taken in callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future[tuple[int, float, float, bytes]] | None = None
        self.hdr_end = -1
        self.pos = 0
        self.length: int | None = None
        self.status = 0
        self.t_first = 0.0
        self.keep_body = False
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError("connection closed mid-reply"))

    def request(
        self, raw: bytes, keep_body: bool = False
    ) -> asyncio.Future[tuple[int, float, float, bytes]]:
        self.buf = bytearray()
        self.hdr_end = -1
        self.length = None
        self.t_first = 0.0
        self.keep_body = keep_body
        self.chunks = []
        self.fut = self.loop.create_future()
        assert self.transport is not None
        self.transport.write(raw)
        return self.fut

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.hdr_end < 0:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(buf[:i]).lower()
            self.status = int(head[9:12])
            self.hdr_end = self.pos = i + 4
            j = head.find(b"\r\ncontent-length:")
            if j >= 0:
                self.length = int(head[j + 17 : head.find(b"\r\n", j + 2) % (len(head) + 1)])
            elif b"transfer-encoding: chunked" not in head:
                self.length = 0
        if not self.t_first and buf.find(b"\n\n", self.hdr_end) >= 0:
            self.t_first = time.perf_counter()
        if self.length is not None:
            if len(buf) - self.hdr_end < self.length:
                return
            body = bytes(buf[self.hdr_end :]) if self.keep_body else b""
        else:
            while True:
                eol = buf.find(b"\r\n", self.pos)
                if eol < 0:
                    return
                size = int(bytes(buf[self.pos : eol]).split(b";", 1)[0], 16)
                if size == 0:
                    if len(buf) < eol + 4:
                        return
                    break
                end = eol + 2 + size + 2
                if len(buf) < end:
                    return
                if self.keep_body:
                    self.chunks.append(bytes(buf[eol + 2 : eol + 2 + size]))
                self.pos = end
            body = b"".join(self.chunks)
        t_end = time.perf_counter()
        fut, self.fut = self.fut, None
        if fut is not None and not fut.done():
            fut.set_result((self.status, self.t_first or t_end, t_end, body))


async def connect(port: int) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Conn(loop), "127.0.0.1", port)
    return conn


def http_post(path: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    payload = orjson.dumps(body)
    lines = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


@dataclass
class Scenario:
    name: str  # openai / anthropic
    stream: bool
    direct: bytes  # raw request to the simulator
    gateway: bytes  # raw request to the gateway
    expect_text: str
    vkey: bool = False  # through a virtual key with a budget and limits, not the master key

    @property
    def label(self) -> str:
        return f"{self.name} {'stream' if self.stream else 'json'}{' vkey' if self.vkey else ''}"


_ONLY: list[str] = []


def scenarios() -> list[Scenario]:
    every = _scenarios()
    return [s for s in every if any(o in s.label for o in _ONLY)] if _ONLY else every


def _scenarios() -> list[Scenario]:
    out: list[Scenario] = []
    for stream in (False, True):
        q = "What is the capital of France?"
        direct = http_post(
            "/v1/responses",
            {"model": "gpt-4o-mini", "input": q, "store": False, "stream": stream},
            {"authorization": "Bearer x"},
        )
        body = {"model": "openai/gpt-4o-mini", "input": q, "stream": stream}
        for secret in [MASTER_KEY, *_VKEY]:
            through = http_post("/v1/responses", body, {"authorization": f"Bearer {secret}"})
            expect = "The capital of France is Paris."
            vkey = secret != MASTER_KEY
            out.append(Scenario("openai", stream, direct, through, expect, vkey=vkey))
    for stream in (False, True):
        q = "What is 1+1? Answer with just the number."
        native = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": [{"type": "text", "text": q}]}],
        }
        if stream:
            native["stream"] = True
        out.append(
            Scenario(
                "anthropic",
                stream,
                http_post(
                    "/v1/messages", native, {"x-api-key": "x", "anthropic-version": "2023-06-01"}
                ),
                http_post(
                    "/v1/responses",
                    {"model": "anthropic/claude-sonnet-4-5", "input": q, "stream": stream},
                    {"authorization": f"Bearer {MASTER_KEY}"},
                ),
                "2",
            )
        )
    return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


async def check_gateway(port: int, sc: Scenario) -> None:
    """One request with the reply read in full: the bench only counts if the gateway works."""
    conn = await connect(port)
    try:
        status, _, _, body = await conn.request(sc.gateway, keep_body=True)
    finally:
        assert conn.transport is not None
        conn.transport.close()
    problem = None
    if status != 200:
        problem = f"HTTP {status}"
    elif sc.stream:
        if b"event: response.completed" not in body or not body.endswith(b"data: [DONE]\n\n"):
            problem = "stream lacks response.completed or [DONE]"
        elif orjson.dumps(sc.expect_text)[1:-1] not in body:
            problem = "stream lacks the expected text"
    else:
        doc = orjson.loads(body)
        texts = [
            c.get("text")
            for item in doc.get("output", [])
            for c in item.get("content", []) or []
            if isinstance(c, dict)
        ]
        if doc.get("status") != "completed" or sc.expect_text not in texts:
            problem = f"status={doc.get('status')} texts={texts}"
    if problem:
        raise RuntimeError(
            f"gateway sanity check failed for {sc.label}: {problem}\n{body[:2000]!r}"
        )


async def latency_c1(port: int, raw: bytes, n: int, warmup: int) -> tuple[list[float], list[float]]:
    """(total latencies, first-event latencies) in ms, sequential on one connection."""
    conn = await connect(port)
    totals: list[float] = []
    firsts: list[float] = []
    try:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            status, t_first, t_end, _ = await conn.request(raw)
            if status != 200:
                raise RuntimeError(f"HTTP {status} during the latency run")
            if i >= warmup:
                totals.append((t_end - t0) * 1000)
                firsts.append((t_first - t0) * 1000)
    finally:
        assert conn.transport is not None
        conn.transport.close()
    return totals, firsts


async def throughput(
    port: int, raw: bytes, concurrency: int, duration: float, warmup: float, pid: int | None
) -> dict[str, Any]:
    conns = [await connect(port) for _ in range(concurrency)]
    latencies: list[float] = []
    firsts: list[float] = []
    errors = 0
    measuring = False
    done = 0

    async def worker(conn: Conn, until: float) -> None:
        nonlocal errors, done
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            status, t_first, t_end, _ = await conn.request(raw)
            if not measuring:
                continue
            done += 1
            if status != 200:
                errors += 1
            latencies.append((t_end - t0) * 1000)
            firsts.append((t_first - t0) * 1000)

    try:
        if warmup > 0:
            await asyncio.gather(*(worker(c, time.perf_counter() + warmup) for c in conns))
        measuring = True
        cpu0 = cpu_seconds(pid) if pid else 0.0
        start = time.perf_counter()
        await asyncio.gather(*(worker(c, start + duration) for c in conns))
        elapsed = time.perf_counter() - start
        cpu = (cpu_seconds(pid) - cpu0) if pid else 0.0
    finally:
        for c in conns:
            assert c.transport is not None
            c.transport.close()
    return {
        "requests": done,
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": done / elapsed,
        "p50_ms": pct(latencies, 50),
        "p99_ms": pct(latencies, 99),
        "first_event_p50_ms": pct(firsts, 50),
        "first_event_p99_ms": pct(firsts, 99),
        "cpu_s": cpu,
        "cpu_util": cpu / elapsed if elapsed else 0.0,
        "cpu_us_per_req": cpu / done * 1e6 if done else float("nan"),
    }


@dataclass
class Result:
    scenario: str
    n: int
    direct_p50_ms: float = 0.0
    direct_p99_ms: float = 0.0
    gateway_p50_ms: float = 0.0
    gateway_p99_ms: float = 0.0
    added_p50_ms: float = 0.0
    added_p99_ms: float = 0.0
    direct_first_p50_ms: float | None = None
    direct_first_p99_ms: float | None = None
    gateway_first_p50_ms: float | None = None
    gateway_first_p99_ms: float | None = None
    gateway_c16: dict[str, Any] = field(default_factory=dict)
    direct_c16: dict[str, Any] = field(default_factory=dict)


async def measure(
    args: argparse.Namespace, up_port: int, gw_port: int, gw_pid: int
) -> list[Result]:
    results: list[Result] = []
    for sc in scenarios():
        await check_gateway(gw_port, sc)
        r = Result(sc.label, args.n)
        d_tot, d_first = await latency_c1(up_port, sc.direct, args.n, args.warmup)
        g_tot, g_first = await latency_c1(gw_port, sc.gateway, args.n, args.warmup)
        r.direct_p50_ms, r.direct_p99_ms = pct(d_tot, 50), pct(d_tot, 99)
        r.gateway_p50_ms, r.gateway_p99_ms = pct(g_tot, 50), pct(g_tot, 99)
        r.added_p50_ms = r.gateway_p50_ms - r.direct_p50_ms
        r.added_p99_ms = r.gateway_p99_ms - r.direct_p99_ms
        if sc.stream:
            r.direct_first_p50_ms, r.direct_first_p99_ms = pct(d_first, 50), pct(d_first, 99)
            r.gateway_first_p50_ms, r.gateway_first_p99_ms = pct(g_first, 50), pct(g_first, 99)
        c, dur, wu = args.concurrency, args.duration, args.tp_warmup
        r.gateway_c16 = await throughput(gw_port, sc.gateway, c, dur, wu, gw_pid)
        r.direct_c16 = await throughput(up_port, sc.direct, c, min(dur, 2.0), 0.2, None)
        results.append(r)
        g = r.gateway_c16
        print(
            f"  {sc.label:18s} added p50 {r.added_p50_ms:6.3f} ms  gw {g['rps']:7.0f} req/s  "
            f"cpu {g['cpu_us_per_req']:6.0f} us/req",
            flush=True,
        )
    return results


# -- long previous_response_id chain ----------------------------------------------------------

# ~150 tokens of new user input per turn (about 600 characters of English).
_CHAIN_TEXT = (
    "Here is the next step of the task we are working through together. Please read the notes "
    "below, keep the earlier context in mind, and answer briefly. The notes: the build failed "
    "on the integration runner after the dependency upgrade, the unit tests pass locally, the "
    "failing job prints a timeout while fetching the fixtures, and retrying once made it pass. "
    "What should we check first, and what would you change in the pipeline so that a slow "
    "fixture server does not fail the whole build? Keep the answer to two sentences. "
)


def task_cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` in ns (/proc/<pid>/task/*/schedstat, field 1): far
    finer than /proc/<pid>/stat's clock ticks, so a few requests are enough to measure."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between listdir and open
    return total


def chain_request(prev: str | None, turn: int) -> bytes:
    body: dict[str, Any] = {"model": "openai/gpt-4o-mini", "input": f"[{turn}] {_CHAIN_TEXT}"}
    if prev is not None:
        body["previous_response_id"] = prev
    return http_post("/v1/responses", body, {"authorization": f"Bearer {MASTER_KEY}"})


async def chain_bench(
    gw_port: int, gw_pid: int, turns: int, at: tuple[int, ...], samples: int
) -> dict[str, Any]:
    """A `previous_response_id` chain grown turn by turn to `turns` on one connection; at each
    turn in `at`, `samples` more requests at that depth (each continuing the same parent, a
    branch: every one is a request at that turn) measured for wall time (p50) and the gateway's
    CPU per request (all its threads, from schedstat)."""
    conn = await connect(gw_port)
    prev: str | None = None
    per_turn: dict[int, dict[str, Any]] = {}
    grow_ms: list[float] = []
    try:
        for turn in range(1, turns + 1):
            if turn in at:
                raw = chain_request(prev, turn)
                walls: list[float] = []
                for _ in range(3):  # warm-up (connection, caches of the parent)
                    await conn.request(raw)
                cpu0 = task_cpu_ns(gw_pid)
                for _ in range(samples):
                    t0 = time.perf_counter()
                    status, _, t_end, _ = await conn.request(raw)
                    if status != 200:
                        raise RuntimeError(f"chain turn {turn}: HTTP {status}")
                    walls.append((t_end - t0) * 1000)
                cpu_us = (task_cpu_ns(gw_pid) - cpu0) / samples / 1000
                per_turn[turn] = {
                    "wall_p50_ms": pct(walls, 50),
                    "wall_min_ms": min(walls),
                    "cpu_us_per_req": cpu_us,
                }
                print(
                    f"  chain turn {turn:4d}: wall p50 {pct(walls, 50):7.2f} ms  "
                    f"cpu {cpu_us:7.0f} us/req",
                    flush=True,
                )
            t0 = time.perf_counter()
            status, _, t_end, body = await conn.request(chain_request(prev, turn), keep_body=True)
            grow_ms.append((t_end - t0) * 1000)
            if status != 200:
                raise RuntimeError(f"chain turn {turn}: HTTP {status}: {body[:500]!r}")
            prev = orjson.loads(body)["id"]
    finally:
        assert conn.transport is not None
        conn.transport.close()
    return {"turns": turns, "samples": samples, "at": per_turn, "grow_ms": grow_ms}


def chain_report(chain: dict[str, Any]) -> str:
    out = [
        f"chain: one previous_response_id chain grown to {chain['turns']} turns (openai json, "
        f"~150 tokens of new input per turn); at each turn below {chain['samples']} requests "
        "at that depth",
        f"{'turn':>6s} | {'wall p50 ms':>11s} | {'wall min ms':>11s} | {'gw CPU us/req':>13s}",
    ]
    for turn, r in sorted(chain["at"].items()):
        out.append(
            f"{turn:6d} | {r['wall_p50_ms']:11.2f} | {r['wall_min_ms']:11.2f} | "
            f"{r['cpu_us_per_req']:13.0f}"
        )
    first, last = min(chain["at"]), max(chain["at"])
    if first != last:
        extra = chain["at"][last]["wall_p50_ms"] - chain["at"][first]["wall_p50_ms"]
        ok = extra <= TARGET_CHAIN_EXTRA_MS
        out.append(
            f"turn {last} vs turn {first}: {extra:+.2f} ms wall p50 "
            f"(<= {TARGET_CHAIN_EXTRA_MS} ms: {'PASS' if ok else 'MISS'}), CPU "
            f"{chain['at'][last]['cpu_us_per_req'] - chain['at'][first]['cpu_us_per_req']:+.0f} "
            "us/req"
        )
    return "\n".join(out)


# -- profiling -----------------------------------------------------------------------------------


def summarize_collapsed(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed ('raw') output."""
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if f]
        if (frames and frames[0].startswith("process ")) or (
            frames and frames[0].startswith("thread ")
        ):
            frames = frames[1:]
        if not frames:
            continue
        total += count
        self_c[_short(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            incl_c[name] += count
    lines = [f"{total} samples", "", "self %  function"]
    lines += [f"{100 * c / total:6.1f}  {name}" for name, c in self_c.most_common(top)]
    lines += ["", "incl %  function"]
    lines += [f"{100 * c / total:6.1f}  {name}" for name, c in incl_c.most_common(top * 2)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # py-spy raw frames: "func (path/to/file.py:line)" → "func (file.py)" with the package dir.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file})"


async def profile(
    args: argparse.Namespace, gw_port: int, gw_pid: int, out: Path, cores: set[int] | None
) -> dict[str, str]:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("profile: py-spy not found; `.venv/bin/pip install py-spy`", file=sys.stderr)
        return {}
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, str] = {}
    for sc in scenarios():
        stem = sc.label.replace(" ", "_")
        raw = out / f"{stem}.collapsed"
        secs = max(2, int(args.duration))
        # --gil: only samples where a thread holds the GIL, i.e. Python CPU, not waits (an
        # fsync on the SQLite worker would otherwise look like work).
        cmd = [
            spy,
            "record",
            "-p",
            str(gw_pid),
            "-d",
            str(secs),
            "-r",
            str(args.profile_rate),
            "-f",
            "raw",
            "-o",
            str(raw),
            "--nonblocking",
        ]
        if args.profile_mode == "gil":
            cmd.append("--gil")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_pin(cores)
        )
        _children.append(proc)
        await asyncio.sleep(0.3)
        await throughput(gw_port, sc.gateway, args.concurrency, secs + 0.7, 0.0, gw_pid)
        _, err = await asyncio.to_thread(proc.communicate)
        if not raw.exists():
            print(f"profile {sc.label}: py-spy wrote nothing: {err.decode()[-500:]}")
            continue
        summary = summarize_collapsed(raw)
        (out / f"{stem}.top.txt").write_text(summary + "\n")
        summaries[sc.label] = summary
        print(f"profile {sc.label}: {out / (stem + '.top.txt')}")
    return summaries


# -- report --------------------------------------------------------------------------------------


def _f(v: float | None, w: int = 6, d: int = 2) -> str:
    return " " * (w - 1) + "-" if v is None else f"{v:{w}.{d}f}"


def report(results: list[Result], meta: dict[str, Any]) -> str:
    out = []
    out.append(
        f"Turnout bench  ({meta['when']}, {meta['cpus']} cpus, {meta['pinning']}, "
        f"{meta.get('workers', 1)} worker(s), store {meta['store']}, "
        f"gateway via `{meta['gateway_cmd']}`)"
    )
    out.append(
        f"latency: {meta['n']} sequential requests at concurrency 1 "
        f"after {meta['warmup']} warm-up; "
        f"throughput: {meta['concurrency']} connections for {meta['duration']} s "
        f"(direct: 2 s; the simulator shares its core with the load generator)"
    )
    out.append("")
    hdr = (
        f"{'scenario':18s} | {'direct p50/p99 ms':>17s} | {'gateway p50/p99 ms':>18s} | "
        f"{'added p50/p99 ms':>16s} | {'TTFB gw p50/p99':>15s} | {'gw req/s c16':>12s} | "
        f"{'gw p50/p99 @c16':>15s} | {'gw CPU us/req':>13s} | {'direct req/s':>12s}"
    )
    out.append(hdr)
    out.append("-" * len(hdr))
    for r in results:
        g, d = r.gateway_c16, r.direct_c16
        ttfb = (
            f"{_f(r.gateway_first_p50_ms, 6)}/{_f(r.gateway_first_p99_ms, 6)}"
            if r.gateway_first_p50_ms is not None
            else f"{'-':>15s}"
        )
        out.append(
            f"{r.scenario:18s} | {_f(r.direct_p50_ms, 7, 3)}/{_f(r.direct_p99_ms, 7, 3)}   | "
            f"{_f(r.gateway_p50_ms, 7, 3)}/{_f(r.gateway_p99_ms, 7, 3)}    | "
            f"{_f(r.added_p50_ms, 7, 3)}/{_f(r.added_p99_ms, 7, 3)}  | {ttfb:>15s} | "
            f"{g['rps']:12.0f} | {_f(g['p50_ms'], 6)}/{_f(g['p99_ms'], 7)} | "
            f"{g['cpu_us_per_req']:13.0f} | {d['rps']:12.0f}"
        )
    out.append("")
    for r in results:
        if r.direct_first_p50_ms is not None:
            out.append(
                f"{r.scenario}: direct first event p50/p99 {r.direct_first_p50_ms:.3f}/"
                f"{r.direct_first_p99_ms:.3f} ms; gateway {r.gateway_first_p50_ms:.3f}/"
                f"{r.gateway_first_p99_ms:.3f} ms"
            )
    by_label = {r.scenario: r for r in results}
    for r in results:
        base = by_label.get(r.scenario.removesuffix(" vkey"))
        if r.scenario.endswith(" vkey") and base is not None:
            out.append(
                f"{r.scenario}: virtual key (budget, rpm, tpm) vs master key: added p50 "
                f"{r.added_p50_ms - base.added_p50_ms:+.3f} ms, CPU "
                f"{r.gateway_c16['cpu_us_per_req'] - base.gateway_c16['cpu_us_per_req']:+.0f} "
                f"us/req, req/s {r.gateway_c16['rps'] - base.gateway_c16['rps']:+.0f}"
            )
    errs = {r.scenario: r.gateway_c16["errors"] for r in results if r.gateway_c16["errors"]}
    if errs:
        out.append(f"NON-200 replies during throughput: {errs}")
    out.append(
        f"gateway RSS: after start {meta['rss_start_kib'] / 1024:.1f} MiB, at end "
        f"{meta['rss_end_kib'] / 1024:.1f} MiB, peak (VmHWM) {meta['peak_rss_kib'] / 1024:.1f} MiB;"
        f" start-up {meta['startup_s']:.2f} s; store file {meta['db_mib']:.1f} MiB"
    )
    out.append("")
    out.append("targets:")
    for r in results:
        if " json" in r.scenario:
            ok1 = r.added_p50_ms < TARGET_ADDED_P50_MS
            ok2 = r.gateway_c16["rps"] >= TARGET_RPS
            out.append(
                f"  {r.scenario:18s} added p50 {r.added_p50_ms:.3f} ms < {TARGET_ADDED_P50_MS} ms: "
                f"{'PASS' if ok1 else 'MISS'};  {r.gateway_c16['rps']:.0f} req/s >= "
                f"{TARGET_RPS:.0f}: {'PASS' if ok2 else 'MISS'}"
            )
        else:
            ok1 = r.added_p50_ms < TARGET_ADDED_P50_MS
            out.append(
                f"  {r.scenario:18s} added p50 {r.added_p50_ms:.3f} ms < {TARGET_ADDED_P50_MS} ms: "
                f"{'PASS' if ok1 else 'MISS'}  (no req/s target for streams)"
            )
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------------


def _bench_state(url: str | None) -> str | None:
    """The state URL with this run's own key prefix (unless it names one)."""
    if not url or "prefix=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}prefix=turnout-bench:{os.getpid()}:"


def _drop_state(url: str | None) -> None:
    """Delete what the run left in Redis (its prefix's keys)."""
    if not url:
        return
    import redis

    from turnout.server.state import parse_state_url

    parsed = parse_state_url(url)
    client = redis.Redis.from_url(parsed.url)
    try:
        keys = list(client.scan_iter(match=f"{parsed.prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Turnout gateway benchmark")
    p.add_argument("--quick", action="store_true", help="fewer requests, shorter runs (~30 s)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument(
        "--store",
        choices=["sqlite", "sqlite-normal", "memory", "postgresql"],
        default="sqlite",
        help="gateway store (default sqlite, the embedded default, fsync per commit; "
        "sqlite-normal: WAL without fsync per commit; postgresql: the local server, "
        "a schema of its own dropped afterwards)",
    )
    p.add_argument(
        "--state",
        metavar="URL",
        help="shared state (redis://host:6379/0): the gateway keeps rate limits, budgets and "
        "cooldowns there; its keys get a prefix of their own, deleted afterwards",
    )
    p.add_argument("--n", type=int, help="requests per latency run (default 1000, quick 300)")
    p.add_argument("--duration", type=float, help="seconds per throughput run (5, quick 2)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument(
        "--workers", type=int, default=1, help="turnout serve --workers N (N > 1: unpinned)"
    )
    p.add_argument("--profile", metavar="DIR", help="py-spy the gateway per scenario into DIR")
    p.add_argument(
        "--profile-mode",
        choices=["gil", "nonidle"],
        default="gil",
        help="py-spy: GIL holders only (CPU, default) or every non-idle thread",
    )
    p.add_argument("--profile-rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument(
        "--only",
        metavar="TEXT",
        action="append",
        default=[],
        help="run only scenarios whose label contains TEXT ('openai json'), repeatable",
    )
    p.add_argument(
        "--scenario",
        choices=["all", "standard", "chain"],
        default="all",
        help="standard: openai/anthropic json/stream; chain: a long previous_response_id "
        "chain (per-request cost at turns 1/10/100/200/400); all: both (default)",
    )
    p.add_argument("--chain-turns", type=int, default=400, help="length of the chain (400)")
    p.add_argument(
        "--chain-samples", type=int, help="requests measured per chain depth (50, quick 20)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--timeout", type=float, default=600, help="hard stop after this many seconds")
    args = p.parse_args(argv)
    if args.n is None:
        args.n = 300 if args.quick else 1000
    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    args.warmup = 50 if args.quick else 200
    if args.chain_samples is None:
        args.chain_samples = 20 if args.quick else 50
    args.tp_warmup = 0.3 if args.quick else 0.5
    return args


async def _main_async(
    args: argparse.Namespace, up_port: int, gw_port: int, gw_pid: int, cores_load: set[int] | None
) -> tuple[list[Result], dict[str, str], dict[str, Any] | None]:
    results: list[Result] = []
    if args.scenario in ("all", "standard"):
        results = await measure(args, up_port, gw_port, gw_pid)
    chain = None
    if args.scenario in ("all", "chain"):
        depths = (1, 10, 100, 200, 400)
        at = (*(t for t in depths if t < args.chain_turns), args.chain_turns)
        chain = await chain_bench(gw_port, gw_pid, args.chain_turns, at, args.chain_samples)
    summaries: dict[str, str] = {}
    if args.profile:
        summaries = await profile(args, gw_port, gw_pid, Path(args.profile), cores_load)
    return results, summaries, chain


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _ONLY[:] = args.only
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(args.timeout))
    cpus = len(os.sched_getaffinity(0))
    pin = not args.no_pin and cpus >= 2
    ordered = sorted(os.sched_getaffinity(0))
    # Several workers share the machine's cores (pinning them to one would serialise them).
    cores_gw = {ordered[0]} if pin and args.workers == 1 else None
    cores_load = {ordered[1]} if pin else None
    if cores_load:
        os.sched_setaffinity(0, cores_load)
    pinning = (
        f"gateway on core {ordered[0]}, upstream+load on core {ordered[1]}" if pin else "unpinned"
    )
    if pin and args.workers > 1:
        pinning = f"{args.workers} gateway workers unpinned, upstream+load on core {ordered[1]}"
    tmp = Path(tempfile.mkdtemp(prefix="turnout-bench-"))
    try:
        _up_proc, up_port = start_upstream(cores_load)
        state = _bench_state(args.state)
        config = write_config(tmp, up_port, args.store, state)
        if args.store != "memory":  # a memory store starts empty: no virtual key to call with
            _VKEY[:] = [create_virtual_key(store_url_for(tmp, args.store))]
        gw_port = free_port()
        gw, how, startup = start_gateway(
            config, gw_port, cores_gw, tmp / "gateway.log", args.workers
        )
        if cores_gw:
            _pin_all_threads(gw.pid, cores_gw)
        rss_start = proc_status(gw.pid)["VmRSS"]
        print(
            f"bench: upstream :{up_port}, gateway :{gw_port} (pid {gw.pid}, {pinning})", flush=True
        )
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        results, summaries, chain = runner(_main_async(args, up_port, gw_port, gw.pid, cores_load))
        status = proc_status(gw.pid)
        db = tmp / "bench.db"
        db_bytes = sum(p.stat().st_size for p in tmp.glob("bench.db*")) if db.exists() else 0
        meta = {
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpus": cpus,
            "pinning": pinning,
            "workers": args.workers,
            "store": args.store + (" + state redis" if args.state else ""),
            "gateway_cmd": how,
            "n": args.n,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "duration": args.duration,
            "rss_start_kib": rss_start,
            "rss_end_kib": status["VmRSS"],
            "peak_rss_kib": status["VmHWM"],
            "startup_s": startup,
            "db_mib": db_bytes / 2**20,
            "python": sys.version.split()[0],
        }
        text = report(results, meta) if results else ""
        if chain is not None:
            text += ("\n\n" if text else "") + chain_report(chain)
        print()
        print(text)
        for label, summary in summaries.items():
            print(f"\n== profile: {label} (top self) ==")
            print("\n".join(summary.splitlines()[:18]))
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        "meta": meta,
                        "results": [asdict(r) for r in results],
                        "chain": chain,
                        "targets": {"added_p50_ms": TARGET_ADDED_P50_MS, "rps": TARGET_RPS},
                    },
                    indent=2,
                )
            )
        log_tail = (tmp / "gateway.log").read_text()[-2000:]
        if log_tail.strip():
            print(f"\ngateway log (tail):\n{log_tail}")
        return 0
    finally:
        _stop_children()
        _drop_state(_bench_state(args.state))
        if args.store == "postgresql":
            drop_postgres_schema()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
