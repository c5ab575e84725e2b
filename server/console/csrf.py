"""CSRF tokens for the console's forms.

Every form that changes something carries a token derived from the session
(`Sessions.mac("csrf", sid)`), checked in constant time on every POST: no server-side table,
good on every replica, and dead with the session (logout, expiry). The login form has no session
yet: it carries a MAC of a random nonce that the login page also set in a cookie of its own
(SameSite=Strict), so another site cannot post a login either.

Why not Litestar's CSRFConfig: it is an app-wide middleware (every `/v1` request would pass
through its exclusion check), its double-submit cookie is not tied to the session (logging out
leaves it valid) and it would need a secret shared by the replicas; the token here has none of
those costs and the same protection together with the SameSite=Strict session cookie.
"""

from __future__ import annotations

import hmac
import secrets

from turnout.server.console.session import Session, Sessions

__all__ = ["CSRF_FIELD", "LOGIN_COOKIE", "csrf_ok", "csrf_token", "login_nonce", "login_ok",
           "login_token"]  # fmt: skip

CSRF_FIELD = "csrf"
LOGIN_COOKIE = "turnout_console_login"


def csrf_token(sessions: Sessions, session: Session) -> str:
    return sessions.mac("csrf", session.sid)


def csrf_ok(sessions: Sessions, session: Session, given: str | None) -> bool:
    expected = csrf_token(sessions, session)
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def login_nonce() -> str:
    return secrets.token_urlsafe(18)


def login_token(sessions: Sessions, nonce: str) -> str:
    return sessions.mac("login", nonce)


def login_ok(sessions: Sessions, nonce: str | None, given: str | None) -> bool:
    if not nonce or given is None or len(nonce) > 64:
        return False
    return hmac.compare_digest(given.encode(), login_token(sessions, nonce).encode())
