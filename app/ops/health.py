"""Health endpoints: /health (full report), /health/ready (critical services), /health/live.

- /health reports everything the seed reported and answers 503 "degraded" when any service
  is unhealthy or an external service is known to be unreachable. It never waits on the
  internet: Google and OpenAI are probed by a background task every HEALTH_CHECK_INTERVAL and
  /health serves the cached result. Database and Redis are probed live with short timeouts,
  because they are local and their state is the point of the report.
- /health/ready is what a load balancer or a deployment waits for: 200 only when the
  database, Redis and the auth configuration work; otherwise 503 with the reasons.
- /health/live does no I/O at all: it answers as long as the worker's event loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import resource
import time
import tomllib
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

from app.config import Settings
from app.http import httpx_tls_context
from app.ops.metrics import agents_json, aggregate, resident_memory_bytes

log = logging.getLogger(__name__)

DATABASE_TIMEOUT_S = 2.0
REDIS_TIMEOUT_S = 1.0
EXTERNAL_TIMEOUT_S = 2.0
HEALTHY, UNHEALTHY, DEGRADED = "healthy", "unhealthy", "degraded"
PROCESS_STARTED = time.monotonic()


@cache
def app_version() -> str:
    """The installed package version; from pyproject.toml when run from a checkout."""
    try:
        return metadata.version("assistantapp")
    except metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


# --------------------------------------------------------------------------------------------
# Checks of local services (live, short timeouts)
# --------------------------------------------------------------------------------------------
async def check_database() -> dict[str, Any]:
    from tortoise import Tortoise
    from tortoise.connection import connections

    if not Tortoise.is_inited():
        return {"status": UNHEALTHY, "latencyMs": None, "error": "database not initialised"}
    start = time.perf_counter()
    try:
        connection = connections.get("default")
        await asyncio.wait_for(connection.execute_query("SELECT 1"), DATABASE_TIMEOUT_S)
    except TimeoutError:
        return {"status": UNHEALTHY, "latencyMs": None,
                "error": f"no answer within {DATABASE_TIMEOUT_S:g}s"}
    except Exception as exc:  # any driver/network failure means "unhealthy", not a 500
        return {"status": UNHEALTHY, "latencyMs": None, "error": _describe(exc)}
    return {"status": HEALTHY, "latencyMs": _ms_since(start)}


async def check_redis(app: Sanic) -> dict[str, Any]:
    redis = getattr(app.ctx, "redis", None)
    if redis is None:
        return {"status": UNHEALTHY, "latencyMs": None, "error": "redis client not initialised"}
    start = time.perf_counter()
    try:
        await asyncio.wait_for(redis.ping(), REDIS_TIMEOUT_S)
    except TimeoutError:
        return {"status": UNHEALTHY, "latencyMs": None,
                "error": f"no answer within {REDIS_TIMEOUT_S:g}s"}
    except Exception as exc:  # connection refused, auth error, ...: report, never raise
        return {"status": UNHEALTHY, "latencyMs": None, "error": _describe(exc)}
    return {"status": HEALTHY, "latencyMs": _ms_since(start)}


def check_auth_config(settings: Settings) -> dict[str, Any]:
    problems = []
    if len(settings.jwt_secret) < 32:
        problems.append("JWT secret missing or too short")
    if not settings.google_client_id or not settings.google_client_secret:
        problems.append("Google OAuth client not configured")
    if problems:
        return {"status": UNHEALTHY, "error": "; ".join(problems)}
    return {"status": HEALTHY}


# --------------------------------------------------------------------------------------------
# External services (background, cached)
# --------------------------------------------------------------------------------------------
class ExternalChecker:
    """Probes Google and OpenAI in the background and keeps the latest result."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Under APP_ENV=test only URLs a test set explicitly (local fakes) are probed, so a
        # test run never sends traffic to the real Google or OpenAI.
        test_env = settings.app_env == "test"
        self.probe_google = not test_env or "GOOGLE_DISCOVERY_URL" in settings.provided
        self.probe_openai = settings.openai_configured and (
            not test_env or "OPENAI_BASE_URL" in settings.provided)
        pending = {"status": "unknown", "reason": "not checked yet"}
        skipped = {"status": "not_checked", "reason": "default URL in the test environment"}
        self.results: dict[str, dict[str, Any]] = {
            "google": dict(pending if self.probe_google else skipped),
            "openai": (dict(pending if self.probe_openai else skipped)
                       if settings.openai_configured else {"status": "not_configured"}),
        }

    async def run_forever(self) -> None:
        interval = self.settings.health_check_interval / 1000
        async with httpx.AsyncClient(timeout=EXTERNAL_TIMEOUT_S, follow_redirects=False,
                                     verify=httpx_tls_context()) as client:
            while True:
                await self.check_once(client)
                await asyncio.sleep(interval)

    async def check_once(self, client: httpx.AsyncClient) -> None:
        checks = []
        if self.probe_google:
            checks.append(self._probe(client, "google", self.settings.google_discovery_url, {}))
        if self.probe_openai:
            url = self.settings.openai_base_url.rstrip("/") + "/models"
            headers = {"Authorization": f"Bearer {self.settings.openai_api_key}"}
            checks.append(self._probe(client, "openai", url, headers))
        await asyncio.gather(*checks)

    async def _probe(self, client: httpx.AsyncClient, name: str, url: str,
                     headers: dict[str, str]) -> None:
        start = time.perf_counter()
        checked_at = _now_iso()
        try:
            response = await client.get(url, headers=headers)
        except Exception as exc:  # timeouts, refused connections, TLS errors: all "unreachable"
            self.results[name] = {"status": "unreachable", "error": _describe(exc),
                                  "checkedAt": checked_at}
            return
        result: dict[str, Any] = {
            "status": "reachable" if response.status_code < 500 else "error",
            "httpStatus": response.status_code, "latencyMs": _ms_since(start),
            "checkedAt": checked_at,
        }
        if name == "openai" and response.status_code in (401, 403):
            # Reachable, but the key is refused: the assistant cannot work.
            result["status"] = "error"
            result["error"] = "API key rejected"
        self.results[name] = result

    @property
    def healthy(self) -> bool:
        # "unknown" (not probed yet), "not_checked" and "not_configured" do not degrade.
        return all(r["status"] not in ("unreachable", "error") for r in self.results.values())


