"""A tiny Sanic app wired with app.ops.supervision only, run as a real multi-worker server
(`sanic tests.supervised_app:create_app --factory --workers 2`) by test_supervision.py.

/block stands in for a handler stuck in a synchronous call and /grow for a leak; they live
here, never in the app. WORKER_MAX_MEMORY_MB is read as the app's Settings would give it.
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json, text

from app.ops.supervision import SERVER_PROCESS_PREFIX, setup_supervision, worker_gauges


def create_app() -> Sanic:
    app = Sanic("supervised_test_app")
    app.config.OAS = False
    app.config.SETTINGS = SimpleNamespace(
        worker_max_memory_mb=int(os.environ.get("WORKER_MAX_MEMORY_MB", "0")))
    setup_supervision(app)
    leaked: list[bytes] = []

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

    @app.get("/grow/<mib:int>")
    async def grow(request: Request, mib: int) -> HTTPResponse:
        leaked.append(b"\x01" * (mib * 2**20))  # resident at once: every page is written
        return json({"pid": os.getpid(), "held_mib": sum(map(len, leaked)) // 2**20})

    return app
