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

Which genai-prices provider a Turnout provider is priced as comes from its mapping,
`provider.pricing_id` (see :class:`CatalogueIds`); this module names no provider.

Usage is OpenAI's count (what the builder produces for every provider): `input_tokens` is the
total, of which `cached_tokens` were read from the cache and `cache_write_tokens` written to it;
`output_tokens` is the total, of which `reasoning_tokens` were reasoning. `web_searches` (the
searches the provider bills, as its mapping reads them) is priced at the catalogue's
per-search price where it has one; a config override prices tokens only. Each partition is priced
at its own rate, so cached tokens are never billed as fresh input (anchor-failures 13) nor
dropped. The price is a pure function of (provider, model, usage, created_at), so a streamed and a
non-streamed reply with the same usage cost exactly the same.

An unknown price is `None` (and counted by the caller), never an exception.
"""

from __future__ import annotations

import bisect
import fnmatch
import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turnout.server.router import MappingsLike

__all__ = [
    "GENAI_PROVIDERS",
    "CatalogueIds",
    "Price",
    "PriceBook",
    "PriceOverride",
    "UsageCounts",
    "load_price_data",
    "usage_counts",
]

log = logging.getLogger("turnout.pricing")


@dataclass(frozen=True, slots=True)
class CatalogueIds:
    """Turnout provider id (mapping file stem) -> genai-prices provider id, from each mapping's
    `provider.pricing_id`. Left out, the provider id itself is tried, and only a catalogue
    provider of exactly that id counts (genai-prices would also match an id merely containing
    `openai`, pricing a local server at OpenAI's rates); `false`, or a provider no mapping
    names, has no price data: its models need a config override, and meanwhile cost is null.
    We never fall back to "any provider serving a model of that name": open models cost
    different amounts on different hosts."""

    declared: Mapping[str, str]  # pricing_id given: used as genai-prices resolves ids
    own: frozenset[str] = frozenset()  # no pricing_id: the provider id, matched exactly

    @classmethod
    def of(cls, mappings: MappingsLike) -> CatalogueIds:
        declared: dict[str, str] = {}
        own: set[str] = set()
        for pid in mappings.providers:
            mapping = mappings.get(pid)
            value = (mapping.defaults if mapping is not None else {}).get("pricing_id")
            if value is None:
                own.add(pid)
            elif isinstance(value, str) and value:
                declared[pid] = value
        return cls(declared, frozenset(own))

    def get(self, provider: str) -> tuple[str, bool] | None:
        """(genai-prices id, whether only an exact id match counts), or None: no price data."""
        found = self.declared.get(provider)
        if found is not None:
            return found, False
        return (provider, True) if provider in self.own else None


@cache
def _bundled_ids() -> CatalogueIds:
    from turnout.server.router import bundled_mappings

    return CatalogueIds.of(bundled_mappings())


class _DeclaredIds(Mapping[str, str]):
    """The `pricing_id`s the bundled mappings declare, read on first use."""

    def __getitem__(self, provider: str) -> str:
        return _bundled_ids().declared[provider]

    def __iter__(self) -> Iterator[str]:
        return iter(_bundled_ids().declared)

    def __len__(self) -> int:
        return len(_bundled_ids().declared)


# Provider id -> genai-prices id, as the bundled mappings declare them (`provider.pricing_id`).
GENAI_PROVIDERS: Mapping[str, str] = _DeclaredIds()

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
    # Web searches the provider bills (the builder's `web_searches`: not in OpenAI's usage).
    web_searches: int = 0

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
    cache is a bounded LRU of genai-prices' (provider, model) resolution, hits or misses.
    `mappings` (the registry in use) says which catalogue provider each provider is priced as;
    without it, the bundled mappings do."""

    def __init__(
        self,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        mappings: MappingsLike | None = None,
    ) -> None:
        self._exact: dict[str, PriceOverride] = {}
        self._globs: list[tuple[str, PriceOverride]] = []
        for key, spec in (overrides or {}).items():
            price = PriceOverride.from_config(spec)
            if any(ch in key for ch in "*?["):
                self._globs.append((key, price))
            else:
                self._exact[key] = price
        self._lookups: OrderedDict[tuple[str, bool, str], tuple[Any, Any] | None] = OrderedDict()
        self._affine = AffinePrices()
        self._ids = CatalogueIds.of(mappings) if mappings is not None else None

    @property
    def catalogue_ids(self) -> CatalogueIds:
        if self._ids is None:
            self._ids = _bundled_ids()
        return self._ids

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
        when = datetime.fromtimestamp(created_at, UTC) if created_at else datetime.now(tz=UTC)
        try:
            total = self._affine.price(gp_provider, gp_model, _genai_usage(usage), when)
        except Exception:  # price data we cannot apply is an unknown price, not a failure
            log.warning("genai-prices could not price %s/%s", provider, model, exc_info=True)
            return None
        return Price(_to_float(total), "genai-prices")

    def _lookup(self, provider: str, model: str) -> tuple[Any, Any] | None:
        entry = self.catalogue_ids.get(provider)
        if entry is None or not model:
            return None
        gp_id, exact = entry
        key = (gp_id, exact, model)
        cache = self._lookups
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        found: tuple[Any, Any] | None
        try:
            from genai_prices import data_snapshot

            snapshot = data_snapshot.get_snapshot()
            if exact:
                same = next((p for p in snapshot.providers if p.id == gp_id), None)
                if same is None:
                    raise LookupError(gp_id)
                found = snapshot.find_provider_model(model, same, None, None)
            else:
                found = snapshot.find_provider_model(model, None, gp_id, None)
        except LookupError:
            found = None
        except Exception:
            log.warning("genai-prices lookup failed for %s/%s", provider, model, exc_info=True)
            found = None
        cache[key] = found
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
        return found


def load_price_data() -> None:
    """Load genai-prices' snapshot now (the first lookup would otherwise pay for it)."""
    from genai_prices import data_snapshot

    data_snapshot.get_snapshot()


def _calc_price(
    gp_provider: Any, gp_model: Any, values: Mapping[str, int], when: datetime
) -> Decimal:
    """genai-prices' own computation (about 0.25 ms: it re-derives the unit tree every call)."""
    from genai_prices import Usage

    calc = gp_model.calc_price(
        Usage(**values), gp_provider, genai_request_timestamp=when, auto_update_timestamp=None
    )
    return Decimal(calc.total_price)


@dataclass(frozen=True, slots=True)
class _Fit:
    """calc_price as an affine function of the reported counts, for one resolved ModelPrice and
    one set of non-zero keys; `rates` is None when that set must always take the slow path."""

    model_price: Any  # held so its id() in the cache key cannot be reused while cached
    constant: Decimal
    rates: Mapping[str, Decimal] | None


# Partitions of each total (see _genai_usage): a usage whose partitions exceed their total is
# one genai-prices rejects, so it goes the slow path and gets genai-prices' own error.
_INPUT_PARTS = ("cache_read_tokens", "cache_write_tokens", "input_image_tokens")
_OUTPUT_PARTS = ("output_reasoning_tokens", "output_image_tokens")


class AffinePrices:
    """genai-prices' `calc_price`, memoised as the piecewise affine function it is.

    The price is linear in the leaf counts genai-prices derives (each a difference of reported
    counts) plus a per-request constant, at rates that depend only on which tier band the input
    total falls in (tiers are cliffs on `input_tokens`: every token is billed at the tier's
    rate). So for one resolved ModelPrice, one set of non-zero keys (which decides what
    genai-prices infers or refuses) and one band, it is `constant + sum(rate[k] * count[k])`.
    Each such piece is measured once: calc_price at a base point in the band and at that point
    plus one of each key, then checked at a second, distant point of the band. A piece that does
    not fit, a key set genai-prices rejects, or a usage outside the valid region takes
    calc_price itself. Decimal arithmetic keeps both paths equal to the last digit
    (tests/test_pricing.py checks it over the whole price snapshot)."""

    def __init__(self, max_entries: int = _CACHE_SIZE) -> None:
        self._fits: OrderedDict[tuple[int, frozenset[str], int], _Fit] = OrderedDict()
        self._tier_starts: dict[int, tuple[Any, tuple[int, ...]]] = {}
        self._max = max_entries

    def price(
        self, gp_provider: Any, gp_model: Any, values: Mapping[str, int], when: datetime
    ) -> Decimal:
        model_price = gp_model.get_prices(when)
        starts = self._starts(model_price)
        band = bisect.bisect_left(starts, values.get("input_tokens", 0)) if starts else 0
        key = (id(model_price), frozenset(values), band)
        fit = self._fits.get(key)
        if fit is not None:
            self._fits.move_to_end(key)  # least recently used goes first when full
        if fit is None or fit.model_price is not model_price:
            fit = self._fit(gp_provider, gp_model, model_price, key[1], starts, band, when)
            self._fits[key] = fit
            if len(self._fits) > self._max:
                self._fits.popitem(last=False)
        rates = fit.rates
        if rates is None or not _within_totals(values):
            return _calc_price(gp_provider, gp_model, values, when)
        total = fit.constant
        for name, count in values.items():
            total += rates[name] * count
        return total

    def _starts(self, model_price: Any) -> tuple[int, ...]:
        """The input totals where some rate changes (a rate applies above its tier's start)."""
        known = self._tier_starts.get(id(model_price))
        if known is not None and known[0] is model_price:
            return known[1]
        from genai_prices.types import TieredPrices

        starts = tuple(
            sorted(
                {
                    tier.start
                    for value in vars(model_price).values()
                    if isinstance(value, TieredPrices)
                    for tier in value.tiers
                }
            )
        )
        if len(self._tier_starts) >= self._max:
            self._tier_starts.clear()
        self._tier_starts[id(model_price)] = (model_price, starts)
        return starts

    @staticmethod
    def _fit(
        gp_provider: Any,
        gp_model: Any,
        model_price: Any,
        keys: frozenset[str],
        starts: tuple[int, ...],
        band: int,
        when: datetime,
    ) -> _Fit:
        slow = _Fit(model_price, Decimal(0), None)
        # Band b holds input totals n with starts[b-1] < n <= starts[b].
        low = starts[band - 1] + 1 if band > 0 else 0
        high = starts[band] if band < len(starts) else low + 10_000_000
        if high - low < 4:  # too narrow to place the probes: always the slow path
            return slow

        def point(total_in: int, total_out: int, part: int) -> dict[str, int]:
            return {
                k: part
                if k in _INPUT_PARTS or k in _OUTPUT_PARTS
                else (total_in if k == "input_tokens" else total_out)
                for k in keys
            }

        try:
            base = point(low + 3, 1000, 1)  # three input partitions of 1 fit in low + 3
            at_base = _calc_price(gp_provider, gp_model, base, when)
            rates = {
                k: _calc_price(gp_provider, gp_model, {**base, k: base[k] + 1}, when) - at_base
                for k in keys
            }
            constant = at_base - sum((rates[k] * base[k] for k in keys), Decimal(0))
            check = point(high, 7_654_321, min(12_345, high // 3))
            predicted = constant + sum((rates[k] * check[k] for k in keys), Decimal(0))
            if predicted != _calc_price(gp_provider, gp_model, check, when):
                return slow
        except Exception:  # genai-prices refuses this key set: let it say so per request
            return slow
        return _Fit(model_price, constant, rates)


def _within_totals(values: Mapping[str, int]) -> bool:
    get = values.get
    return sum(get(k, 0) for k in _INPUT_PARTS) <= get("input_tokens", 0) and sum(
        get(k, 0) for k in _OUTPUT_PARTS
    ) <= get("output_tokens", 0)


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
        # Priced where the catalogue has a per-search price for the model, else ignored.
        "web_searches": u.web_searches,
    }
    return {k: v for k, v in values.items() if v}
