"""The Deployments page: the router's live view of each alias deployment in this process
(`Router.snapshot()`, what `GET /health/deployments` answers), refreshed by the page's script
from `/ui/deployments.json` every two seconds."""

from __future__ import annotations

import time
from typing import Any

from turnout.server.gateway import Gateway

__all__ = ["deployments_state"]


def deployments_state(gateway: Gateway) -> dict[str, Any]:
    return {
        "strategy": gateway.settings.router.strategy,
        "deployments": gateway.router.snapshot(),
        "at": time.time(),
    }
