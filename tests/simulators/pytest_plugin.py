"""pytest fixtures.

Enable with `pytest_plugins = ["tests.simulators.pytest_plugin"]` in a conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import Simulator

__all__ = ["provider_sim", "provider_sim_session"]


@pytest.fixture(scope="session")
def provider_sim_session() -> Iterator[Simulator]:
    with Simulator() as sim:
        yield sim


@pytest.fixture
def provider_sim(provider_sim_session: Simulator) -> Iterator[Simulator]:
    """The session simulator, with requests and scripted replies reset around each test."""
    provider_sim_session.reset()
    yield provider_sim_session
    provider_sim_session.reset()
