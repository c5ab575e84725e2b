"""The admin console at `/ui`: server-rendered pages for spend, keys, deployments and recent
requests, behind the master key. See README "Admin console" and docs/internals.md."""

from __future__ import annotations

from turnout.server.console.routes import console_router
from turnout.server.console.state import ACTOR, Console

__all__ = ["ACTOR", "Console", "console_router"]
