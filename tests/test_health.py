"""/health, /health/ready and /health/live against a real server process, real PostgreSQL and
real Redis — including outages of each and recovery without restarting the app.

The outage tests stop and start servers, so this module runs its own PostgreSQL and Redis
instead of the session-wide ones other tests share.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sanic import Sanic
from sanic_testing.reusable import ReusableClient

import app.ops.health as health
from app.cache import setup_redis
from app.config import load_settings
from app.ops.health import EXTERNAL_TIMEOUT_S, CachedCheck, setup_health
from tests.conftest import VALID_ENV
from tests.servers import PostgresServer, RedisServer, free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
SANIC = str(Path(sys.executable).with_name("sanic"))
pytestmark = pytest.mark.slow


class AppServer:
    """The real app, started like production: `sanic app:create_app --factory`."""

    def __init__(self, env: dict[str, str], workers: int = 1) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # The test runner's coverage/metrics variables must not leak into the server.
        base = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANTAPP_")}
        self.env = {**base, **VALID_ENV, "RATE_LIMIT_MAX_REQUESTS": "1000000", **env}
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.gettempdir()) / f"assistantapp-test-{self.port}.log"

    def start(self) -> AppServer:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [SANIC, "app:create_app", "--factory", "--workers", str(self.workers),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            wait_until(self._serving, timeout=90)
        except Exception:
            output = self.log.read_text(errors="replace")[-3000:]
            self.stop()
            raise AssertionError(f"app did not start:\n{output}") from None
        return self

    def _serving(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}")
        return self.get("/health/live").status_code == 200

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=10, **kwargs)

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process_group(self.proc)
        self.proc = None
        self.log.unlink(missing_ok=True)


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0,
               interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last_error})")


class _FakeApiHandler(BaseHTTPRequestHandler):
    """Answers like Google's discovery document and OpenAI's /models would."""

    def do_GET(self) -> None:
        if self.path.endswith("/models"):
            ok = self.headers.get("Authorization") == f"Bearer {VALID_ENV['OPENAI_API_KEY']}"
            body: dict[str, Any] = ({"object": "list", "data": [{"id": "gpt-4o-mini"}]} if ok
                                    else {"error": {"message": "Incorrect API key"}})
            status = 200 if ok else 401
        else:
            body, status = {"issuer": "https://accounts.google.com"}, 200
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def fake_external() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApiHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().init()
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def app_env(own_postgres: PostgresServer, own_redis: RedisServer,
            fake_external: str) -> dict[str, str]:
    return {
        "DATABASE_URL": own_postgres.create_database("health"),
        "REDIS_URL": own_redis.url(),
        "GOOGLE_DISCOVERY_URL": f"{fake_external}/.well-known/openid-configuration",
        "OPENAI_BASE_URL": f"{fake_external}/v1",
        "HEALTH_CHECK_INTERVAL": "300",
    }


@pytest.fixture(scope="module")
def app_server(app_env: dict[str, str]) -> Iterator[AppServer]:
    server = AppServer(app_env).start()
    yield server
    server.stop()


def _ready_status(server: AppServer, status: int) -> httpx.Response | None:
    response = server.get("/health/ready")
    return response if response.status_code == status else None


def _externals_checked(server: AppServer) -> dict[str, Any]:
    body: dict[str, Any] = server.get("/health").json()
    external = body["externalServices"]
    return body if all(v["status"] != "unknown" for v in external.values()) else {}


def _external_checked(server: AppServer, name: str) -> dict[str, Any] | None:
    result: dict[str, Any] = server.get("/health").json()["externalServices"][name]
    return result if result["status"] != "unknown" else None


# The app trusts X-Forwarded-For from 127.0.0.1 (TRUSTED_PROXIES' default), like nginx's.
PUBLIC_CLIENT = {"X-Forwarded-For": "203.0.113.9"}


def test_the_public_gets_the_status_alone(app_server: AppServer) -> None:
    wait_until(lambda: _externals_checked(app_server))
    response = app_server.get("/health", headers=PUBLIC_CLIENT)
    assert response.status_code == 200
    assert response.json() == {"status": "healthy"}
    ready = app_server.get("/health/ready", headers=PUBLIC_CLIENT).json()
    assert ready["status"] == "ready" and set(ready) == {"status", "checks", "checkedAt"}
    # A forwarded address that is not one is no address of ours either.
    junk = app_server.get("/health", headers={"X-Forwarded-For": "garbage"})
    assert junk.json() == {"status": "healthy"}
    # An allowed network (the metrics networks, through the proxy) still gets the details.
    inside = app_server.get("/health", headers={"X-Forwarded-For": "127.0.0.5"}).json()
    assert inside["pid"] > 0 and "memory" in inside


def test_all_up_is_healthy_with_the_seed_fields(app_server: AppServer) -> None:
    wait_until(lambda: _externals_checked(app_server))
    response = app_server.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    for key in ("timestamp", "uptime", "environment", "version", "pythonVersion", "memory",
                "pid", "services", "agents", "database", "externalServices", "responseTime"):
        assert key in body, key
    assert body["environment"] == "test"
    assert body["version"] == "0.1.0"
    assert body["pythonVersion"] == ".".join(map(str, sys.version_info[:3]))
    assert body["memory"]["rssBytes"] > 1_000_000
    assert isinstance(body["pid"], int) and body["pid"] != os.getpid()
    assert body["services"] == {"database": "healthy", "redis": "healthy",
                                "sessionStore": "healthy", "auth": "healthy",
                                "gmail": "healthy", "rateLimiter": "healthy"}
    assert body["serviceDetails"]["gmail"]["apiBaseUrl"].startswith("http")
    assert body["database"]["status"] == "healthy"
    assert 0 <= body["database"]["latencyMs"] < 2000
    assert body["externalServices"]["google"]["status"] == "reachable"
    assert body["externalServices"]["openai"]["status"] == "reachable"
    assert body["externalServices"]["openai"]["httpStatus"] == 200
    assert body["agents"]["total"] == 0
    assert body["responseTime"] >= 0
    ready = app_server.get("/health/ready").json()
    assert ready["status"] == "ready"
    assert ready["checks"] == {"database": "healthy", "redis": "healthy",
                               "sessionStore": "healthy", "auth": "healthy", "gmail": "healthy"}
    assert ready["checkedAt"].endswith("Z")
    live = app_server.get("/health/live")
    assert live.status_code == 200
    assert live.json()["status"] == "alive"
    assert abs(datetime.fromisoformat(live.json()["timestamp"]).timestamp() - time.time()) < 60


def _ready_gauge(app_server: AppServer) -> str:
    lines = [line for line in app_server.get("/metrics").text.splitlines()
             if line.startswith("assistantapp_ready ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_postgres_outage_degrades_and_recovers_without_restart(
        app_server: AppServer, own_postgres: PostgresServer) -> None:
    wait_until(lambda: app_server.get("/health").status_code == 200)
    assert _ready_gauge(app_server) == "assistantapp_ready 1"
    own_postgres.stop()
    try:
        health = app_server.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "degraded"
        assert body["services"]["database"] == "unhealthy"
        assert body["database"] == {"status": "unhealthy", "latencyMs": None}
        assert body["services"]["redis"] == "healthy"
        # /health/ready answers from a result up to 1 s old: the outage shows within that.
        ready = wait_until(lambda: _ready_status(app_server, 503), timeout=5)
        assert ready.json()["status"] == "not ready"
        assert any(reason.startswith("database:") for reason in ready.json()["reasons"])
        # A client outside METRICS_ALLOWED_CIDRS (through the trusted proxy, as nginx sends
        # it) gets the status and the check names, never the error texts.
        outside = app_server.get("/health", headers=PUBLIC_CLIENT)
        assert outside.status_code == 503 and outside.json() == {"status": "degraded"}
        outside_ready = app_server.get("/health/ready", headers=PUBLIC_CLIENT)
        assert outside_ready.status_code == 503
        assert outside_ready.json()["checks"]["database"] == "unhealthy"
        assert "reasons" not in outside_ready.json()
        assert app_server.get("/health/live").status_code == 200
        # The alert rule AppNotReady reads the same answer from /metrics.
        assert _ready_gauge(app_server) == "assistantapp_ready 0"
    finally:
        own_postgres.start()
    wait_until(lambda: app_server.get("/health").status_code == 200, timeout=20)
    wait_until(lambda: _ready_status(app_server, 200), timeout=5)
    assert _ready_gauge(app_server) == "assistantapp_ready 1"


def test_redis_outage_degrades_and_recovers_without_restart(
        app_server: AppServer, own_redis: RedisServer) -> None:
    wait_until(lambda: app_server.get("/health").status_code == 200)
    own_redis.stop()
    try:
        health = app_server.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "degraded"
        assert body["services"]["redis"] == "unhealthy"
        assert body["services"]["rateLimiter"] == "degraded"
        assert body["services"]["database"] == "healthy"
        ready = wait_until(lambda: _ready_status(app_server, 503), timeout=5)
        assert any(reason.startswith("redis:") for reason in ready.json()["reasons"])
        assert app_server.get("/health/live").status_code == 200
        # The limiter failed open on the /health requests above, and says so.
        limiter = app_server.get("/health").json()["serviceDetails"]["rateLimiter"]
        assert limiter["status"] == "degraded" and limiter["redisErrors"] >= 1
        metrics = app_server.get("/metrics").text
        assert "assistantapp_ratelimit_redis_errors_total 0\n" not in metrics
    finally:
        own_redis.start()
    wait_until(lambda: app_server.get("/health").status_code == 200, timeout=20)
    wait_until(lambda: _ready_status(app_server, 200), timeout=5)


def test_unreachable_external_services_are_reported_and_health_stays_fast(
        app_env: dict[str, str]) -> None:
    closed_port = free_port()  # nothing listens here: connection refused
    # A listener that never answers: only a timeout ends a request to it.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    server = AppServer({
        **app_env,
        "GOOGLE_DISCOVERY_URL": f"http://127.0.0.1:{closed_port}/.well-known/x",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{blackhole.getsockname()[1]}/v1",
        "HEALTH_CHECK_INTERVAL": "60000",
    })
    try:
        server.start()
        for _ in range(3):
            started = time.monotonic()
            response = server.get("/health")
            # Never waits for the black hole's probe, which only its timeout ends.
            assert time.monotonic() - started < EXTERNAL_TIMEOUT_S
            assert response.json()["responseTime"] < 1000
        google = wait_until(lambda: _external_checked(server, "google"))
        assert google["status"] == "unreachable"
        assert "ConnectError" in google["error"]
        body = wait_until(lambda: _externals_checked(server), timeout=10)
        assert body["externalServices"]["openai"]["status"] == "unreachable"
        assert "Timeout" in body["externalServices"]["openai"]["error"]
        response = server.get("/health")
        assert response.status_code == 503
        assert response.json()["status"] == "degraded"
        # Local services are fine, so the instance is still ready to serve.
        wait_until(lambda: _ready_status(server, 200), timeout=5)
    finally:
        server.stop()
        blackhole.close()


def test_rejected_openai_key_is_reported(app_env: dict[str, str]) -> None:
    server = AppServer({**app_env, "OPENAI_API_KEY": "sk-wrong-key-0000000000"}).start()
    try:
        body = wait_until(lambda: _externals_checked(server))
        openai = body["externalServices"]["openai"]
        assert openai["status"] == "error"
        assert openai["httpStatus"] == 401
        assert body["externalServices"]["google"]["status"] == "reachable"
        assert server.get("/health").status_code == 503
    finally:
        server.stop()


def _redis_calls(server: RedisServer, command: str) -> int:
    client = redis.Redis.from_url(server.url())
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_session_store_refusing_writes_makes_the_app_unready(
        app_server: AppServer, own_redis: RedisServer) -> None:
    # PING still answers, but no write is accepted: sign-in (OAuth state) cannot work.
    client = redis.Redis.from_url(own_redis.url())
    wait_until(lambda: _ready_status(app_server, 200), timeout=5)
    client.config_set("min-replicas-to-write", 1)
    try:
        ready = wait_until(lambda: _ready_status(app_server, 503), timeout=5).json()
        assert ready["checks"]["redis"] == "healthy"
        assert ready["checks"]["sessionStore"] == "unhealthy"
        assert any(reason.startswith("sessionStore:") for reason in ready["reasons"]), ready
        health = app_server.get("/health").json()
        assert health["services"]["sessionStore"] == "unhealthy"
        assert "NOREPLICAS" in health["serviceDetails"]["sessionStore"]["error"].upper()
    finally:
        client.config_set("min-replicas-to-write", 0)
        client.close()
    wait_until(lambda: _ready_status(app_server, 200), timeout=5)


def test_a_flood_of_readiness_probes_costs_one_live_check_per_second(
        app_server: AppServer, own_redis: RedisServer) -> None:
    """Every live readiness check does exactly one GETDEL (the session store probe), and
    nothing else in this idle app does: Redis's own command statistics count the checks."""
    # Probes for at least 2.5 s whatever the machine's speed (a fixed count finished in half
    # a second on a quiet machine), and at least 400 of them.
    min_probes, min_seconds, threads = 400, 2.5, 16
    before = _redis_calls(own_redis, "getdel")
    started = time.monotonic()
    with httpx.Client(base_url=app_server.base_url, timeout=10) as http:
        def probe_until_done(_: int) -> list[int]:
            statuses = []
            while (len(statuses) * threads < min_probes
                   or time.monotonic() - started < min_seconds):
                statuses.append(http.get("/health/ready").status_code)
            return statuses

        with ThreadPoolExecutor(threads) as pool:
            statuses = [s for batch in pool.map(probe_until_done, range(threads)) for s in batch]
    elapsed = time.monotonic() - started
    live_checks = _redis_calls(own_redis, "getdel") - before
    assert len(statuses) >= min_probes and set(statuses) == {200}, set(statuses)
    # One check per started second at most (the first probe finds no cached result).
    assert 1 <= live_checks <= math.ceil(elapsed) + 1, (live_checks, elapsed)


