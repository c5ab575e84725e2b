"""Deployment state and routing decisions for model aliases (framework-free, no I/O).

An alias (`models.<name>` in the config) is a group of deployments. For every request the
gateway asks the router, attempt after attempt, which deployment to try next
(:meth:`Router.pick`), tells it how the attempt went (:meth:`Router.begin`,
:meth:`Router.succeeded`, :meth:`Router.failed`, :meth:`Router.finished`), and walks the fallbacks
(:meth:`Router.plan`) when a group is exhausted.

Decisions, and why:

* **Strategies** pick among the deployments that are usable *now*: not cooling down, under their
  `rpm`/`tpm` in the last 60 s. `weighted` draws by weight (weight 0 = standby, used only when
  nothing else is usable); `least-busy`, `latency` and `usage` pick the best by their measure and
  break ties by weight, so equal deployments still share the load.
* **Affinity first** (anchor-failures 12): a conversation carrying opaque reasoning state goes to
  the deployment that minted it, else to a deployment of the same provider, else anywhere (the
  mappings then drop the state the new provider cannot read).
* **Provider knowledge comes from the mappings** (:class:`ProviderTraits`): which error codes and
  messages mean "the prompt does not fit" (`provider.context_window_errors`) and which providers
  mint reasoning state of their own (`provider.native_state`). This module names no provider.
* **Cooldown is a circuit breaker**: `allowed_fails` retryable failures within 60 s take a
  deployment out for `cooldown_s`; a deployment that cannot be reached at all (connection refused,
  DNS: `upstream_unreachable`) is taken out at its first failure (outlier ejection). A client
  request counts once toward `allowed_fails` however often it retried the deployment. A cooldown
  exists to move traffic elsewhere, so it never takes out the last deployment its alias and the
  alias's fallbacks have left to try: that one keeps serving (and failing honestly) rather than
  turning one upstream 500 into a 503 for every client.
* **Retries** go to a deployment not tried yet in this request without waiting; only a second try
  of the same deployment waits (exponential backoff with jitter, at least its `Retry-After`).
  A `Retry-After` beyond `MAX_WAIT_S` or past the request deadline is not waited for.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Protocol

from turnout.engine.errors import UpstreamError
from turnout.server.config import Deployment, ModelAlias, RouterSettings

__all__ = [
    "EJECT_CODES",
    "LOCAL_CODES",
    "MAX_WAIT_S",
    "SHARED_WAIT_S",
    "WINDOW_S",
    "Affinity",
    "DeploymentState",
    "MappingsLike",
    "Pick",
    "ProviderTraits",
    "Router",
    "affinity_of",
    "bundled_mappings",
    "is_context_window_error",
    "is_retryable",
    "provider_sections",
]

WINDOW_S = 60.0  # rpm/tpm and allowed_fails are counted over this sliding window
# Failures that say the deployment cannot be reached at all: ejected at once, no second try.
EJECT_CODES = frozenset({"upstream_unreachable"})
# Failures of the gateway's own, not the deployment's: never counted toward its cooldown.
LOCAL_CODES = frozenset({"upstream_busy"})
# Retry-After when the other replicas' requests fill a deployment's window: the time until the
# oldest shared bucket (server/state/cooldowns.py) leaves it, at most.
SHARED_WAIT_S = 5.0
MAX_WAIT_S = 60.0  # never wait longer than this for one retry, whatever Retry-After says
LATENCY_ALPHA = 0.3  # weight of the newest sample in the latency moving average


class HasDefaults(Protocol):
    @property
    def defaults(self) -> Mapping[str, Any]: ...


class MappingsLike(Protocol):
    """What the router and the price book read of a mapping registry: each provider's merged
    `provider:` section (`engine.registry.MappingRegistry` and the gateway's registry fit)."""

    def get(self, provider: str) -> HasDefaults | None: ...
    @property
    def providers(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class _Section:
    defaults: Mapping[str, Any]


@dataclass(frozen=True)
class _Sections:
    """Provider sections read without compiling the mappings (MappingsLike)."""

    sections: Mapping[str, Mapping[str, Any]]

    def get(self, provider: str) -> _Section | None:
        found = self.sections.get(provider)
        return None if found is None else _Section(found)

    @property
    def providers(self) -> list[str]:
        return sorted(self.sections)


def provider_sections(folder: str | Path) -> MappingsLike:
    """Every provider file of a mapping folder (files and folders starting with `_` are shared
    pieces, as `MappingRegistry` lists them), its `provider:` section only."""
    from turnout.engine.mapping import provider_section

    root = Path(folder)
    files = sorted(p for p in root.glob("*.yaml") if not p.name.startswith("_"))
    return _Sections({p.stem: provider_section(p, root) for p in files})


@cache
def bundled_mappings() -> MappingsLike:
    """The bundled mappings' provider sections: what a Router or PriceBook built without a
    registry knows (read once; cheap after the registry loaded the same files)."""
    from turnout.engine.registry import DEFAULT_MAPPINGS_DIR

    return provider_sections(DEFAULT_MAPPINGS_DIR)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


@dataclass(frozen=True, slots=True)
class ProviderTraits:
    """What the router knows of providers, read from their mappings.

    `context_window`: (code, phrase) pairs, lower case, None = any, from every mapping's
    `provider.context_window_errors`. They are pooled, not looked up by the failing provider:
    relays pass other vendors' messages on (OpenRouter, Claude on Bedrock or Vertex, a variant
    answering under its parent's id), and a false match costs no more than trying the
    context-window fallbacks for a 4xx that would not have been retried.

    `native_state`: the providers whose replies carry reasoning state of their own (not a
    Turnout `tnt1.` blob), by `provider.native_state`; the provider named like the format (its
    owner) first, then the others by id. Such a blob does not say who minted it."""

    context_window: tuple[tuple[str | None, str | None], ...] = ()
    native_state: tuple[str, ...] = ()

    @classmethod
    def of(cls, mappings: MappingsLike) -> ProviderTraits:
        matchers: dict[tuple[str | None, str | None], None] = {}
        native: list[tuple[bool, str]] = []
        for pid in mappings.providers:
            mapping = mappings.get(pid)
            defaults: Mapping[str, Any] = mapping.defaults if mapping is not None else {}
            for spec in _as_list(defaults.get("context_window_errors")):
                if not isinstance(spec, Mapping):
                    continue
                code, phrase = spec.get("code"), spec.get("message")
                pair = (
                    str(code).lower() if code else None,
                    str(phrase).lower() if phrase else None,
                )
                if pair != (None, None):
                    matchers[pair] = None
            fmt = defaults.get("native_state")
            if isinstance(fmt, str) and fmt:
                native.append((fmt != pid, pid))
        return cls(tuple(matchers), tuple(pid for _, pid in sorted(native)))

    def context_window_error(self, code: str | None, message: str) -> bool:
        code = (code or "").lower()
        message = message.lower()
        for want_code, phrase in self.context_window:
            if (want_code is None or want_code == code) and (phrase is None or phrase in message):
                return True
        return False


@cache
def _bundled_traits() -> ProviderTraits:
    return ProviderTraits.of(bundled_mappings())


def is_retryable(exc: UpstreamError) -> bool:
    """429, 408 and 5xx (timeouts and connection failures arrive as 504/502) are worth another
    try; other 4xx are the request's fault and would fail the same way anywhere."""
    return exc.status in (408, 429) or exc.status >= 500


def is_context_window_error(exc: UpstreamError, traits: ProviderTraits | None = None) -> bool:
    """The prompt does not fit the model: detected from the codes and messages the mappings
    list (`traits`; by default the bundled mappings')."""
    if exc.status >= 500 or exc.status == 429:
        return False
    traits = traits if traits is not None else _bundled_traits()
    return traits.context_window_error(exc.code, exc.message)


@dataclass(frozen=True, slots=True)
class Affinity:
    """Where a conversation's opaque state came from: the deployment id that minted it (when it
    was served through an alias) and the providers that can read it, best first."""

    providers: tuple[str, ...] = ()
    deployment: str | None = None

    def __bool__(self) -> bool:
        return bool(self.providers or self.deployment)


@dataclass(eq=False)
class DeploymentState:
    """One deployment of one alias, with its live counters."""

    id: str  # "<alias>#<index>": stable for a given config, names no key or URL
    alias: str
    deployment: Deployment
    in_flight: int = 0
    latency_ema: float | None = None  # seconds to the first byte
    cooldown_until: float = 0.0
    retry_at: float = 0.0  # the upstream asked us not to come back before this
    failures: deque[float] = field(default_factory=deque)
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    tokens_in_window: int = 0
    requests_total: int = 0
    failures_total: int = 0
    tokens_total: int = 0
    # The other replicas' requests and tokens in the window (`state: redis://…`, set by
    # server/state/cooldowns.py every 250 ms); 0 with one replica.
    shared_requests: int = 0
    shared_tokens: int = 0

    @property
    def model(self) -> str:
        return self.deployment.model

    @property
    def provider(self) -> str:
        return self.deployment.provider

    @property
    def weight(self) -> float:
        return self.deployment.weight

    def prune(self, now: float) -> None:
        edge = now - WINDOW_S
        while self.requests and self.requests[0] <= edge:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= edge:
            self.tokens_in_window -= self.tokens.popleft()[1]
        while self.failures and self.failures[0] <= edge:
            self.failures.popleft()

    def cooling(self, now: float) -> bool:
        return self.cooldown_until > now

    def limited_for(self, now: float) -> float | None:
        """Seconds until the deployment is under its rpm/tpm again; None when it is now."""
        self.prune(now)
        waits: list[float] = []
        rpm, tpm = self.deployment.rpm, self.deployment.tpm
        if rpm is not None and len(self.requests) + self.shared_requests >= rpm:
            # The oldest request that must leave the window for one slot to free up (when the
            # other replicas' alone fill it: one of their buckets, within SHARED_WAIT_S).
            index = len(self.requests) + self.shared_requests - rpm
            if not rpm:
                waits.append(WINDOW_S)
            elif index < len(self.requests):
                waits.append(self.requests[index] + WINDOW_S - now)
            else:
                waits.append(SHARED_WAIT_S)
        if tpm is not None and self.tokens_in_window + self.shared_tokens >= tpm:
            excess = self.tokens_in_window + self.shared_tokens - tpm
            when = now + (SHARED_WAIT_S if self.shared_tokens else WINDOW_S)
            for stamp, count in self.tokens:
                excess -= count
                if excess < 0:
                    when = stamp + WINDOW_S
                    break
            waits.append(when - now if tpm else WINDOW_S)
        return max(0.0, max(waits)) if waits else None

    def headroom(self, now: float) -> float:
        """Fraction of the tighter of rpm/tpm still free (1.0 without limits)."""
        self.prune(now)
        room = 1.0
        rpm, tpm = self.deployment.rpm, self.deployment.tpm
        if rpm:
            room = min(room, 1.0 - (len(self.requests) + self.shared_requests) / rpm)
        if tpm:
            room = min(room, 1.0 - (self.tokens_in_window + self.shared_tokens) / tpm)
        return room


@dataclass(frozen=True, slots=True)
class Pick:
    """The router's answer: a deployment and how long to wait before using it, or nothing and
    why (`limited`: every usable deployment is at its rpm/tpm; `cooling`: all are cooling down)."""

    state: DeploymentState | None
    wait: float = 0.0
    reason: str | None = None
    retry_after: float | None = None


class Router:
    """Deployment groups by alias, their live state, and the routing policy."""

    def __init__(
        self,
        settings: RouterSettings,
        models: Mapping[str, ModelAlias],
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        mappings: MappingsLike | None = None,
    ) -> None:
        self.settings = settings
        self._mappings = mappings
        self.models = models
        self.clock = clock
        self.rng = rng or random.Random()
        self.created = int(time.time())  # the `created` of /v1/models entries
        self.groups: dict[str, list[DeploymentState]] = {
            alias: [
                DeploymentState(f"{alias}#{i}", alias, dep)
                for i, dep in enumerate(spec.deployments)
            ]
            for alias, spec in models.items()
        }
        self._by_id = {s.id: s for states in self.groups.values() for s in states}
        # Told when this replica puts a deployment into cooldown (server/state/cooldowns.py
        # shares it with the other replicas); None: one replica, nothing to tell.
        self.on_cooldown: Callable[[DeploymentState], None] | None = None

    def state(self, deployment_id: str) -> DeploymentState | None:
        return self._by_id.get(deployment_id)

    @cached_property
    def traits(self) -> ProviderTraits:
        """Provider knowledge from the mappings given (else the bundled ones), read once."""
        if self._mappings is None:
            return _bundled_traits()
        return ProviderTraits.of(self._mappings)

    # -- plans -----------------------------------------------------------------------------

    def plan(self, alias: str, *, context_window: bool = False) -> list[str]:
        """The alias and its fallbacks, depth first (a fallback's own fallbacks follow it),
        each once. With `context_window`, the alias's `context_window_fallbacks` instead."""
        spec = self.models.get(alias)
        if spec is None:
            return []
        seen: list[str] = []

        def walk(name: str) -> None:
            if name in seen or name not in self.models:
                return
            seen.append(name)
            for nxt in self.models[name].fallbacks:
                walk(nxt)

        if context_window:
            for name in spec.context_window_fallbacks:
                walk(name)
        else:
            walk(alias)
        return seen

    # -- picking ---------------------------------------------------------------------------

    def pick(
        self,
        alias: str,
        *,
        tried: Mapping[str, int] | None = None,
        affinity: Affinity | None = None,
        exclude: Collection[str] = (),
    ) -> Pick:
        """The deployment of `alias` to try next. `tried` counts this request's failed attempts
        per deployment id: untried deployments come first; retrying one means a backoff wait.
        `exclude` names deployments that cannot serve this request at all."""
        now = self.clock()
        tried = tried or {}
        states = [s for s in self.groups.get(alias, []) if s.id not in exclude]
        usable: list[DeploymentState] = []
        limited: list[float] = []
        cooling: list[float] = []
        for s in states:
            if s.cooling(now):
                cooling.append(s.cooldown_until - now)
                continue
            if s.cooldown_until:  # the cooldown is over: start afresh (half-open)
                s.cooldown_until = 0.0
                s.failures.clear()
            wait = s.limited_for(now)
            if wait is not None:
                limited.append(wait)
                continue
            usable.append(s)
        if not usable:
            if limited:
                return Pick(None, reason="limited", retry_after=min(limited))
            return Pick(None, reason="cooling", retry_after=min(cooling) if cooling else None)
        fresh = [s for s in usable if not tried.get(s.id)]
        # Among the fresh ones, those not asking us to hold back (Retry-After) come first.
        ready = [s for s in fresh if s.retry_at <= now] or fresh
        if ready:
            chosen = self._choose(ready, affinity, now)
            return Pick(chosen, wait=max(0.0, chosen.retry_at - now))
        chosen = self._choose(usable, affinity, now)
        delay = self.backoff(tried.get(chosen.id, 1), max(0.0, chosen.retry_at - now))
        return Pick(chosen, wait=delay)

    def _choose(
        self, candidates: Sequence[DeploymentState], affinity: Affinity | None, now: float
    ) -> DeploymentState:
        if affinity:
            if affinity.deployment is not None:
                for s in candidates:
                    if s.id == affinity.deployment:
                        return s
            for provider in affinity.providers:
                same = [s for s in candidates if s.provider == provider]
                if same:
                    candidates = same
                    break
        if len(candidates) == 1:
            return candidates[0]
        strategy = self.settings.strategy
        if strategy == "least-busy":
            return self._best(candidates, lambda s: float(s.in_flight))
        if strategy == "latency":
            # Unmeasured deployments first, so every one gets measured.
            return self._best(candidates, lambda s: s.latency_ema or 0.0)
        if strategy == "usage":
            return self._best(candidates, lambda s: -s.headroom(now))
        return self._weighted(candidates)

    def _best(
        self, candidates: Sequence[DeploymentState], key: Callable[[DeploymentState], float]
    ) -> DeploymentState:
        scores = [key(s) for s in candidates]
        low = min(scores)
        ties = [s for s, score in zip(candidates, scores, strict=True) if score - low <= 1e-9]
        return self._weighted(ties)

    def _weighted(self, candidates: Sequence[DeploymentState]) -> DeploymentState:
        weighted = [s for s in candidates if s.weight > 0]
        if not weighted:  # only standbys left: share evenly
            return candidates[0] if len(candidates) == 1 else self.rng.choice(list(candidates))
        if len(weighted) == 1:
            return weighted[0]
        return self.rng.choices(weighted, weights=[s.weight for s in weighted])[0]

    def backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Wait before trying a deployment again after `failures` failures in this request:
        exponential with jitter (half to full), at least `retry_after`, at most MAX_WAIT_S
        (callers give up rather than wait when `retry_after` exceeds it)."""
        base = self.settings.backoff_s * (2.0 ** min(30, max(0, failures - 1)))
        delay = min(MAX_WAIT_S, base) * self.rng.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    # -- outcomes --------------------------------------------------------------------------

    def begin(self, state: DeploymentState) -> None:
        now = self.clock()
        state.prune(now)
        state.in_flight += 1
        state.requests.append(now)
        state.requests_total += 1

    def succeeded(self, state: DeploymentState, elapsed: float) -> None:
        """The upstream answered 2xx after `elapsed` seconds (time to first byte)."""
        self._latency(state, elapsed)
        state.retry_at = 0.0

    def failed(
        self, state: DeploymentState, exc: UpstreamError, elapsed: float, *, counts: bool = True
    ) -> bool:
        """Count a failed attempt (the caller still calls `finished`); `counts` False for a
        retry of a deployment this client request already failed on (one request, one
        failure). Returns True when this failure put the deployment into cooldown."""
        if not is_retryable(exc) or exc.code in LOCAL_CODES:
            return False
        now = self.clock()
        state.failures_total += 1
        if exc.status == 504:  # a timeout is a (very) slow answer as far as latency goes
            self._latency(state, elapsed)
        if exc.retry_after is not None:
            state.retry_at = now + min(exc.retry_after, MAX_WAIT_S)
        if not counts:
            return False
        state.prune(now)
        state.failures.append(now)
        tripped = exc.code in EJECT_CODES or len(state.failures) >= max(
            1, self.settings.allowed_fails
        )
        if not tripped or not self.settings.cooldown_s or not self._has_alternative(state, now):
            return False
        state.cooldown_until = now + self.settings.cooldown_s
        state.failures.clear()
        if self.on_cooldown is not None:
            self.on_cooldown(state)
        return True

    def _has_alternative(self, state: DeploymentState, now: float) -> bool:
        """Whether the alias of `state`, with its fallbacks, has another deployment that is
        not cooling down: only then may `state` be taken out."""
        for alias in self.plan(state.alias):
            for other in self.groups.get(alias, ()):
                if other is not state and not other.cooling(now):
                    return True
        return False

    def finished(self, state: DeploymentState, tokens: int | None = None) -> None:
        """The attempt is over (its upstream connection released); `tokens` it consumed."""
        state.in_flight = max(0, state.in_flight - 1)
        if tokens:
            now = self.clock()
            state.tokens.append((now, tokens))
            state.tokens_in_window += tokens
            state.tokens_total += tokens

    def _latency(self, state: DeploymentState, elapsed: float) -> None:
        prev = state.latency_ema
        state.latency_ema = (
            elapsed if prev is None else LATENCY_ALPHA * elapsed + (1 - LATENCY_ALPHA) * prev
        )

    # -- visibility ------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """Every deployment's state, for `GET /health/deployments` (no keys, no URLs)."""
        now = self.clock()
        out: list[dict[str, Any]] = []
        for states in self.groups.values():
            for s in states:
                s.prune(now)
                cooling = s.cooling(now)
                ema = s.latency_ema
                out.append(
                    {
                        "id": s.id,
                        "alias": s.alias,
                        "model": s.model,
                        "provider": s.provider,
                        "region": s.deployment.region,
                        "weight": s.weight,
                        "state": "cooling_down" if cooling else "healthy",
                        "cooldown_remaining_s": round(s.cooldown_until - now, 3) if cooling else 0,
                        "in_flight": s.in_flight,
                        "latency_ema_ms": round(ema * 1000, 1) if ema is not None else None,
                        "recent_failures": len(s.failures),
                        "requests_total": s.requests_total,
                        "failures_total": s.failures_total,
                        "rpm_used": len(s.requests) + s.shared_requests,
                        "rpm_limit": s.deployment.rpm,
                        "tpm_used": s.tokens_in_window + s.shared_tokens,
                        "tpm_limit": s.deployment.tpm,
                    }
                )
        return out


def affinity_of(
    entries: Iterable[Mapping[str, Any]],
    chain: Sequence[Any] = (),
    traits: ProviderTraits | None = None,
) -> Affinity:
    """Affinity for a request: from the newest chain record whose output carries opaque
    reasoning state (its deployment id and provider), else from the request's own reasoning
    items (the provider named in a Turnout `tnt1.` blob; a provider's own blob → the providers
    whose mappings declare `native_state`, from `traits`, by default the bundled mappings')."""
    for record in reversed(chain):
        output = (getattr(record, "response", None) or {}).get("output") or []
        if any(it.get("type") == "reasoning" and it.get("encrypted_content") for it in output):
            dep_id = _served_by(record)
            provider = getattr(record, "provider", None)
            return Affinity((provider,) if provider else (), dep_id)
    for entry in reversed(list(entries)):
        if entry.get("kind") != "reasoning":
            continue
        if entry.get("provider"):
            return Affinity((str(entry["provider"]),))
        if entry.get("encrypted_content"):
            traits = traits if traits is not None else _bundled_traits()
            return Affinity(traits.native_state)
    return Affinity()


def _served_by(record: Any) -> str | None:
    for attempt in reversed(getattr(record, "attempts", None) or []):
        if isinstance(attempt, dict) and attempt.get("ok") and attempt.get("deployment_id"):
            return str(attempt["deployment_id"])
    return None
