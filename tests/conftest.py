from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """The session's PostgreSQL database (`tests.support.postgres`): `.url()` is a fresh, empty store URL."""
    from tests.support.postgres import drop_session_database, session_database

    database = session_database()
    try:
        yield database
    finally:
        drop_session_database()
