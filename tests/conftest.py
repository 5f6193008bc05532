"""Shared fixtures: real PostgreSQL and Redis servers started for the test session.

Servers and raw databases
- `postgres`, `redis_server` (session): throwaway servers (tests/servers.py).
- `database_url`: a fresh, EMPTY database (no tables).
- `valid_env`: a copy of VALID_ENV, an environment that passes config validation.

A ready app (use these for endpoint tests)
- `migrated_database_url`: a fresh database with the real aerich migrations applied
  (cloned from a template migrated once per session with `python -m app.db.cli upgrade`,
  so it costs one CREATE DATABASE per test).
- `app_settings`: Settings from VALID_ENV + that database + the session Redis
  (RATE_LIMIT_MAX_REQUESTS raised to 100000 so unrelated tests never hit the limit;
  rate-limit tests build their own settings with dataclasses.replace(app_settings, ...)).
- `app`: create_app(app_settings); Redis is flushed first. Call it with the ASGI client:
  `_, response = await app.asgi_client.get("/api/me", headers=auth_headers(user))`
  (every request runs the server start/stop listeners, so the ORM is set up per request).
- `make_app`: `make_app(replace_settings(app_settings, ...))` builds an app with other
  settings (same Redis flush and Sanic registry handling as `app`).
- `client`: the same app behind a client that runs the start listeners once (first request)
  and the stop listeners at teardown, like a real server: `_, response = await
  client.get(...)`. Much faster for many requests; add extra routes before the first one.
- `start_client`: `client = start_client(make_app(...))`, the same for an app built in the test.
- `make_user`: `user = await make_user(email=..., **fields)` inserts a User row
  (defaults: unique email, a name).
- `auth_headers`: `auth_headers(user_or_id, scopes=("user",))` -> {"Authorization":
  "Bearer <access token>"} signed with app_settings (no database access).
- `db_session`: `async with db_session(): ...` opens the ORM on the test's migrated database
  for direct queries/assertions outside requests (e.g. `await RefreshToken.filter(...)`).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis
from sanic import Sanic
from sanic_testing.testing import ASGI_HOST, ASGI_PORT, SanicASGITestClient, TestingResponse

from tests.servers import PostgresServer, RedisServer

ROOT = Path(__file__).resolve().parent.parent
MIGRATED_TEMPLATE_DB = "aa_migrated_template"

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


@pytest.fixture(scope="session")
def migrated_template(postgres: PostgresServer) -> str:
    """A database migrated once per session with the real CLI; tests clone it."""
    url = postgres.create_database(MIGRATED_TEMPLATE_DB)
    with tempfile.NamedTemporaryFile("w", suffix=".env") as empty_env:
        result = subprocess.run(
            [sys.executable, "-m", "app.db.cli", "upgrade", "--env-file", empty_env.name],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, **VALID_ENV, "DATABASE_URL": url})
    if result.returncode != 0:
        raise RuntimeError(f"migrating the template database failed:\n{result.stdout}"
                           f"\n{result.stderr}")
    return MIGRATED_TEMPLATE_DB


@pytest.fixture(scope="session")
async def postgres_admin(postgres: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    """One superuser connection for the per-test CREATE DATABASE: starting a psql process
    for every test cost more than the statement itself."""
    connection = await asyncpg.connect(host="127.0.0.1", port=postgres.port, user="postgres",
                                       password=postgres.password, database="postgres")
    yield connection
    await connection.close()


@pytest.fixture
async def migrated_database_url(postgres: PostgresServer, migrated_template: str,
                                postgres_admin: asyncpg.Connection) -> str:
    """A fresh database at the migration head, for one test. Not dropped afterwards: that
    would double the per-test cost, and the whole throwaway cluster goes at session end."""
    name = f"m{next(_db_counter)}"
    # FILE_COPY (PostgreSQL 15+; older servers always copy files): for a template this small
    # copying the files is cheaper than the default WAL_LOG, which writes every page twice.
    strategy = " STRATEGY FILE_COPY" if postgres_admin.get_server_version().major >= 15 else ""
    await postgres_admin.execute(
        f"CREATE DATABASE {name} OWNER {postgres.user} TEMPLATE {migrated_template}{strategy}")
    return postgres.url(name)


@pytest.fixture
def app_settings(migrated_database_url: str, redis_server: RedisServer) -> Any:
    from app.config import load_settings

    return load_settings({**VALID_ENV, "DATABASE_URL": migrated_database_url,
                          "REDIS_URL": redis_server.url(),
                          "RATE_LIMIT_MAX_REQUESTS": "100000"}, env_file=None)


@pytest.fixture
def make_app() -> Iterator[Callable[[Any], Sanic]]:
    from app.factory import create_app

    # Sanic refuses a second app with the same name unless in test mode.
    Sanic.test_mode = True
    built: list[Sanic] = []

    def build(settings: Any) -> Sanic:
        client = redis.Redis.from_url(settings.redis_url)
        try:
            client.flushdb()  # no rate-limit counters or cached state from earlier tests
        except redis.ConnectionError:
            pass  # a test of a Redis outage
        finally:
            client.close()
        built.append(create_app(settings))
        return built[-1]

    yield build
    for application in built:
        Sanic._app_registry.pop(application.name, None)


@pytest.fixture
def app(app_settings: Any, make_app: Callable[[Any], Sanic]) -> Sanic:
    return make_app(app_settings)


class StartedASGIClient(SanicASGITestClient):
    """app.asgi_client without the per-request server start/stop: listeners run once."""

    def __init__(self, app: Sanic) -> None:
        super().__init__(app)
        self._started = False

    async def request(self, method: str, url: str, gather_request: bool = True,  # type: ignore[override]
                      *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        app = self.sanic_app
        if not self._started:
            app.router.reset()
            app.signal_router.reset()
            await app._startup()
            await app._server_event("init", "before")
            await app._server_event("init", "after")
            for route in app.router.routes:
                route.extra.request_middleware.appendleft(self._collect_request)
            app.request_middleware.appendleft(self._collect_request)
            self._started = True
        if not url.startswith(("http:", "https:")):
            url = f"http://{ASGI_HOST}:{ASGI_PORT}/{url.lstrip('/')}"
        self.gather_request = gather_request
        response = await httpx.AsyncClient.request(self, method, url, *args, **kwargs)
        response.__class__ = TestingResponse
        return (self.last_request if gather_request else None), response

    async def stop(self) -> None:
        if self._started:
            await self.sanic_app._server_event("shutdown", "before")
            await self.sanic_app._server_event("shutdown", "after")
            self._started = False


@pytest.fixture
async def start_client() -> AsyncIterator[Callable[[Sanic], StartedASGIClient]]:
    """`client = start_client(other_app)`: a `client` for an app built in the test (e.g. with
    make_app); its stop listeners run at teardown."""
    started: list[StartedASGIClient] = []

    def start(application: Sanic) -> StartedASGIClient:
        started.append(StartedASGIClient(application))
        return started[-1]

    yield start
    for each in started:
        await each.stop()
        await each.aclose()


@pytest.fixture
async def client(app: Sanic, start_client: Callable[[Sanic], StartedASGIClient]
                 ) -> StartedASGIClient:
    return start_client(app)


@pytest.fixture
def db_session(app_settings: Any) -> Callable[[], AbstractAsyncContextManager[None]]:
    from tortoise import Tortoise
    from tortoise.context import TortoiseContext

    from app.db import tortoise_config

    @asynccontextmanager
    async def session() -> AsyncIterator[None]:
        # A private ORM context: independent of (and invisible to) the app's own.
        with TortoiseContext():
            await Tortoise.init(config=tortoise_config(app_settings.database_url))
            try:
                yield
            finally:
                await Tortoise.close_connections()

    return session


@pytest.fixture
def make_user(db_session: Callable[[], AbstractAsyncContextManager[None]]
              ) -> Callable[..., Awaitable[Any]]:
    from app.db.models import User

    counter = itertools.count(1)

    async def create(**fields: Any) -> User:
        number = next(counter)
        fields.setdefault("email", f"user{number}@example.com")
        fields.setdefault("name", f"Test User {number}")
        async with db_session():
            return await User.create(**fields)

    return create


@pytest.fixture
def auth_headers(app_settings: Any) -> Callable[..., dict[str, str]]:
    from app.auth.tokens import DEFAULT_SCOPES, create_access_token

    def headers(user: Any, scopes: Sequence[str] = DEFAULT_SCOPES,
                settings: Any = None) -> dict[str, str]:
        user_id = user if isinstance(user, int) else user.id
        token = create_access_token(user_id, settings or app_settings, scopes)
        return {"Authorization": f"Bearer {token}"}

    return headers


def replace_settings(settings: Any, **changes: Any) -> Any:
    """dataclasses.replace for the frozen Settings (e.g. short token lifetimes)."""
    return dataclasses.replace(settings, **changes)
