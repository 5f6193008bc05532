"""The application factory: every part of the app is wired here through setup_* functions.

Clients (database, Redis, HTTP) are created in server listeners, never at import time, so
that each Sanic worker process owns its own connections.
"""

from __future__ import annotations

import sys

from sanic import Sanic
from sanic.worker.manager import WorkerManager
from sanic.worker.process import WorkerProcess

from app.assistant import setup_assistant
from app.auth import setup_auth
from app.auth.google import setup_google_auth
from app.cache import setup_redis
from app.config import ConfigError, Settings, load_settings
from app.db import setup_database
from app.errors import setup_error_handlers
from app.ops.fast_headers import setup_fast_headers
from app.ops.health import setup_health
from app.ops.input_guard import setup_input_guard
from app.ops.logging import setup_logging
from app.ops.metrics import setup_metrics
from app.ops.ratelimit import setup_rate_limit
from app.ops.security import setup_security
from app.ops.supervision import setup_supervision
from app.web import setup_web

APP_NAME = "assistantapp"


# How long Sanic's main process waits for every worker to report it is serving, in tenths of
# a second (Sanic's documented knob; its default is 30 s). Importing the app on a busy host
# took longer than 30 s in our scenarios, and a miss takes the whole instance down; systemd's
# TimeoutStartSec (assistantapp@.service) is longer still.
WORKER_ACK_TIMEOUT_S = 120
# The manager waits at start-up, each worker process when it is restarted.
WorkerManager.THRESHOLD = WorkerProcess.THRESHOLD = WORKER_ACK_TIMEOUT_S * 10


def create_app(settings: Settings | None = None) -> Sanic:
    if not isinstance(settings, Settings):
        # `sanic app:create_app --factory` calls the factory with its CLI arguments.
        settings = None
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
    app.config.CORS = False  # CORS is ours (app.ops.security): an allow-list with a clear 403.

    # Order matters: logging first (request ids), security before rate limiting (CORS
    # preflights are answered without spending a request), metrics around everything.
    setup_fast_headers(app, settings)
    setup_logging(app, settings)
    setup_error_handlers(app)
    setup_database(app, settings)
    setup_redis(app, settings)
    setup_security(app, settings)
    setup_rate_limit(app, settings)
    setup_input_guard(app)
    setup_metrics(app, settings)
    setup_health(app, settings)
    setup_auth(app, settings)
    setup_google_auth(app, settings)
    setup_assistant(app, settings)
    setup_web(app, settings)
    # Sanic does not replace dead workers; this does, and feeds systemd's watchdog.
    setup_supervision(app)
    return app
