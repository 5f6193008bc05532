"""A small app wired with the real ops middleware (logging, Redis, security, rate limit).

The middleware tests use it instead of the full factory so that they exercise exactly these
setup_* functions, with routes shaped like the real ones (page, JSON API, auth, probes).
The full factory is covered by the subprocess server tests in test_ratelimit.py.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, html, json, redirect, text

from app.cache import setup_redis
from app.config import Settings, load_settings
from app.ops.logging import setup_logging
from app.ops.ratelimit import setup_rate_limit
from app.ops.security import setup_security
from tests.conftest import VALID_ENV

_names = itertools.count()
route_log = logging.getLogger("app.tests.route")


def ops_settings(**env: str) -> Settings:
    return load_settings({**VALID_ENV, **env}, env_file=None)


def make_ops_app(settings: Settings) -> Sanic:
    Sanic.test_mode = True
    app = Sanic(f"ops_test_{next(_names)}")
    app.config.SETTINGS = settings
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.CORS = False
    app.config.OAS = False
    setup_logging(app, settings)
    setup_redis(app, settings)
    setup_security(app, settings)
    setup_rate_limit(app, settings)

    @app.get("/")
    async def page(request: Request) -> HTTPResponse:
        return html("<!doctype html><title>page</title>")

    @app.route("/api/data", methods=["GET", "POST", "PUT", "DELETE"])
    async def api_data(request: Request) -> HTTPResponse:
        route_log.info("handled api request", extra={"headers": dict(request.headers)})
        return json({"ok": True, "client": request.ctx.client_ip
                     if hasattr(request.ctx, "client_ip") else None})

    @app.get("/api/boom")
    async def boom(request: Request) -> HTTPResponse:
        raise RuntimeError("boom")

    @app.post("/auth/refresh")
    async def refresh(request: Request) -> HTTPResponse:
        return json({"accessToken": "x"})

    @app.get("/auth/google")
    async def google(request: Request) -> HTTPResponse:
        return redirect("https://accounts.example/authorize")

    @app.get("/health/live")
    async def live(request: Request) -> HTTPResponse:
        return json({"status": "alive"})

    @app.get("/health/ready")
    async def ready(request: Request) -> HTTPResponse:
        return json({"status": "ready"})

    @app.get("/metrics")
    async def metrics(request: Request) -> HTTPResponse:
        return text("# metrics\n")

    return app


def drop_app(app: Any) -> None:
    Sanic._app_registry.pop(app.name, None)
