"""What the console keeps per process: its session signer, the login throttle, its settings.
Built by `create_app` when the console is on and kept in `app.state.console`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from turnout.server.config import UiSettings
from turnout.server.console.security import is_https
from turnout.server.console.session import SESSION_COOKIE, Session, Sessions
from turnout.server.console.throttle import LoginThrottle

__all__ = ["ACTOR", "Console"]

# Who the audit log says made a change through the console (the master key logs in).
ACTOR = "ui:master_key"


@dataclass
class Console:
    master_key: str = field(repr=False)
    ui: UiSettings
    sessions: Sessions = field(init=False)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.master_key, ttl_s=self.ui.session_ttl_s)

    def secure(self, scope: Any) -> bool:
        """Whether cookies get the Secure flag (see `UiSettings.secure_cookie`)."""
        return self.ui.secure_cookie == "always" or is_https(scope)

    def session(self, cookies: dict[str, str]) -> Session | None:
        return self.sessions.verify(cookies.get(SESSION_COOKIE))
