"""Leases of background responses in-process (server/leases.py): two gateways on one store,
each with its own owner id, driven tick by tick (no sleeping for a lease to run out: the
sweeps are given the time).

The store side (conditional writes, renewals, cancel marks) is the contract suite's
(tests/test_store_contract.py); the processes side is tests/test_e2e_leases.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.test_background import settle, stalled_gateway
from tests.test_server_unit import Env
from turnout.server.gateway import JsonReply
from turnout.server.leases import LEASE_EXPIRED, fail_expired


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark = pytest.mark.anyio


async def _start(env: Env) -> tuple[Any, str]:
    gw, _streams = stalled_gateway(env)
    reply = await gw.create({"model": "fake/x", "input": "hi", "background": True})
    assert isinstance(reply, JsonReply)
    rid = str(reply.response["id"])
    await settle(gw, rid)
    return gw, rid


async def test_the_record_names_its_owner_and_lease() -> None:
    env = Env()
    gw, rid = await _start(env)
    stored = await env.store.get(rid)
    assert stored is not None and stored.owner == gw.background.owner
    assert stored.lease_until is not None and stored.lease_until > time.time() + 20
    await gw.aclose()


async def test_another_gateway_fails_it_only_once_the_lease_ran_out() -> None:
    env = Env()
    a, rid = await _start(env)
    b, _ = stalled_gateway(env)
    assert a.background.owner != b.background.owner
    assert await b.recover() == 0  # A is alive: its lease holds
    await a.leases.tick()  # A renews and writes its progress
    progress = await env.store.get(rid)
    assert progress is not None and progress.status == "in_progress"
    assert progress.events is not None and len(progress.events) > 3
    # The events so far, for GET ?stream=true on another process.
    assert progress.events[-1]["type"] == "response.output_text.delta"
    lease = progress.lease_until
    assert lease is not None
    assert await fail_expired(env.store, b.background.ids(), now=lease - 1) == 0
    # A stops renewing (stalled, or killed): once its lease ran out, B fails it.
    assert await fail_expired(env.store, b.background.ids(), now=lease + 1) == 1
    failed = await env.store.get(rid)
    assert failed is not None and failed.status == "failed"
    assert failed.response["error"]["message"] == LEASE_EXPIRED
    assert failed.events is not None and failed.events[-1]["type"] == "response.failed"
    # A learns it at its next renewal and stops; its own final write is refused.
    await a.leases.tick()
    live = a.background.get(rid)
    for _ in range(200):
        if live is None or live.done:
            break
        await _yield()
    assert live is None or live.done
    after = await env.store.get(rid)
    assert after is not None and after.status == "failed"
    assert after.response["error"]["message"] == LEASE_EXPIRED  # the first terminal write won
    await a.aclose()


async def test_a_cancel_asked_elsewhere_stops_the_work_at_the_next_tick() -> None:
    env = Env()
    a, rid = await _start(env)
    assert await env.store.request_cancel(rid)
    await a.leases.tick()
    for _ in range(200):
        stored = await env.store.get(rid)
        if stored is not None and stored.status == "cancelled":
            break
        await _yield()
    assert stored is not None and stored.status == "cancelled"
    await a.aclose()


async def _yield() -> None:
    await asyncio.sleep(0.005)
