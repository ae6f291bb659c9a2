"""Fixtures of the store contract suite: every test runs against every backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin_host.clock import FakeClock

BACKENDS = ["memory", "sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store URL of each backend (a reopened URL reads the same data, except memory://)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres").url())
    return f"sqlite:///{tmp_path / 'state' / 'state.db'}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