async def test_cached_check_shares_one_in_flight_check_and_expires() -> None:
    now = [100.0]
    release = asyncio.Event()

    async def slow_check() -> dict[str, Any]:
        await release.wait()
        return {"n": cache.live_checks}

    cache = CachedCheck(slow_check, max_age_s=1.0, clock=lambda: now[0])
    waiters = [asyncio.create_task(cache.get()) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiters)
    assert cache.live_checks == 1
    assert results == [{"n": 1}] * 50
    now[0] += 0.99
    assert await cache.get() == {"n": 1} and cache.live_checks == 1
    now[0] += 0.02  # 1.01 s after the check started: stale
    assert await cache.get() == {"n": 2} and cache.live_checks == 2


async def test_cached_check_does_not_cache_a_failure_and_survives_a_cancelled_waiter() -> None:
    calls = []

    async def flaky_check() -> dict[str, Any]:
        calls.append(1)
        await asyncio.sleep(0.05)
        if len(calls) == 1:
            raise RuntimeError("first check fails")
        return {"ok": True}

    cache = CachedCheck(flaky_check)
    with pytest.raises(RuntimeError):
        await cache.get()
    impatient = asyncio.create_task(cache.get())
    patient = asyncio.create_task(cache.get())
    await asyncio.sleep(0.01)
    impatient.cancel()  # a probe that hung up must not cancel the shared check
    assert await patient == {"ok": True}
    assert len(calls) == 2


@pytest.fixture
def bare_health_app(redis_server: RedisServer) -> Iterator[Sanic]:
    settings = load_settings({**VALID_ENV, "REDIS_URL": redis_server.url(6)}, env_file=None)
    Sanic.test_mode = True
    app = Sanic(f"health_errors_{os.getpid()}_{time.monotonic_ns()}")
    app.config.SETTINGS = settings
    app.config.FALLBACK_ERROR_FORMAT = "json"
    setup_redis(app, settings)
    setup_health(app, settings)
    yield app
    Sanic._app_registry.pop(app.name, None)


def test_an_exception_while_building_a_report_answers_503_unhealthy(
        bare_health_app: Sanic, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("metrics store corrupt")

    monkeypatch.setattr(health, "aggregate", broken)
    monkeypatch.setattr(health, "check_gmail_config", broken)
    client = ReusableClient(bare_health_app, port=free_port())
    with client:
        for path in ("/health", "/health/ready"):
            _, response = client.get(path)
            assert response.status == 503, path
            assert response.json["status"] == "unhealthy"
            assert response.json["error"] == "RuntimeError: metrics store corrupt"
        _, response = client.get("/health/live")
        assert response.status == 200
