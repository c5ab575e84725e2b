"""Model access (issue 14, point 4): which `model` names a caller may send.

Two layers, both over the name the client sends (an alias, or `provider/model`), never over
what an alias routes to: an alias's deployments and fallbacks are the operator's choice and
always allowed.

1. The gateway (config `access`): `models: any` (the default) serves every `provider/model`
   name of every mapping; `models: aliases_only` serves only the aliases under `models:` and
   the names the `allow` globs match, to every caller, the master key included.
2. The caller: a virtual key's `models` and its team's `models` (aliases, `provider/model`
   names or fnmatch globs, case-sensitive). A key with a list may use only what it names; a key
   whose team has a list, only what the team's names; with both, a name must be on both (the
   team sets the ceiling, the key narrows it). No list: whatever the gateway serves. An empty
   list allows nothing.

A refusal is a 403 `model_not_allowed` naming the model (OpenAI answers 403 for a model a
project may not use). `GET /v1/models` lists only what the caller may use (`listing`), and
`GET /v1/models/{id}` of anything else is OpenAI's 404 "does not exist or you do not have
access to it".

Cheap: exact names are a set lookup, the globs of a list one compiled regex (cached by the
list's contents); a team's list is read through `Teams` (the store at most once a second).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Collection, Iterable, Mapping

from turnout.engine.errors import RequestError
from turnout.server.access.teams import Teams
from turnout.server.config import AccessSettings
from turnout.server.pricing import UsageCounts
from turnout.server.request_context import Caller

__all__ = ["ModelAccess", "Patterns", "compiled", "not_allowed"]

_GLOB = frozenset("*?[")


class Patterns:
    """A list of names and globs: exact names in a set, the globs as one anchored regex."""

    __slots__ = ("names", "regex")

    def __init__(self, patterns: Iterable[str]) -> None:
        names: set[str] = set()
        globs: list[str] = []
        for pattern in patterns:
            if _GLOB.isdisjoint(pattern):
                names.add(pattern)
            else:
                globs.append(pattern)
        self.names = frozenset(names)
        # fnmatch.translate gives "(?s:…)\Z": anchored at the end, `match` anchors the start.
        self.regex = re.compile("|".join(map(fnmatch.translate, globs))) if globs else None

    def match(self, name: str) -> bool:
        return name in self.names or (self.regex is not None and self.regex.match(name) is not None)


@functools.lru_cache(maxsize=4096)
def compiled(patterns: tuple[str, ...]) -> Patterns:
    """One compiled `Patterns` per distinct list (keys are re-read every second: same lists)."""
    return Patterns(patterns)


def not_allowed(model: str, message: str) -> RequestError:
    return RequestError(403, message, param="model", code="model_not_allowed")


class ModelAccess:
    """The model check of `Admission` (server/access/admission.py), and `GET /v1/models`'s
    filter."""

    def __init__(self, access: AccessSettings, aliases: Collection[str], teams: Teams) -> None:
        self.aliases_only = access.aliases_only
        self.allow = access.allow
        self.aliases = tuple(aliases)  # in the config's order, for the listing
        self._alias_set = frozenset(self.aliases)
        self.served = Patterns(access.allow)
        self.teams = teams

    def serves(self, model: str) -> bool:
        """The gateway layer: whether this gateway serves `model` to anyone."""
        return not self.aliases_only or model in self._alias_set or self.served.match(model)

    async def refusal(self, caller: Caller, model: str) -> RequestError | None:
        """Why `caller` may not use `model`, or None when it may."""
        if not self.serves(model):
            return not_allowed(
                model,
                f"The model '{model}' is not served by this gateway: it serves its configured "
                "models only (GET /v1/models lists them).",
            )
        key = caller.key
        if key is None:  # the master key, an open gateway
            return None
        if key.models is not None and not compiled(tuple(key.models)).match(model):
            return not_allowed(
                model,
                f"The API key '{key.id}' is not allowed to use the model '{model}' "
                "(GET /v1/models lists the models it may use).",
            )
        team = None if caller.team is None else await self.teams.get(caller.team)
        if team is None or team.models is None or compiled(tuple(team.models)).match(model):
            return None
        return not_allowed(
            model,
            f"The team '{team.name}' of the API key '{key.id}' is not allowed to use the model "
            f"'{model}' (GET /v1/models lists the models it may use).",
        )

    async def allows(self, caller: Caller, model: str) -> bool:
        return await self.refusal(caller, model) is None

    async def require(self, caller: Caller, model: str) -> None:
        refused = await self.refusal(caller, model)
        if refused is not None:
            raise refused

    # -- the Check protocol (server/access/admission.py) -----------------------------------

    async def admit(self, caller: Caller, model: str) -> Mapping[str, str] | None:
        await self.require(caller, model)
        return None

    def settle(self, caller: Caller, cost: float | None, counts: UsageCounts) -> None:
        return None  # what a response cost changes nothing here

    # -- GET /v1/models ---------------------------------------------------------------------

    async def listing(self, caller: Caller, providers: Iterable[str]) -> list[str]:
        """The names a model picker should offer `caller`: the aliases (with none configured
        and the gateway serving any name, one `provider/*` pattern per provider), the `allow`
        patterns, and the caller's own list's names and patterns; each kept when the caller
        may use it (a pattern: when the caller's lists accept it as a name)."""
        names: dict[str, None] = dict.fromkeys(self.aliases)
        if not names and not self.aliases_only:
            names.update(dict.fromkeys(f"{pid}/*" for pid in providers))
        names.update(dict.fromkeys(self.allow))
        key = caller.key
        if key is not None:
            names.update(dict.fromkeys(key.models or ()))
            team = None if caller.team is None else await self.teams.get(caller.team)
            if team is not None:
                names.update(dict.fromkeys(team.models or ()))
        return [name for name in names if await self.allows(caller, name)]
