"""What a response cost, in US dollars, from its usage.

Prices come from `genai-prices` (pydantic's maintained price data, per provider and model, with
the date a price applies from), overridden by the config for custom, fine-tuned or self-hosted
models:

    pricing:                                  # keys: alias, provider/model, or a glob of them
      "ollama/*": {input_per_mtok: 0, output_per_mtok: 0}
      "openai/ft:gpt-4o:acme": {input_per_mtok: 3.75, cached_input_per_mtok: 1.875,
                                output_per_mtok: 15}
    models:
      claude:
        deployments:
          - model: anthropic/claude-sonnet-4-5
            pricing: {input_per_mtok: 2.4, output_per_mtok: 12}

Precedence: the deployment's `pricing`, then a `pricing` key equal to the alias the client sent,
then one equal to `provider/model`, then the first glob that matches either, then genai-prices.

Usage is OpenAI's count (what the builder produces for every provider): `input_tokens` is the
total, of which `cached_tokens` were read from the cache and `cache_write_tokens` written to it;
`output_tokens` is the total, of which `reasoning_tokens` were reasoning. Each partition is priced
at its own rate, so cached tokens are never billed as fresh input (anchor-failures 13) nor
dropped. The price is a pure function of (provider, model, usage, created_at), so a streamed and a
non-streamed reply with the same usage cost exactly the same.

An unknown price is `None` (and counted by the caller), never an exception.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "GENAI_PROVIDERS",
    "Price",
    "PriceBook",
    "PriceOverride",
    "UsageCounts",
    "usage_counts",
]

log = logging.getLogger("turnout.pricing")

# Turnout provider id (mapping file stem) -> genai-prices provider id. A provider missing here
# has no price data (self-hosted servers, hosts genai-prices does not track): its models need a
# config override, and meanwhile cost is null. We never fall back to "any provider serving a
# model of that name": open models cost different amounts on different hosts.
GENAI_PROVIDERS: Mapping[str, str] = {
    "openai": "openai",
    "openai_chat": "openai",
    "azure": "azure",
    "azure_chat": "azure",
    "azure_ai": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "vertex_ai": "google",
    "bedrock": "aws",
    "groq": "groq",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "together": "together",
    "fireworks": "fireworks",
    "openrouter": "openrouter",
    "cerebras": "cerebras",
    "perplexity": "perplexity",
    "moonshot": "moonshotai",
}

_MTOK = Decimal(1_000_000)
_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class UsageCounts:
    """OpenAI-style counts: totals plus the partitions priced apart."""

    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0

    @property
    def empty(self) -> bool:
        return self.input_tokens == 0 and self.output_tokens == 0


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def usage_counts(usage: Mapping[str, Any] | None) -> UsageCounts:
    """Counts from a Response's `usage` object (None or malformed parts count as 0)."""
    if not isinstance(usage, Mapping):
        return UsageCounts()
    ind = usage.get("input_tokens_details")
    outd = usage.get("output_tokens_details")
    ind = ind if isinstance(ind, Mapping) else {}
    outd = outd if isinstance(outd, Mapping) else {}
    return UsageCounts(
        input_tokens=_int(usage.get("input_tokens")),
        cached_tokens=_int(ind.get("cached_tokens")),
        cache_write_tokens=_int(ind.get("cache_write_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        reasoning_tokens=_int(outd.get("reasoning_tokens")),
        input_image_tokens=_int(ind.get("image_tokens")),
        output_image_tokens=_int(outd.get("image_tokens")),
    )


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """Dollars per million tokens (and per request); unset partition rates fall back to the
    rate of the total they belong to."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None
    per_request: Decimal = Decimal(0)

    @classmethod
    def from_config(cls, spec: Mapping[str, Any]) -> PriceOverride:
        def dec(name: str) -> Decimal | None:
            value = spec.get(name)
            return None if value is None else Decimal(str(value))

        return cls(
            input_per_mtok=dec("input_per_mtok") or Decimal(0),
            output_per_mtok=dec("output_per_mtok") or Decimal(0),
            cached_input_per_mtok=dec("cached_input_per_mtok"),
            cache_write_per_mtok=dec("cache_write_per_mtok"),
            reasoning_per_mtok=dec("reasoning_per_mtok"),
            per_request=dec("per_request") or Decimal(0),
        )

    def price(self, u: UsageCounts) -> Decimal:
        cached = min(u.cached_tokens, u.input_tokens)
        written = min(u.cache_write_tokens, u.input_tokens - cached)
        fresh = u.input_tokens - cached - written
        reasoning = min(u.reasoning_tokens, u.output_tokens)
        visible = u.output_tokens - reasoning
        inp = self.input_per_mtok
        out = self.output_per_mtok
        total = (
            fresh * inp
            + cached * (inp if self.cached_input_per_mtok is None else self.cached_input_per_mtok)
            + written * (inp if self.cache_write_per_mtok is None else self.cache_write_per_mtok)
            + visible * out
            + reasoning * (out if self.reasoning_per_mtok is None else self.reasoning_per_mtok)
        )
        return total / _MTOK + self.per_request


@dataclass(frozen=True, slots=True)
class Price:
    cost: float  # US dollars
    source: str  # "config" or "genai-prices"


def _to_float(value: Decimal) -> float:
    # Ten decimal places: far below a cent, and stable across float round trips.
    return float(round(value, 10))


class PriceBook:
    """Prices for (provider, model, usage). Thread-safe enough for one event loop: the lookup
    cache is a bounded LRU of genai-prices' (provider, model) resolution, hits or misses."""

    def __init__(self, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._exact: dict[str, PriceOverride] = {}
        self._globs: list[tuple[str, PriceOverride]] = []
        for key, spec in (overrides or {}).items():
            price = PriceOverride.from_config(spec)
            if any(ch in key for ch in "*?["):
                self._globs.append((key, price))
            else:
                self._exact[key] = price
        self._lookups: OrderedDict[tuple[str, str], tuple[Any, Any] | None] = OrderedDict()

    def override(
        self, provider: str, model: str, alias: str | None, deployment: Mapping[str, Any] | None
    ) -> PriceOverride | None:
        if deployment:
            return PriceOverride.from_config(deployment)
        full = f"{provider}/{model}"
        names = (alias, full) if alias and alias != full else (full,)
        for name in names:
            if name is not None and name in self._exact:
                return self._exact[name]
        for pattern, price in self._globs:
            if any(name is not None and fnmatch.fnmatchcase(name, pattern) for name in names):
                return price
        return None

    def cost(
        self,
        provider: str,
        model: str,
        usage: UsageCounts,
        *,
        alias: str | None = None,
        deployment_pricing: Mapping[str, Any] | None = None,
        created_at: int | None = None,
    ) -> Price | None:
        """The cost of `usage` on `provider/model`; None when no price is known."""
        override = self.override(provider, model, alias, deployment_pricing)
        if override is not None:
            return Price(_to_float(override.price(usage)), "config")
        if usage.empty:  # nothing was billed (a failure before the first token): no lookup
            return Price(0.0, "no-usage")
        found = self._lookup(provider, model)
        if found is None:
            return None
        gp_provider, gp_model = found
        try:
            from genai_prices import Usage

            calc = gp_model.calc_price(
                Usage(**_genai_usage(usage)),
                gp_provider,
                genai_request_timestamp=datetime.fromtimestamp(created_at, UTC)
                if created_at
                else datetime.now(tz=UTC),
                auto_update_timestamp=None,
            )
        except Exception:  # price data we cannot apply is an unknown price, not a failure
            log.warning("genai-prices could not price %s/%s", provider, model, exc_info=True)
            return None
        return Price(_to_float(Decimal(calc.total_price)), "genai-prices")

    def _lookup(self, provider: str, model: str) -> tuple[Any, Any] | None:
        gp_id = GENAI_PROVIDERS.get(provider)
        if gp_id is None or not model:
            return None
        key = (gp_id, model)
        cache = self._lookups
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        found: tuple[Any, Any] | None
        try:
            from genai_prices import data_snapshot

            found = data_snapshot.get_snapshot().find_provider_model(model, None, gp_id, None)
        except LookupError:
            found = None
        except Exception:
            log.warning("genai-prices lookup failed for %s/%s", provider, model, exc_info=True)
            found = None
        cache[key] = found
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
        return found


def _genai_usage(u: UsageCounts) -> dict[str, int]:
    # genai-prices counts like OpenAI: input_tokens is the total and cache reads/writes are
    # partitions of it (so are image tokens); output reasoning is a partition of output.
    cached = min(u.cached_tokens, u.input_tokens)
    written = min(u.cache_write_tokens, u.input_tokens - cached)
    values = {
        "input_tokens": u.input_tokens,
        "cache_read_tokens": cached,
        "cache_write_tokens": written,
        "output_tokens": u.output_tokens,
        "output_reasoning_tokens": min(u.reasoning_tokens, u.output_tokens),
        "input_image_tokens": min(u.input_image_tokens, u.input_tokens),
        "output_image_tokens": min(u.output_image_tokens, u.output_tokens),
    }
    return {k: v for k, v in values.items() if v}
