"""Request orchestration for `/v1/responses`, free of any web framework: a facade over one
module per concept.

One create call, in order:

1. load the `previous_response_id` chain from the store (`history.py`: 404
   `previous_response_not_found`), or the `conversation`'s items (`conversations.py`: 404
   `conversation_not_found`; both together are a 400);
2. `engine.canonical.normalize(body, history)` validates the body and merges the new input onto
   the history idempotently (an item whose `id`, or function_call whose `call_id`, is already in
   the history is dropped: anchor-failures 9);
3. resolve `model` to a provider mapping + deployment (`targets.py`: 400 `model_not_found`, 401
   `missing_api_key`);
4. open the upstream reply (`failover.py`, `source.py`); a failure here (non-2xx, network) is
   raised as `UpstreamError` *before* anything was sent, so the client gets a plain JSON error;
5. feed ops to one `ResponseBuilder` (`pump.py`); streamed and non-streamed replies run the very
   same event loop, so they cannot disagree;
6. price, notify and write the `StoredResponse` once (`finish.py`), awaited *before* the terminal
   event (or the JSON reply) leaves, so a follow-up chained on it immediately finds it
   (anchor-failures 1); a conversation's turn is appended to it then too.

Background responses are `background.py`; the replies and their SSE encoding `replies.py`. Who is
calling travels explicitly as a `Caller` (`request_context.py`) from the route.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Literal

from turnout.engine.canonical import History, conversation_of, normalize
from turnout.engine.ids import IdFactory
from turnout.server import elsewhere
from turnout.server.access.admission import Admission
from turnout.server.access.checks import admission_checks
from turnout.server.access.isolation import sees_all, visible
from turnout.server.access.models import ModelAccess
from turnout.server.access.teams import Teams
from turnout.server.background import BackgroundResponses, BackgroundWork, LiveResponse
from turnout.server.compaction import Compactor, NativeCompact, compaction_key
from turnout.server.config import Settings
from turnout.server.conversations import Conversations
from turnout.server.count_tokens import TokenCounter
from turnout.server.failover import Failover, key_drops
from turnout.server.finish import Finisher
from turnout.server.history import UNFINISHED, Histories, load_chain, previous_response_id
from turnout.server.leases import Leases
from turnout.server.pricing import PriceBook
from turnout.server.pump import TERMINAL_EVENTS, sse, stored_groups
from turnout.server.redaction import secret_values
from turnout.server.replies import DONE, JsonReply, StreamReply, encode_sse, replay_sse
from turnout.server.request_context import ANONYMOUS, Caller
from turnout.server.router import Router
from turnout.server.run import bind, new_run, reply_headers
from turnout.server.socket_memory import SocketMemory
from turnout.server.store_health import StoreHealth
from turnout.server.stores.base import ItemPage, ResponseStore, StoredResponse, page_items
from turnout.server.stores.keys import KeyStore
from turnout.server.targets import MappingLike, RegistryLike, Target, Targets
from turnout.server.telemetry.hub import Telemetry
from turnout.server.upstream import Upstream

if TYPE_CHECKING:
    from turnout.server.state.cooldowns import CooldownMirror
    from turnout.server.state.redis import RedisState

__all__ = [
    "DONE",
    "TERMINAL_EVENTS",
    "Caller",
    "Gateway",
    "JsonReply",
    "MappingLike",
    "RegistryLike",
    "StreamReply",
    "Target",
    "encode_sse",
    "replay_sse",
]


class Gateway:
    """Turns a Responses create body into a JSON Response or an SSE byte stream, and serves
    the responses it made."""

    def __init__(
        self,
        settings: Settings,
        registry: RegistryLike,
        store: ResponseStore,
        upstream: Upstream,
        *,
        ids: IdFactory | None = None,
        done_marker: bool = True,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.upstream = upstream
        self.ids = ids or IdFactory()
        self.done_marker = done_marker
        self.router = Router(settings.router, settings.models, mappings=registry)
        self.targets = Targets(settings, registry, self.router)
        # Secret values known at start (secret-named environment variables): masked out of
        # upstream error messages along with each call's own credentials.
        secrets = secret_values(settings.env)
        self.failover = Failover(settings, self.router, self.targets, upstream, secrets)
        # Which models each caller may use (server/access/models.py): admission's first check,
        # the input_tokens check and GET /v1/models's filter.
        keys = store if isinstance(store, KeyStore) else None
        # Teams' own limits and model lists, cached for a second (server/access/teams.py).
        self.teams = Teams(keys)
        self.model_access = ModelAccess(settings.access, settings.models, self.teams)
        # What a caller may do before any upstream call (server/access/admission.py): model
        # access, then rate limits, then budgets (server/access/checks.py); told each
        # response's cost by the Finisher.
        # `state: redis://…` (server/state/): limits, spend and cooldowns shared by replicas.
        self.state: RedisState | None = None
        self.cooldowns: CooldownMirror | None = None
        if settings.state:
            from turnout.server.state import cooldowns, redis  # imports redis-py: only when used

            self.state = redis.RedisState(settings.state)
            self.cooldowns = cooldowns.CooldownMirror(self.state, self.router)
        self.admission = Admission(
            admission_checks(store, self.teams, self.model_access, state=self.state)
        )
        # POST /v1/responses/input_tokens (server/count_tokens.py).
        self.counter = TokenCounter(store, self.targets, upstream, secrets, self.model_access)
        # Cost of every response (server/pricing.py), then the record and the telemetry.
        self.prices = PriceBook(settings.pricing, mappings=registry)
        # Whether the store takes writes: a failed write is a 503 / response.failed, and /health.
        self.store_health = StoreHealth()
        self.finish = Finisher(store, self.router, self.prices, self.store_health)
        # `POST /v1/responses/compact` (server/compaction.py) and the key its blobs are sealed
        # with, which `create` (and a conversation's new items) need to open them again.
        self.compaction_key = compaction_key(settings)
        # Normalized histories of the last chains continued (server/history.py).
        self.histories = Histories(self.compaction_key)
        native = NativeCompact(
            store, self.targets, upstream, self.prices, self.compaction_key, self.admission
        )
        self.compactor = Compactor(self.create, self.compaction_key, self.ids, native)
        # The Conversations API; a turn with `conversation` is appended by the Finisher.
        self.conversations = Conversations(
            store, self.store_health, self.ids, seal_key=self.compaction_key
        )
        self.finish.turns = self.conversations.append_turn
        self.finish.settle = self.admission.settle
        self.background = BackgroundResponses()
        self.work = BackgroundWork(
            settings, self.background, self.targets, self.failover, self.finish, self.ids,
            done_marker, self.teams,
        )  # fmt: skip
        self.leases = Leases(store, self.background, settings.background.lease_s)

    @property
    def telemetry(self) -> Telemetry | None:
        """The telemetry hub, wired in by the app (server/app.py); None for a bare Gateway."""
        return self.finish.telemetry

    @telemetry.setter
    def telemetry(self, telemetry: Telemetry | None) -> None:
        self.finish.telemetry = telemetry

    def resolve(self, model: str) -> Target:
        """`model` as an alias (the router's first choice) or `provider/model`."""
        return self.targets.resolve(model)

    # -- create -----------------------------------------------------------------------------

    async def create(
        self, body: Any, caller: Caller = ANONYMOUS, *, memory: SocketMemory | None = None
    ) -> JsonReply | StreamReply:
        """`memory`: a WebSocket's own responses (websocket_mode.py), chained from before the
        store and added to once each of the socket's turns is final."""
        started = time.monotonic()  # the stored duration counts the upstream attempts too
        prev = previous_response_id(body)
        conversation = conversation_of(body)  # 400 beside previous_response_id
        history: list[dict[str, Any]] | History
        if conversation is not None:
            chain: list[StoredResponse] = []
            history = await self.conversations.history(conversation, caller)
        elif memory is not None:
            chain = await memory.chain(self.store, prev, caller)
            history = self.histories.history(chain)
        else:
            chain = await load_chain(self.store, prev, caller)
            history = self.histories.history(chain)
        canon = normalize(body, history, seal_key=self.compaction_key)
        admitted = await self.admission.admit(caller, canon.model)
        if body.get("background") is True:
            reply = await self.work.create(body, canon, chain, prev, caller, admitted)
            reply.headers.update(admitted)
            return reply
        opened = await self.failover.attempt(
            canon, chain, deadline=caller.deadline, drop=key_drops(caller)
        )
        run = new_run(
            body, canon, prev, opened.target, caller,
            ids=self.ids, max_image_bytes=self.settings.limits.max_image_bytes, started=started,
        )  # fmt: skip
        bind(run, opened, self.router)
        headers = reply_headers(run)
        headers.update(admitted)
        finish = self.finish if memory is None else memory.keeping(self.finish)
        if canon.stream:
            return StreamReply(sse(run, finish, self.done_marker), headers)
        async with aclosing(stored_groups(run, finish)) as groups:
            async for _ in groups:
                pass
        return JsonReply(run.builder.response, headers)

    async def count_tokens(self, body: Any, caller: Caller = ANONYMOUS) -> dict[str, Any]:
        """`{"object": "response.input_tokens", "input_tokens": N}` for a create body, counted
        by the provider behind its model."""
        return await self.counter.count(body, caller)

    # -- the responses made: each the caller's to see (server/access/isolation.py), else
    # answered as an unknown id --------------------------------------------------------------

    def live(self, response_id: str, caller: Caller = ANONYMOUS) -> LiveResponse | None:
        """A background response still at work."""
        return visible(caller, self.background.get(response_id))

    async def retrieve(self, response_id: str, caller: Caller = ANONYMOUS) -> StoredResponse | None:
        """The stored response; None when unknown, deleted or not the caller's."""
        stored = await self.store.get(response_id)
        return None if stored is None or stored.deleted else visible(caller, stored)

    async def input_items(
        self,
        response_id: str,
        caller: Caller = ANONYMOUS,
        *,
        limit: int,
        order: Literal["asc", "desc"],
        after: str | None,
    ) -> ItemPage | None:
        if sees_all(caller):  # the store reads only the items, not the whole record
            return await self.store.list_input_items(
                response_id, limit=limit, order=order, after=after
            )
        stored = await self.retrieve(response_id, caller)
        if stored is None:
            return None
        return page_items(stored.input_items, limit=limit, order=order, after=after)

    async def delete(self, response_id: str, caller: Caller = ANONYMOUS) -> bool:
        if not sees_all(caller) and await self.retrieve(response_id, caller) is None:
            return False
        await self.background.cancel(response_id)  # else its final write would bring it back
        return await self.store.delete(response_id)

    async def cancel(self, response_id: str, caller: Caller = ANONYMOUS) -> dict[str, Any] | None:
        """Stop a background response still at work, once its final record is written: the
        Response then; None when it is not at work (here or, by the store, elsewhere). One at
        work in another process is asked through the store (server/elsewhere.py) and waited
        for up to a lease and a tick."""
        if self.live(response_id, caller) is not None:
            live = await self.background.cancel(response_id)
            return None if live is None else live.response
        stored = await self.retrieve(response_id, caller)
        if stored is None or stored.status not in UNFINISHED:
            return None
        wait_s = self.leases.lease_s + 2 * self.leases.tick_s
        return (await elsewhere.cancel(self.store, stored, wait_s)).response

    def follow_sse(
        self, live: LiveResponse, starting_after: int | None = None, caller: Caller = ANONYMOUS
    ) -> AsyncGenerator[bytes, None]:
        """A running background response as SSE: its events so far, then the new ones."""
        return self.work.follow_sse(live, starting_after)

    def follow_stored(
        self, stored: StoredResponse, starting_after: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """A background response at work in another process, followed through the store."""
        return elsewhere.follow(self.store, stored, starting_after, self.done_marker)

    # -- the process ------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self.leases.aclose()
        await self.background.aclose()
        await self.admission.aclose()
        if self.cooldowns is not None:
            await self.cooldowns.aclose()
        if self.state is not None:
            await self.state.aclose()  # after the checks: their last settles are waited for

    async def recover(self) -> int:
        """At start-up: fail the background responses whose process stopped without ending
        them (their lease ran out: server/leases.py)."""
        return await self.leases.recover()
