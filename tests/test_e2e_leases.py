"""Background responses owned by leases, and `turnout serve --workers N`, end to end: several
`turnout serve` processes on one SQLite file (and one PostgreSQL schema) → simulators.

A second process starting beside a running background response does not fail it; a process
killed with `kill -9` has its background responses failed by another one within the lease and a
few seconds, saying why; cancel and `GET ?stream=true` work from a process that does not run
the response; `--workers 2` answers from two processes, with no completed response lost.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from tests import postgres
from tests.conftest import Gateway, gateway_env, start_gateway, stop_gateway
from tests.simulators import Hang, Simulator, Slow
from turnout.server.stores import PostgresStore

MODEL = "anthropic/claude-sonnet-4-5"
LEASE_S = 3
TERMINAL = {"completed", "failed", "incomplete", "cancelled"}


def _config(folder: Path, store: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "turnout.yaml"
    config.write_text(f"store: {store}\nbackground: {{lease_s: {LEASE_S}}}\n")
    return config


def _start(folder: Path, store: str, sim: Simulator, name: str, *args: str) -> Gateway:
    return start_gateway(
        _config(folder, store), gateway_env(sim), folder / f"{name}.log", args=tuple(args)
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, sim: Simulator
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two processes on one SQLite file, or on one PostgreSQL schema."""
    if request.param == "sqlite":
        store = f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        store = postgres.schema_url(f"l_{uuid.uuid4().hex[:8]}")
    try:
        a = _start(tmp_path, store, sim, "a")
        try:
            b = _start(tmp_path, store, sim, "b")
        except BaseException:
            stop_gateway(a)
            raise
        yield a, b
        for gw in (a, b):
            if gw.process.poll() is None:
                stop_gateway(gw)
    finally:
        if request.param == "postgresql":
            postgres.run_sync(PostgresStore.drop_scratch(store))


