"""Shared state for several replicas (`state: redis://…`): what replicas must agree on (rate
limits, budget spend, deployment cooldowns) kept in Redis. Without `state:` nothing here is
used and everything stays in-process (`server/access/rate_limits.py`, `budgets.py`, the
router's own counters)."""

from __future__ import annotations

from turnout.server.state.base import STATE_TIMEOUT_S, parse_state_url, state_unavailable

__all__ = ["STATE_TIMEOUT_S", "parse_state_url", "state_unavailable"]
