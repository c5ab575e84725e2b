"""A configured ``api_base`` brought to the form a mapping's URL template expects.

Providers print their base URL in different forms (``https://api.groq.com/openai/v1`` or just
the host, Gemini's with or without ``/v1beta``, Azure AI Foundry's ``…/models``), and users
paste what they see. A mapping says, under ``provider.api_base_path``, how a base becomes the
one its ``request.url`` builds on; the engine names no provider::

    api_base_path:
      strip: [/v1beta]        # trailing paths the url template adds itself: removed if present
      complete: /openai/v1    # the documented base path: a base whose path is empty or a leading
                              # part of it gets the rest; any other path is a proxy's, kept as is
      ensure: /models         # appended unless the base already ends with it
      hosts:                  # first host (regex, searched) that matches uses its own rule
        - {match: '\\.models\\.ai\\.azure\\.com$'}

Order: trailing ``/`` dropped, then ``strip``, ``complete``, ``ensure``. A base without a
scheme and host, or with a query or fragment, is only stripped of trailing slashes. The work is
done once per distinct base (a small cache per mapping), so a request pays a dict lookup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = ["BaseNormalizer", "BaseRule", "compile_base_path"]

_CACHE_LIMIT = 256  # bases come from the config: a handful per provider


@dataclass(frozen=True)
class BaseRule:
    strip: tuple[str, ...] = ()  # longest first, so /openai/v1 is tried before /openai
    complete: str = ""
    ensure: str = ""

    def apply(self, path: str) -> str:
        for suffix in self.strip:
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break
        want = self.complete
        if want and (path == "" or want.startswith(path + "/")):
            path = want
        if self.ensure and not path.endswith(self.ensure):
            path += self.ensure
        return path


def _rule(spec: Mapping[str, Any]) -> BaseRule:
    strip = sorted({str(s).rstrip("/") for s in spec.get("strip") or ()}, key=len, reverse=True)
    return BaseRule(
        strip=tuple(s for s in strip if s),
        complete=str(spec.get("complete") or "").rstrip("/"),
        ensure=str(spec.get("ensure") or "").rstrip("/"),
    )


class BaseNormalizer:
    """``normalizer(api_base) -> api_base`` for one mapping; pure, cached per distinct base."""

    __slots__ = ("_cache", "_default", "_hosts")

    def __init__(
        self,
        default: BaseRule | None = None,
        hosts: tuple[tuple[re.Pattern[str], BaseRule], ...] = (),
    ) -> None:
        self._default = default or BaseRule()
        self._hosts = hosts
        self._cache: dict[str, str] = {}

    def __call__(self, api_base: str) -> str:
        found = self._cache.get(api_base)
        if found is None:
            found = self.normalize(api_base)
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[api_base] = found
        return found

    def normalize(self, api_base: str) -> str:
        base = api_base.strip().rstrip("/")
        try:
            parts = urlsplit(base)
        except ValueError:
            return base
        if not (parts.scheme and parts.netloc) or parts.query or parts.fragment:
            return base  # not a URL this can reason about: used as given (the old behaviour)
        host = (parts.hostname or "").lower()
        rule = next((r for pattern, r in self._hosts if pattern.search(host)), self._default)
        path = rule.apply(parts.path.rstrip("/"))
        return f"{parts.scheme}://{parts.netloc}{path}"


def compile_base_path(spec: Mapping[str, Any] | None) -> BaseNormalizer:
    """The normalizer for a mapping's ``provider.api_base_path`` (schema-checked already);
    a bad host regex raises ``re.error``."""
    if not spec:
        return BaseNormalizer()
    hosts = tuple(
        (re.compile(str(h["match"]), re.IGNORECASE), _rule(h)) for h in spec.get("hosts") or ()
    )
    return BaseNormalizer(_rule(spec), hosts)