def _status(gw: Gateway, response_id: str) -> dict[str, Any]:
    reply = httpx.get(f"{gw.url}/v1/responses/{response_id}", timeout=10)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _wait(gw: Gateway, response_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = _status(gw, response_id)
        if body["status"] in TERMINAL or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def _background(gw: Gateway, text: str = "Say hi to Ada") -> str:
    reply = httpx.post(
        f"{gw.url}/v1/responses",
        json={"model": MODEL, "input": text, "background": True},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def test_a_process_starting_beside_a_running_response_does_not_fail_it(
    tmp_path: Path, sim: Simulator
) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    a = _start(tmp_path, store, sim, "a")
    try:
        sim.script("anthropic", Slow(3 * LEASE_S))  # outlives leases: renewals keep it
        rid = _background(a)
        b = _start(tmp_path, store, sim, "b")  # its start-up recovery runs now
        try:
            assert _status(b, rid)["status"] in ("queued", "in_progress")
            done = _wait(a, rid, 20)
            assert done["status"] == "completed", done.get("error")
            assert done["output"][0]["content"][0]["text"] == "Say hi to Ada"
            again = _status(b, rid)  # and B's periodic sweeps left it alone too
            assert again["status"] == "completed" and again["output"] == done["output"]
            assert "lease expired" not in b.logs()
        finally:
            stop_gateway(b)
    finally:
        stop_gateway(a)


def test_kill_9_of_the_owner_fails_its_response_on_another_process_after_the_lease(
    pair: tuple[Gateway, Gateway], sim: Simulator
) -> None:
    a, b = pair
    sim.script("anthropic", Hang())
    rid = _background(a)
    deadline = time.monotonic() + 10
    while _status(b, rid)["status"] != "in_progress" and time.monotonic() < deadline:
        time.sleep(0.05)
    a.process.send_signal(signal.SIGKILL)
    a.process.wait()
    killed = time.monotonic()
    failed = _wait(b, rid, LEASE_S + 10)
    took = time.monotonic() - killed
    assert failed["status"] == "failed", failed
    assert "lease expired" in failed["error"]["message"]
    assert failed["error"]["code"] == "server_error"
    assert took <= LEASE_S + 5, took
    # The stored events end with the failure, so a replay says it too.
    events = _events(httpx.get(f"{b.url}/v1/responses/{rid}", params={"stream": "true"}))
    assert events[-1]["type"] == "response.failed"
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(len(numbers)))


def test_cancel_on_a_process_that_does_not_run_the_response(
    pair: tuple[Gateway, Gateway], sim: Simulator
) -> None:
    a, b = pair
    sim.script("anthropic", Hang())
    rid = _background(a)
    started = time.monotonic()
    reply = httpx.post(f"{b.url}/v1/responses/{rid}/cancel", timeout=LEASE_S + 10)
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "cancelled"
    assert time.monotonic() - started < LEASE_S + 2
    assert _status(a, rid)["status"] == "cancelled"  # A stopped it and wrote it
    assert _status(b, rid)["status"] == "cancelled"
    # Idempotent, from either side.
    assert httpx.post(f"{a.url}/v1/responses/{rid}/cancel").json()["status"] == "cancelled"


def _events(reply: httpx.Response) -> list[dict[str, Any]]:
    assert reply.status_code == 200, reply.text
    lines = reply.text.splitlines()
    return [orjson.loads(x[6:]) for x in lines if x.startswith("data: {")]


def test_stream_on_another_process_follows_the_response_to_its_end(
    pair: tuple[Gateway, Gateway], sim: Simulator
) -> None:
    a, b = pair
    sim.script("anthropic", Slow(2))
    rid = _background(a, "count to three")
    url = f"{b.url}/v1/responses/{rid}"
    with httpx.stream("GET", url, params={"stream": "true"}, timeout=30) as reply:
        body = b"".join(reply.iter_bytes()).decode()
    events = [orjson.loads(x[6:]) for x in body.splitlines() if x.startswith("data: {")]
    assert body.rstrip().endswith("data: [DONE]")
    types = [e["type"] for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(len(numbers)))
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "count to three"
    # Resumed from a point: only what came after it.
    tail = _events(httpx.get(url, params={"stream": "true", "starting_after": "2"}))
    assert [e["sequence_number"] for e in tail] == numbers[3:]


def _two_workers_serve(gw: Gateway) -> None:
    pids = set()
    for _ in range(60):  # a new connection each: the kernel spreads them over the workers
        reply = httpx.get(f"{gw.url}/health", headers={"connection": "close"})
        assert reply.status_code == 200
        pids.add(reply.headers["x-turnout-worker"])
        if len(pids) == 2:
            break
    assert len(pids) == 2, pids
    assert gw.process.pid not in {int(p) for p in pids}  # workers, not the supervisor
    assert "workers: 2" in gw.logs() and gw.logs().count("ready on") == 1
    ids = []
    for i in range(20):
        with httpx.Client(base_url=gw.url, headers={"connection": "close"}) as http:
            reply = http.post("/v1/responses", json={"model": MODEL, "input": f"n{i}"})
        assert reply.status_code == 200, reply.text
        ids.append(reply.json()["id"])
    with OpenAI(base_url=f"{gw.url}/v1", api_key="k", max_retries=0) as client:
        for i, rid in enumerate(ids):  # every one stored, whichever worker answered
            assert client.responses.retrieve(rid).output_text == f"n{i}"
        chained = client.responses.create(model=MODEL, input="again", previous_response_id=ids[0])
        assert chained.status == "completed"
    gw.process.send_signal(signal.SIGTERM)
    assert gw.process.wait(timeout=20) == 0


def test_two_workers_on_sqlite(tmp_path: Path, sim: Simulator) -> None:
    gw = _start(tmp_path, f"sqlite:///{tmp_path / 'w.db'}", sim, "w", "--workers", "2")
    try:
        _two_workers_serve(gw)
    finally:
        if gw.process.poll() is None:
            stop_gateway(gw)


def test_two_workers_on_postgresql(tmp_path: Path, sim: Simulator) -> None:
    url = postgres.schema_url(f"w_{uuid.uuid4().hex[:8]}")
    try:
        gw = _start(tmp_path, url, sim, "w", "--workers", "2")
        try:
            _two_workers_serve(gw)
        finally:
            if gw.process.poll() is None:
                stop_gateway(gw)
    finally:
        postgres.run_sync(PostgresStore.drop_scratch(url))


def test_a_worker_that_dies_is_replaced(tmp_path: Path, sim: Simulator) -> None:
    gw = _start(tmp_path, f"sqlite:///{tmp_path / 'w.db'}", sim, "w", "--workers", "2")
    try:
        first = int(httpx.get(f"{gw.url}/health").headers["x-turnout-worker"])
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while "starting another" not in gw.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "starting another" in gw.logs()
        time.sleep(3)  # the replacement starts and listens
        pids = {
            httpx.get(f"{gw.url}/health", headers={"connection": "close"}).headers[
                "x-turnout-worker"
            ]
            for _ in range(40)
        }
        assert str(first) not in pids and len(pids) == 2, pids
    finally:
        stop_gateway(gw)


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path, sim: Simulator) -> None:
    gw = _start(tmp_path, f"sqlite:///{tmp_path / 'w.db'}", sim, "w", "--workers", "2")
    try:
        pids = set()
        for _ in range(60):
            reply = httpx.get(f"{gw.url}/health", headers={"connection": "close"})
            pids.add(int(reply.headers["x-turnout-worker"]))
            if len(pids) == 2:
                break
        assert len(pids) == 2
        gw.process.send_signal(signal.SIGKILL)
        gw.process.wait()
        deadline = time.monotonic() + 15
        while pids and time.monotonic() < deadline:
            pids = {pid for pid in pids if _running(pid)}
            time.sleep(0.1)
        assert not pids, f"workers {pids} outlived their supervisor"
    finally:
        if gw.process.poll() is None:
            stop_gateway(gw)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
