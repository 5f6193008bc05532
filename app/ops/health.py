"""Health endpoints: /health (full report), /health/ready (critical services), /health/live.

- /health reports everything the seed reported and answers 503 "degraded" when any service
  is unhealthy or an external service is known to be unreachable. It never waits on the
  internet: Google and OpenAI are probed by a background task every HEALTH_CHECK_INTERVAL and
  /health serves the cached result. Database and Redis are probed live with short timeouts,
  because they are local and their state is the point of the report.
- /health/ready is what a load balancer or a deployment waits for: 200 only when the
  database, Redis, the session store (the Redis-backed sign-in state: a real write and
  read-back), the auth configuration and the Gmail configuration work; otherwise 503 with the
  reasons. It is exempt from the rate limit, so it must stay cheap: each worker serves it from
  a result at most READY_MAX_AGE_S old, runs at most one live check at a time, and every probe
  arriving meanwhile waits for that one check. A flood of probes costs the data stores at
  most one round of checks per second per worker.
- /health/live does no I/O at all: it answers as long as the worker's event loop runs.
- An exception while building a report answers 503 {"status": "unhealthy", "error": ...}
  (a probe must read "not healthy", never a 500 that looks like a bug in the probe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import platform
import resource
import time
import tomllib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import cache, wraps
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

from app.config import Settings
from app.http import httpx_tls_context
from app.ops.clientip import INVALID_FORWARDED_CLIENT, client_ip, parse_ip, parse_networks
from app.ops.metrics import agents_json, aggregate, client_allowed, resident_memory_bytes

log = logging.getLogger(__name__)

DATABASE_TIMEOUT_S = 2.0
REDIS_TIMEOUT_S = 1.0
EXTERNAL_TIMEOUT_S = 2.0
# /health/ready answers from a result at most this old (per worker).
READY_MAX_AGE_S = 1.0
# The session store probe: a key of its own (never a real sign-in state), gone in seconds
# even if the read-back never happens.
SESSION_PROBE_KEY_PREFIX = "health:session-store:"
SESSION_PROBE_TTL_S = 10
HEALTHY, UNHEALTHY, DEGRADED = "healthy", "unhealthy", "degraded"
# A feature its variables leave off (outside production): not a fault, not "ready" blocking.
DISABLED = "disabled"
FINE = (HEALTHY, DISABLED)
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


async def check_session_store(app: Sanic) -> dict[str, Any]:
    """Sign-in state lives in Redis (SET with expiry, then GETDEL): PING is not enough, a
    Redis that refuses writes (read-only replica, maxmemory with noeviction) breaks sign-in
    while answering PING. So write a probe key and take it back the same way sign-in does."""
    redis = getattr(app.ctx, "redis", None)
    if redis is None:
        return {"status": UNHEALTHY, "latencyMs": None, "error": "redis client not initialised"}
    key = f"{SESSION_PROBE_KEY_PREFIX}{os.getpid()}"
    value = str(time.monotonic_ns())
    start = time.perf_counter()
    try:
        async def round_trip() -> Any:
            await redis.set(key, value, ex=SESSION_PROBE_TTL_S)
            return await redis.getdel(key)

        read_back = await asyncio.wait_for(round_trip(), REDIS_TIMEOUT_S)
    except TimeoutError:
        return {"status": UNHEALTHY, "latencyMs": None,
                "error": f"no answer within {REDIS_TIMEOUT_S:g}s"}
    except Exception as exc:  # read-only, OOM, auth, connection: all "cannot store sign-ins"
        return {"status": UNHEALTHY, "latencyMs": None, "error": _describe(exc)}
    if isinstance(read_back, bytes):
        read_back = read_back.decode(errors="replace")
    if read_back != value:
        return {"status": UNHEALTHY, "latencyMs": None,
                "error": "the value written was not read back"}
    return {"status": HEALTHY, "latencyMs": _ms_since(start)}


def check_gmail_config(settings: Settings) -> dict[str, Any]:
    """The email agent needs the Google OAuth client (its tokens carry the Gmail scopes) and
    a Gmail API base URL. Configuration only: Gmail itself is reached per user, with the
    user's token, and is never probed here."""
    if not settings.google_configured:
        return {"status": DISABLED,
                "note": "off: Gmail needs Google sign-in (GOOGLE_CLIENT_ID, GOOGLE_CLIENT_SECRET)"}
    problems = []
    if not settings.gmail_api_base_url.startswith(("https://", "http://")):
        problems.append("GMAIL_API_BASE_URL is not an http(s) URL")
    if problems:
        return {"status": UNHEALTHY, "error": "; ".join(problems)}
    return {"status": HEALTHY, "apiBaseUrl": settings.gmail_api_base_url}


