"""Where the tests' data is: the repository's own copy (tests/fixtures/README.md says where each
file came from). Nothing outside the repository is read."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CLIENT_FIXTURES", "FIXTURES", "PROVIDER_FIXTURES", "REFERENCE", "ROOT"]

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PROVIDER_FIXTURES = FIXTURES / "providers"
CLIENT_FIXTURES = FIXTURES / "clients"
REFERENCE = FIXTURES / "reference"
