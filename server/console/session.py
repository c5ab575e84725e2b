"""Console sessions: signed, expiring tokens derived from the master key.

Why a signed token and not a random id kept in memory: a gateway runs several workers and
replicas, and a login on one must be good on all of them. The cookie carries
`v1.<sid>.<issued>.<expires>.<mac>`, the MAC an HMAC-SHA256 under a key derived from the
master key (never the master key itself), so every process holding the same master key checks
it without shared state, and changing the master key ends every session at once.

Logging out adds the session id to a denylist in this process (kept until the token expires);
the browser's cookie is cleared too. Another replica still accepts a copy of that token until
its expiry (`ui.session_ttl_s`, 8 h by default): documented in the README.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SESSION_COOKIE", "Session", "Sessions"]

SESSION_COOKIE = "turnout_console"
_VERSION = "v1"
_SKEW_S = 60  # a token issued this far "in the future" (another replica's clock) still counts
_MAX_ENDED = 100_000  # logged-out ids remembered at once; the oldest go first


@dataclass(frozen=True, slots=True)
class Session:
    sid: str  # random, public only to its holder; the CSRF token is derived from it
    issued_at: int
    expires_at: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Sessions:
    """Issues and checks session tokens; remembers this process's logouts."""

    def __init__(
        self, master_key: str, *, ttl_s: int, clock: Callable[[], float] = time.time
    ) -> None:
        # A key of its own, so a MAC here is never a MAC anything else in Turnout would accept.
        self._key = hmac.new(
            master_key.encode(), b"turnout console session v1", hashlib.sha256
        ).digest()
        self._ttl = ttl_s
        self._clock = clock
        self._ended: dict[str, int] = {}  # sid -> expires_at

    @property
    def ttl_s(self) -> int:
        return self._ttl

    def mac(self, purpose: str, value: str) -> str:
        """A keyed MAC of `value` for one `purpose` (the session's own, CSRF tokens)."""
        message = f"{purpose}\x00{value}".encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def issue(self) -> tuple[Session, str]:
        """A new session and its cookie value."""
        now = int(self._clock())
        session = Session(secrets.token_urlsafe(18), now, now + self._ttl)
        payload = f"{_VERSION}.{session.sid}.{session.issued_at}.{session.expires_at}"
        return session, f"{payload}.{self.mac('session', payload)}"

    def verify(self, token: str | None) -> Session | None:
        """The session a cookie value stands for, or None: malformed, forged, expired, from
        the future, or logged out here."""
        if not token or len(token) > 256:
            return None
        payload, _sep, mac = token.rpartition(".")
        parts = payload.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            return None
        if not hmac.compare_digest(mac.encode(), self.mac("session", payload).encode()):
            return None
        try:
            issued, expires = int(parts[2]), int(parts[3])
        except ValueError:
            return None
        now = self._clock()
        if not issued - _SKEW_S <= now < expires or parts[1] in self._ended:
            return None
        return Session(parts[1], issued, expires)

    def end(self, session: Session) -> None:
        """Log out: this process refuses the token from now on."""
        now = self._clock()
        for sid in [s for s, exp in self._ended.items() if exp <= now]:
            del self._ended[sid]
        if len(self._ended) >= _MAX_ENDED:
            self._ended.pop(next(iter(self._ended)))
        self._ended[session.sid] = session.expires_at
