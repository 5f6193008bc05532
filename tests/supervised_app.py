"""A tiny Sanic app wired with app.ops.supervision only, run as a real multi-worker server
(`sanic tests.supervised_app:create_app --factory --workers 2`) by test_supervision.py.

/block stands in for a handler stuck in a synchronous call; it lives here, never in the app.
"""

from __future__ import annotations

import os
import time

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json, text

from app.ops.supervision import SERVER_PROCESS_PREFIX, setup_supervision, worker_gauges


def create_app() -> Sanic:
    app = Sanic("supervised_test_app")
    app.config.OAS = False
    setup_supervision(app)

    @app.get("/workers")
    async def workers(request: Request) -> HTTPResponse:
        # Sanic's own view of its workers (the shared worker state), from inside a worker.
        return json({name: {"pid": state.get("pid"), "state": state.get("state")}
                     for name, state in request.app.m.workers.items()
                     if name.startswith(SERVER_PROCESS_PREFIX)})

    @app.get("/metrics")
    async def metrics(request: Request) -> HTTPResponse:
        return text(worker_gauges(request.app))

    @app.get("/pid")
    async def pid(request: Request) -> HTTPResponse:
        return json({"pid": os.getpid()})

    @app.get("/block/<seconds:float>")
    async def block(request: Request, seconds: float) -> HTTPResponse:
        time.sleep(seconds)  # blocks this worker's event loop on purpose
        return json({"blocked": seconds, "pid": os.getpid()})

    return app