def check_auth_config(settings: Settings) -> dict[str, Any]:
    if len(settings.jwt_secret) < 32:
        return {"status": UNHEALTHY, "error": "JWT secret missing or too short"}
    if not settings.google_configured:
        return {"status": DISABLED,
                "note": "Google sign-in is off: set GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET"}
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
        self.probe_google = settings.google_configured and (
            not test_env or "GOOGLE_DISCOVERY_URL" in settings.provided)
        self.probe_openai = settings.openai_configured and (
            not test_env or "OPENAI_BASE_URL" in settings.provided)
        pending = {"status": "unknown", "reason": "not checked yet"}
        skipped = {"status": "not_checked", "reason": "default URL in the test environment"}
        self.results: dict[str, dict[str, Any]] = {
            "google": (dict(pending if self.probe_google else skipped)
                       if settings.google_configured else {"status": "not_configured"}),
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
# Readiness, cached
# --------------------------------------------------------------------------------------------
class CachedCheck:
    """Serves the result of `check` while it is younger than `max_age_s`; a stale result is
    replaced by ONE live check that every concurrent caller awaits (single flight). The age
    counts from the moment the check started, so an answer is never older than max_age_s
    plus the check's own duration. A failing check (exception) is not cached.

    `live_checks` counts the checks actually run (for tests and the report)."""

    def __init__(self, check: Callable[[], Awaitable[dict[str, Any]]],
                 max_age_s: float = READY_MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.check = check
        self.max_age_s = max_age_s
        self.clock = clock
        self.live_checks = 0
        self._result: dict[str, Any] | None = None
        self._started_at = -math.inf
        self._in_flight: asyncio.Task[dict[str, Any]] | None = None

    async def get(self) -> dict[str, Any]:
        if self._result is not None and self.clock() - self._started_at < self.max_age_s:
            return self._result
        task = self._in_flight
        if task is None:
            task = self._in_flight = asyncio.get_running_loop().create_task(
                self._run(), name="health-ready-check")
        # shield: a probe that disconnects cancels its own wait, not the shared check.
        return await asyncio.shield(task)

    async def _run(self) -> dict[str, Any]:
        started = self.clock()
        self.live_checks += 1
        try:
            result = await self.check()
        finally:
            self._in_flight = None
        self._result, self._started_at = result, started
        return result


def answer_unhealthy_on_error(
        handler: Callable[[Request], Awaitable[HTTPResponse]],
) -> Callable[[Request], Awaitable[HTTPResponse]]:
    """A bug or a surprise while building a report answers 503 "unhealthy" with the error,
    as the seed did, instead of a generic 500."""

    @wraps(handler)
    async def wrapper(request: Request) -> HTTPResponse:
        try:
            return await handler(request)
        except Exception as exc:
            log.exception("health report failed: %s", request.path)
            return json({"status": UNHEALTHY, "error": _describe(exc),
                         "timestamp": _now_iso()}, status=503)

    return wrapper


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

    async def readiness() -> dict[str, Any]:
        database, redis, session_store = await asyncio.gather(
            check_database(), check_redis(app), check_session_store(app))
        results = {"database": database, "redis": redis, "sessionStore": session_store,
                   "auth": check_auth_config(settings), "gmail": check_gmail_config(settings)}
        return {"checks": {name: result["status"] for name, result in results.items()},
                "reasons": [f"{name}: {result.get('error', 'unhealthy')}"
                            for name, result in results.items() if result["status"] not in FINE],
                "checkedAt": _now_iso()}

    ready_cache = CachedCheck(readiness)
    app.ctx.ready_cache = ready_cache
    # Details (pid, versions, memory, error texts that may name internal addresses) only for
    # the networks that may read /metrics; the public gets the status alone.
    detail_networks = parse_networks(settings.metrics_allowed_cidrs)

    def may_see_details(request: Request) -> bool:
        client = client_ip(request)
        if parse_ip(client) is None:
            # No address: a UNIX socket or in-process (ASGI) peer, i.e. this host itself;
            # but never a client whose forwarded address was junk.
            return client != INVALID_FORWARDED_CLIENT
        return client_allowed(client, detail_networks)

    @app.get("/health/live", name="health_live")
    async def live(request: Request) -> HTTPResponse:
        return json({"status": "alive", "timestamp": _now_iso()})

    @app.get("/health/ready", name="health_ready")
    @answer_unhealthy_on_error
    async def ready(request: Request) -> HTTPResponse:
        result = await ready_cache.get()
        body: dict[str, Any] = {"checks": result["checks"], "checkedAt": result["checkedAt"]}
        if result["reasons"]:
            reasons = {"reasons": result["reasons"]} if may_see_details(request) else {}
            return json({"status": "not ready", **reasons, **body}, status=503)
        return json({"status": "ready", **body})

    @app.get("/health", name="health")
    @answer_unhealthy_on_error
    async def health(request: Request) -> HTTPResponse:
        start = time.perf_counter()
        details = may_see_details(request)
        database, redis, session_store = await asyncio.gather(
            check_database(), check_redis(request.app), check_session_store(request.app))
        auth = check_auth_config(settings)
        gmail = check_gmail_config(settings)
        # Without Redis the limiter fails open (requests are served, unlimited): the app
        # works, but a protection is off, which the report must show.
        metrics = aggregate(request.app)
        redis_errors = metrics.store.events.get("ratelimit_redis_errors", 0)
        rate_limiter = ({"status": HEALTHY, "backend": "redis", "redisErrors": redis_errors}
                        if redis["status"] == HEALTHY
                        else {"status": DEGRADED, "backend": "redis", "redisErrors": redis_errors,
                              "error": "Redis unavailable: requests are not rate limited"})
        services = {"database": database["status"], "redis": redis["status"],
                    "sessionStore": session_store["status"], "auth": auth["status"],
                    "gmail": gmail["status"], "rateLimiter": rate_limiter["status"]}
        all_healthy = (all(s in FINE for s in services.values()) and checker.healthy)
        if not details:
            return json({"status": HEALTHY if all_healthy else DEGRADED},
                        status=200 if all_healthy else 503)
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
            "features": settings.features(),
            "serviceDetails": {"database": database, "redis": redis,
                               "sessionStore": session_store, "auth": auth, "gmail": gmail,
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
