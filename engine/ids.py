"""Id minting for Responses objects (``resp_``, ``msg_``, ``fc_``, ``call_``, ``rs_``, ``ig_``,
``ws_``) and conversations (``conv_``).

Ids look like OpenAI's (prefix + hex) so clients that sniff prefixes keep working; provider ids are
never reused because they collide across providers and leak upstream details.
"""

from __future__ import annotations

import secrets

__all__ = ["DeterministicIdFactory", "IdFactory"]


class IdFactory:
    """Random ids: prefix + 48 hex chars (24 random bytes), ``call_`` + 24 hex like OpenAI."""

    __slots__ = ()

    def new(self, prefix: str, nbytes: int = 24) -> str:
        return prefix + secrets.token_hex(nbytes)

    def response(self) -> str:
        return self.new("resp_")

    def message(self) -> str:
        return self.new("msg_")

    def function_call(self) -> str:
        return self.new("fc_")

    def call(self) -> str:
        return self.new("call_", 12)

    def reasoning(self) -> str:
        return self.new("rs_")

    def image(self) -> str:
        return self.new("ig_")

    def web_search(self) -> str:
        return self.new("ws_")

    def conversation(self) -> str:
        return self.new("conv_")


class DeterministicIdFactory(IdFactory):
    """Counter-based ids for tests: ``msg_0001``, ``msg_0002``, ``fc_0001`` ... per prefix.

    Two factories created alike mint the same sequence, so two builders fed the same ops produce
    byte-identical output.
    """

    __slots__ = ("_counters",)

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}

    def new(self, prefix: str, nbytes: int = 24) -> str:
        n = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = n
        return f"{prefix}{n:04d}"
