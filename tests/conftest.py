"""Shared fixtures: real PostgreSQL and Redis servers started for the test session."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.servers import PostgresServer, RedisServer

VALID_ENV: dict[str, str] = {
    "APP_ENV": "test",
    "GOOGLE_CLIENT_ID": "test-client-id-1234567890.apps.googleusercontent.com",
    "GOOGLE_CLIENT_SECRET": "test-client-secret-abcdefghij",
    "OPENAI_API_KEY": "sk-test-0123456789abcdef",
    "JWT_SECRET": "0123456789abcdef0123456789abcdef-test-secret",
    "LOG_LEVEL": "warning",
}

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().init()
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def database_url(postgres: PostgresServer) -> str:
    """A fresh, empty database for one test."""
    return postgres.create_database(f"t{next(_db_counter)}")


@pytest.fixture
def valid_env() -> dict[str, str]:
    return dict(VALID_ENV)
