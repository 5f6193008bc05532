"""The application factory: every part of the app is wired here through setup_* functions.

Clients (database, Redis, HTTP) are created in server listeners, never at import time, so
that each Sanic worker process owns its own connections.
"""

from __future__ import annotations

import sys

from sanic import Sanic

from app.config import ConfigError, Settings, load_settings

APP_NAME = "assistantapp"


def create_app(settings: Settings | None = None) -> Sanic:
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            # The same list `python -m app check-config` prints; no traceback for operators.
            print(str(exc), file=sys.stderr)
            raise SystemExit(1) from None

    app = Sanic(APP_NAME)
    app.config.SETTINGS = settings
    app.config.REQUEST_MAX_SIZE = settings.request_max_size
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.OAS = settings.app_env != "production"
    app.config.CORS = False  # CORS is ours (app.ops.security): an allow-list with a clear 403.

    from app.ops.logging import setup_logging
    from app.ops.security import setup_security
    from app.ops.ratelimit import setup_rate_limit
    from app.ops.metrics import setup_metrics
    from app.ops.health import setup_health
    from app.db import setup_database
    from app.cache import setup_redis
    from app.auth import setup_auth

    setup_logging(app, settings)
    setup_database(app, settings)
    setup_redis(app, settings)
    setup_security(app, settings)
    setup_rate_limit(app, settings)
    setup_metrics(app, settings)
    setup_health(app, settings)
    setup_auth(app, settings)
    return app