# --------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------
def setup_health(app: Sanic, settings: Settings) -> None:
    checker = ExternalChecker(settings)
    app.ctx.external_checker = checker

    @app.before_server_start
    async def start_external_checks(app: Sanic) -> None:
        if not (checker.probe_google or checker.probe_openai):
            return
        app.ctx.external_check_task = asyncio.get_running_loop().create_task(
            checker.run_forever(), name="health-external-checks")

    @app.after_server_stop
    async def stop_external_checks(app: Sanic) -> None:
        task: asyncio.Task[None] | None = getattr(app.ctx, "external_check_task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            app.ctx.external_check_task = None

    @app.get("/health/live", name="health_live")
    async def live(request: Request) -> HTTPResponse:
        return json({"status": "alive"})

    @app.get("/health/ready", name="health_ready")
    async def ready(request: Request) -> HTTPResponse:
        database, redis = await asyncio.gather(check_database(), check_redis(request.app))
        auth = check_auth_config(settings)
        reasons = [f"{name}: {result.get('error', 'unhealthy')}"
                   for name, result in (("database", database), ("redis", redis),
                                        ("auth", auth))
                   if result["status"] != HEALTHY]
        if reasons:
            return json({"status": "not ready", "reasons": reasons}, status=503)
        return json({"status": "ready"})

    @app.get("/health", name="health")
    async def health(request: Request) -> HTTPResponse:
        start = time.perf_counter()
        database, redis = await asyncio.gather(check_database(), check_redis(request.app))
        auth = check_auth_config(settings)
        # Without Redis the limiter fails open (requests are served, unlimited): the app
        # works, but a protection is off, which the report must show.
        metrics = aggregate(request.app)
        redis_errors = metrics.store.events.get("ratelimit_redis_errors", 0)
        rate_limiter = ({"status": HEALTHY, "backend": "redis", "redisErrors": redis_errors}
                        if redis["status"] == HEALTHY
                        else {"status": DEGRADED, "backend": "redis", "redisErrors": redis_errors,
                              "error": "Redis unavailable: requests are not rate limited"})
        services = {"database": database["status"], "redis": redis["status"],
                    "auth": auth["status"], "rateLimiter": rate_limiter["status"]}
        all_healthy = (all(s == HEALTHY for s in services.values()) and checker.healthy)
        body = {
            "status": HEALTHY if all_healthy else DEGRADED,
            "timestamp": _now_iso(),
            "uptime": round(time.monotonic() - PROCESS_STARTED, 3),
            "environment": settings.app_env,
            "version": app_version(),
            "pythonVersion": platform.python_version(),
            "memory": _memory(),
            "pid": os.getpid(),
            "services": services,
            "serviceDetails": {"database": database, "redis": redis, "auth": auth,
                               "rateLimiter": rate_limiter},
            "agents": agents_json(metrics.store.agents),
            "database": {"status": database["status"], "latencyMs": database["latencyMs"]},
            "externalServices": checker.results,
            "responseTime": _ms_since(start),
        }
        return json(body, status=200 if all_healthy else 503)


def _memory() -> dict[str, Any]:
    rss = resident_memory_bytes()
    # ru_maxrss is in KiB on Linux.
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"rssBytes": rss, "maxRssBytes": max_rss, "rssMB": round(rss / 1048576, 1)}


def _describe(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
