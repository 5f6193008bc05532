"""PostgreSQL through tortoise-orm: config builder, app wiring and a health probe.

Tortoise connects lazily (first query), so a worker starts even while PostgreSQL is down;
/health reports the outage and the asyncpg pool is created (again) as soon as the database
answers. Migrations are aerich's (app/db/migrations, `python -m app db ...`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import tortoise.context as tortoise_context_module
from sanic import Request, Sanic
from sanic.response import HTTPResponse
from tortoise import connections
from tortoise.context import TortoiseContext
from tortoise.exceptions import DBConnectionError

from app.config import Settings
from app.errors import json_error

APP_LABEL = "models"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
CONNECTION_NAME = "default"
CONNECT_TIMEOUT_S = 5

log = logging.getLogger(__name__)

# What a query raises while PostgreSQL is down, restarting or unreachable. The builtin
# ones (refused connection, connect timeout) count only when raised inside the driver/ORM.
DATABASE_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    DBConnectionError,
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
)
_DATABASE_MODULES = ("asyncpg", "tortoise")


def tortoise_config(database_url: str) -> dict[str, Any]:
    """The TORTOISE_ORM dict shared by the app and the migration commands."""
    return {
        "connections": {CONNECTION_NAME: _tortoise_url(database_url)},
        "apps": {
            APP_LABEL: {
                "models": ["app.db.models", "aerich.models"],
                "default_connection": CONNECTION_NAME,
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def _tortoise_url(database_url: str) -> str:
    url = database_url
    if url.startswith("postgresql://"):
        url = "postgres://" + url[len("postgresql://"):]
    # asyncpg waits 60s for a connection by default: with the database host unreachable every
    # request would hang that long. Fail fast (503) unless the URL sets its own timeout.
    query = parse_qs(urlsplit(url).query)
    if "timeout" not in query:
        url += ("&" if "?" in url else "?") + f"timeout={CONNECT_TIMEOUT_S}"
    return url


def setup_database(app: Sanic, settings: Settings) -> None:
    config = tortoise_config(settings.database_url)

    @app.before_server_start
    async def init_database(app: Sanic) -> None:
        # No connection is opened here (tortoise connects on first query): a database outage
        # must not stop the worker from starting; /health and /health/ready report it.
        await _close_stale_global_context()
        context = TortoiseContext()
        # Global fallback: request handlers run in tasks that do not inherit this listener's
        # contextvars, so they find the ORM through the process-wide context.
        with context:  # tortoise's init looks the context up as the current one
            await context.init(config=config, _enable_global_fallback=True)
        app.ctx.tortoise = context

    @app.after_server_stop
    async def close_database(app: Sanic) -> None:
        context: TortoiseContext | None = getattr(app.ctx, "tortoise", None)
        if context is not None:
            await context.close_connections()
            app.ctx.tortoise = None

    @app.exception(list(DATABASE_UNAVAILABLE_ERRORS))
    async def database_unavailable(request: Request, exc: Exception) -> HTTPResponse:
        if not raised_by_database(exc):
            # e.g. a timeout talking to another service: not ours to describe.
            return request.app.error_handler.default(request, exc)
        # A clear, retryable 503 instead of a 500 while the database is away.
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        response = json_error(503, "Database temporarily unavailable, please retry",
                              "database_unavailable")
        response.headers["Retry-After"] = "5"
        return response


def raised_by_database(exc: BaseException) -> bool:
    """True when `exc` comes from asyncpg/tortoise (by class or by where it was raised)."""
    if type(exc).__module__.split(".")[0] in _DATABASE_MODULES:
        return True
    traceback = exc.__traceback__
    while traceback is not None:
        module = str(traceback.tb_frame.f_globals.get("__name__", ""))
        if module.split(".")[0] in _DATABASE_MODULES:
            return True
        traceback = traceback.tb_next
    return False


async def _close_stale_global_context() -> None:
    """Tortoise allows one process-wide context; one left behind by an app that was not
    stopped cleanly (tests build many apps per process) is closed instead of failing."""
    stale = tortoise_context_module._global_context
    if stale is not None:
        await stale.close_connections()


async def ping_database(within_s: float = 2.0) -> None:
    """Run `SELECT 1` (for /health); raises on any failure: not initialised, refused, or
    no answer within `within_s` seconds (TimeoutError)."""
    connection = connections.get(CONNECTION_NAME)
    async with asyncio.timeout(within_s):
        await connection.execute_query("SELECT 1")
