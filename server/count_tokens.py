"""`POST /v1/responses/input_tokens`: how many input tokens a create request would cost.

The body is a create body (model, input, instructions, tools, `previous_response_id`…): it is
translated exactly as create translates it (the chain loaded from the store, the same
canonical request, the same mapping), then sent to the provider's counting endpoint as the
mapping's `count_tokens:` section shapes it. A provider without one (Chat Completions) gets a
400 `unsupported_endpoint`, never a guessed number.

An alias counts on the router's first pick; when that deployment cannot count (its provider has
no counting endpoint, a parameter it refuses) or fails in a way worth retrying elsewhere (408,
429, 5xx), the alias's other deployments, then its fallbacks' are tried in order, each once, with
no backoff and no router bookkeeping: a count is a cheap side request, not a routed response.
The first error is answered when none succeeds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, cast

from turnout.engine.canonical import CanonicalRequest, normalize
from turnout.engine.errors import RequestError, UpstreamError
from turnout.server.access.models import ModelAccess
from turnout.server.history import items, load_chain, previous_response_id
from turnout.server.redaction import CallSecrets, mask_error
from turnout.server.request_context import Caller
from turnout.server.stores.base import ResponseStore
from turnout.server.targets import Target, Targets
from turnout.server.upstream import Upstream, UpstreamCall

__all__ = ["CountingMapping", "TokenCounter", "token_count"]

OBJECT = "response.input_tokens"


class CountingMapping(Protocol):
    """The slice of `engine.mapping.CompiledMapping` counting uses."""

    @property
    def provider(self) -> str: ...
    @property
    def counts_tokens(self) -> bool: ...

    def build_count_request(
        self,
        req: CanonicalRequest,
        *,
        model: str,
        api_base: str,
        credentials: dict[str, str],
        settings: dict[str, Any],
    ) -> UpstreamCall: ...
    def parse_count(self, body: bytes) -> int: ...


def token_count(input_tokens: int) -> dict[str, Any]:
    """OpenAI's reply body (TokenCountsResource)."""
    return {"object": OBJECT, "input_tokens": input_tokens}


def _unsupported(target: Target) -> RequestError:
    return RequestError(
        400,
        f"The provider '{target.provider}' has no endpoint that counts input tokens, so "
        f"'{target.model}' cannot be counted; POST /v1/responses/input_tokens works with "
        "the providers whose API counts them.",
        param="model",
        code="unsupported_endpoint",
    )


def _retryable(exc: UpstreamError) -> bool:
    """Worth another deployment: a timeout, a rate limit, the provider's own failure."""
    return exc.status in (408, 429) or exc.status >= 500


class TokenCounter:
    """Counts a create body's input tokens at the provider behind its model."""

    def __init__(
        self,
        store: ResponseStore,
        targets: Targets,
        upstream: Upstream,
        secrets: Sequence[str],
        access: ModelAccess | None = None,
    ) -> None:
        self.store = store
        self.targets = targets
        self.upstream = upstream
        self.secrets = secrets  # masked out of provider errors with each call's own credentials
        # Counting is no response (no budget, no rate limit), but only for a model the caller
        # may use: the count names what the model's provider makes of the input.
        self.access = access

    async def count(self, body: Any, caller: Caller) -> dict[str, Any]:
        prev = previous_response_id(body)  # also: the body must be an object
        chain = await load_chain(self.store, prev, caller)
        canon = normalize(body, items(chain))
        if self.access is not None:
            await self.access.require(caller, canon.model)
        target = self.targets.resolve(canon.model)  # an unknown model or no key: answered now
        try:
            return await self._count_at(target, canon)
        except (RequestError, UpstreamError) as exc:
            if isinstance(exc, UpstreamError) and not _retryable(exc):
                raise
            first = exc
        for other in self._others(canon.model, target):
            try:
                return await self._count_at(other(), canon)
            except (RequestError, UpstreamError) as exc:
                if isinstance(exc, UpstreamError) and not _retryable(exc):
                    raise
        raise first

    def _others(self, model: str, first: Target) -> Iterator[Callable[[], Target]]:
        """For an alias: every deployment of it and of its fallbacks but the first pick, in
        order, each resolved only when tried (a deployment without its key is skipped)."""
        router = self.targets.router
        for alias in router.plan(model):
            for state in router.groups.get(alias, ()):
                if state.id != first.deployment_id:
                    yield functools.partial(self.targets.for_deployment, state, alias)

    async def _count_at(self, target: Target, canon: CanonicalRequest) -> dict[str, Any]:
        mapping = cast(CountingMapping, target.mapping)
        if not getattr(mapping, "counts_tokens", False):
            raise _unsupported(target)
        call = mapping.build_count_request(
            canon,
            model=target.model,
            api_base=target.api_base,
            credentials=await self.targets.credentials(target),
            settings=target.settings,
        )
        secrets = CallSecrets(call.headers, target.credentials, self.secrets)
        try:
            reply = await self.upstream.send(call, target.mapping, read_timeout_s=target.timeout_s)
            return token_count(mapping.parse_count(reply.content))
        except UpstreamError as exc:
            mask_error(exc, secrets())  # providers quote keys back
            raise
