"""A PostgreSQL database for one test session: created on first use, dropped at the end.

The server is `CHANNEL_RUNTIME_TEST_POSTGRES` (default the machine's, which
`scripts/postgres` starts). Each `url()` is a fresh schema of that database (the
store's tables land in the schema its `search_path` names), so every store opened
for a test starts empty; never the `postgres` or `test` databases themselves.
A server that does not answer fails the tests that need it, with the reason.
"""

from __future__ import annotations

import os
import secrets
from urllib.parse import quote

import psycopg
import pytest

SERVER_ENV = "CHANNEL_RUNTIME_TEST_POSTGRES"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


class PostgresForTests:
    def __init__(self, server: str) -> None:
        self.server = server
        self.name = f"cr_test_{os.getpid()}_{secrets.token_hex(4)}"
        self._schemas = 0
        try:
            with psycopg.connect(server, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
        except psycopg.Error as exc:
            pytest.fail(
                f"PostgreSQL does not answer at {server} ({exc}); run scripts/postgres (scripts/test does) "
                f"or point {SERVER_ENV} at a server",
                pytrace=False,
            )
        self.database_url = _with_database(server, self.name)

    def url(self) -> str:
        """A store URL on a new, empty schema of the session's database."""
        self._schemas += 1
        schema = f"t{self._schemas}_{secrets.token_hex(3)}"
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        separator = "&" if "?" in self.database_url else "?"
        return f"{self.database_url}{separator}options={quote(f'-csearch_path={schema}')}"

    def drop(self) -> None:
        with psycopg.connect(self.server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _with_database(server: str, name: str) -> str:
    base, _, query = server.partition("?")
    head, _, _ = base.rpartition("/")
    if "://" not in head:  # postgresql://host with no database part
        head = base
    return f"{head}/{name}" + (f"?{query}" if query else "")


_SESSION: PostgresForTests | None = None


def session_database() -> PostgresForTests:
    """The session's database (created on first use; the `postgres` fixture drops it at the end)."""
    global _SESSION
    if _SESSION is None:
        _SESSION = PostgresForTests(os.environ.get(SERVER_ENV) or DEFAULT_SERVER)
    return _SESSION


def drop_session_database() -> None:
    global _SESSION
    if _SESSION is not None:
        _SESSION.drop()
        _SESSION = None
