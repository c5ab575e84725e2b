"""server/connections.py without a server: the open-file limit and the refusal warnings.

The protocol itself is tested on the wire, against `turnout serve`
(tests/test_e2e_connection_limits.py)."""

from __future__ import annotations

import resource

import pytest

from turnout.server.connections import ConnectionLimits, raise_file_limit


def _fake_limits(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, hard))

    def setrlimit(_: int, limits: tuple[int, int]) -> None:
        calls.append(limits)

    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    return calls


def test_the_soft_file_limit_is_raised_to_what_the_cap_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _fake_limits(monkeypatch, soft=1024, hard=1_000_000)
    assert raise_file_limit(4096) is None
    assert calls == [(2 * 4096 + 256, 1_000_000)]


def test_a_hard_file_limit_below_the_cap_is_a_warning_naming_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _fake_limits(monkeypatch, soft=1024, hard=2048)
    warning = raise_file_limit(4096)
    assert calls == [(2048, 2048)]  # as far as it goes
    assert warning is not None
    assert warning.startswith("limits.max_connections: 4096 connections may need 8448 open")
    assert "may open 2048" in warning


def test_enough_files_or_no_cap_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_limits(monkeypatch, soft=20_000, hard=20_000)
    assert raise_file_limit(4096) is None
    assert raise_file_limit(None) is None
    assert calls == []


def test_refusals_are_one_warning_per_interval_with_their_count() -> None:
    limits = ConnectionLimits(read_timeout_s=1, max_connections=1)
    assert limits.admit() and not limits.admit()
    assert limits.refusal_warning(100.0) == (
        "refused 1 connection: limits.max_connections (1) open"
    )
    assert limits.refusal_warning(101.0) is None
    assert limits.refusal_warning(105.0) is None
    assert limits.refusal_warning(110.5) == (
        "refused 3 connections: limits.max_connections (1) open"
    )
