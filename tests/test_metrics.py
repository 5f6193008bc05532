"""Metrics: route patterns, status codes, durations, agent statistics, access control, and
aggregation across worker processes (a real two-worker server)."""

from __future__ import annotations

import multiprocessing
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sanic import Request, Sanic
from sanic.response import HTTPResponse, text

from app.config import Settings
from app.ops.metrics import (
    DURATION_BUCKETS,
    FLUSH_INTERVAL_S,
    MetricsStore,
    RouteStats,
    aggregate,
    record_agent_execution,
    record_event,
    setup_metrics,
    write_snapshot,
)
from app.ops.ratelimit import RateLimitState
from tests.conftest import VALID_ENV
from tests.servers import PostgresServer, RedisServer
from tests.test_health import AppServer, wait_until

Sanic.test_mode = True
_app_counter = iter(range(10_000))


def sample(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format (None when absent)."""
    for line in metrics_text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(\{.*\})? (\S+)", line)
        assert match, f"malformed exposition line: {line!r}"
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if match.group(1) == name and found == labels:
            return float(match.group(3))
    return None


def make_app(**overrides: Any) -> Sanic:
    settings = Settings(**{"jwt_secret": VALID_ENV["JWT_SECRET"], **overrides})
    app = Sanic(f"metrics_test_{next(_app_counter)}")
    app.config.SETTINGS = settings
    setup_metrics(app, settings)

    @app.get("/items/<item_id:int>")
    async def item(request: Request, item_id: int) -> HTTPResponse:
        record_agent_execution(request.app, "email", item_id % 2 == 0, 0.25)
        return text("ok", status=201 if item_id == 7 else 200)

    @app.get("/boom")
    async def boom(request: Request) -> HTTPResponse:
        raise RuntimeError("handler failure")

    return app


def test_route_patterns_status_codes_durations_and_agents() -> None:
    app = make_app()
    paths = ["/items/1", "/items/2", "/items/7", "/items/8", "/nope/1", "/boom"]
    statuses = [app.test_client.get(path)[1].status for path in paths]
    assert statuses == [200, 200, 201, 200, 404, 500]
    app.ctx.ratelimit = RateLimitState(redis_ok=False, errors_total=3)  # the limiter's count
    record_event(app, "oauth_state_errors", 2)
    _, response = app.test_client.get("/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    body = response.text

    route = "/items/<item_id:int>"
    assert sample(body, "assistantapp_http_requests_total",
                  method="GET", route=route, status="200") == 3
    assert sample(body, "assistantapp_http_requests_total",
                  method="GET", route=route, status="201") == 1
    assert sample(body, "assistantapp_http_requests_total",
                  method="GET", route="<unmatched>", status="404") == 1
    assert sample(body, "assistantapp_http_requests_total",
                  method="GET", route="/boom", status="500") == 1
    assert "/items/1" not in body and "/nope/1" not in body  # patterns, never raw paths
    count = sample(body, "assistantapp_http_request_duration_seconds_count",
                   method="GET", route=route)
    total = sample(body, "assistantapp_http_request_duration_seconds_sum",
                   method="GET", route=route)
    low = sample(body, "assistantapp_http_request_duration_seconds_min", method="GET",
                 route=route)
    high = sample(body, "assistantapp_http_request_duration_seconds_max", method="GET",
                  route=route)
    assert count == 4
    assert total is not None and low is not None and high is not None
    assert 0 < low <= high <= total < 5
    # A histogram: cumulative buckets ending in +Inf = count, every request counted in the
    # first bucket that bounds it (what histogram_quantile reads for the p99 alert).
    buckets = {le: sample(body, "assistantapp_http_request_duration_seconds_bucket",
                          method="GET", route=route, le=le)
               for le in [repr(bound) for bound in DURATION_BUCKETS] + ["+Inf"]}
    values = list(buckets.values())
    assert values == sorted(values) and buckets["+Inf"] == 4
    first_full = next(bound for bound in DURATION_BUCKETS if bound >= high)
    assert buckets[repr(first_full)] == 4
    below = [bound for bound in DURATION_BUCKETS if bound < low]
    assert all(buckets[repr(bound)] == 0 for bound in below)
    assert "# TYPE assistantapp_http_request_duration_seconds histogram" in body

    assert sample(body, "assistantapp_agent_executions_total",
                  agent="email", result="success") == 2
    assert sample(body, "assistantapp_agent_executions_total",
                  agent="email", result="failure") == 2
    assert sample(body, "assistantapp_agent_execution_duration_seconds_sum",
                  agent="email") == pytest.approx(1.0)
    assert sample(body, "assistantapp_agent_execution_duration_seconds_count",
                  agent="email") == 4
    assert sample(body, "assistantapp_ratelimit_redis_errors_total") == 3
    assert sample(body, "assistantapp_oauth_state_errors_total") == 2
    assert sample(body, "assistantapp_info", version="0.1.0") == 1
    uptime = sample(body, "assistantapp_uptime_seconds")
    assert uptime is not None and uptime >= 0

    _, response = app.test_client.get("/metrics?format=json")
    data = response.json
    items = next(r for r in data["requests"] if r["route"] == route)
    assert items["count"] == 4 and items["statusCodes"] == {"200": 3, "201": 1}
    assert data["agents"]["byAgent"]["email"] == {
        "total": 4, "successful": 2, "failed": 2, "averageDurationMs": 250.0}
    assert data["events"]["ratelimit_redis_errors"] == 3


def test_known_events_are_exported_before_they_happen() -> None:
    app = make_app()
    _, response = app.test_client.get("/metrics")
    assert sample(response.text, "assistantapp_ratelimit_redis_errors_total") == 0


def test_metrics_are_refused_outside_allowed_networks() -> None:
    # The test client connects from 127.0.0.1, which is not in the allowed network.
    app = make_app(metrics_allowed_cidrs=["10.0.0.0/8"], trusted_proxies=[])
    _, response = app.test_client.get("/metrics")
    assert response.status == 403
    assert response.json["code"] == "metrics_forbidden"
    assert "assistantapp_" not in response.text
    # An untrusted peer cannot claim an allowed address.
    _, response = app.test_client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
    assert response.status == 403


def test_metrics_follow_the_client_address_from_a_trusted_proxy() -> None:
    app = make_app(metrics_allowed_cidrs=["10.0.0.0/8"], trusted_proxies=["127.0.0.1/32"])
    _, inside = app.test_client.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
    assert inside.status == 200
    _, outside = app.test_client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert outside.status == 403


def test_metrics_disabled_means_no_endpoint_but_agents_still_counted() -> None:
    app = make_app(metrics_enabled=False)
    _, response = app.test_client.get("/metrics")
    assert response.status == 404
    app.test_client.get("/items/2")
    assert aggregate(app).store.agents["email"].successes == 1
    assert aggregate(app).store.requests == {}


def _worker_process(directory: str, agent: str, successes: int, failures: int) -> None:
    store = MetricsStore()
    for _ in range(successes):
        store.record_agent(agent, True, 0.5)
    for _ in range(failures):
        store.record_agent(agent, False, 1.5)
    store.record_request("GET", "/api/conversations/<id>", 200, 0.01)
    store.record_request("GET", "/api/conversations/<id>", 404, 0.03)
    write_snapshot(store, Path(directory))


def test_snapshots_of_other_processes_are_merged(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker_process, args=(str(tmp_path), "email", 3, 1)),
               context.Process(target=_worker_process, args=(str(tmp_path), "email", 2, 2))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    (tmp_path / "worker-999999.json").write_text("{not json")  # a torn file is skipped

    app = make_app()
    app.ctx.metrics_dir = tmp_path
    record_agent_execution(app, "calendar", True, 0.1)  # this process's live numbers
    merged = aggregate(app)
    assert set(merged.workers) == {w.pid for w in workers} | {multiprocessing.current_process().pid}
    email = merged.store.agents["email"]
    assert (email.successes, email.failures) == (5, 3)
    assert email.duration_sum == pytest.approx(5 * 0.5 + 3 * 1.5)
    assert merged.store.agents["calendar"].successes == 1
    route = merged.store.requests[("GET", "/api/conversations/<id>")]
    assert route.count == 4
    assert route.statuses == {200: 2, 404: 2}
    assert route.duration_min == pytest.approx(0.01)
    assert route.duration_max == pytest.approx(0.03)
    # Histogram buckets add up across processes: 0.01 s falls in le=0.01, 0.03 s in le=0.05.
    expected = [0] * (len(DURATION_BUCKETS) + 1)
    expected[DURATION_BUCKETS.index(0.01)] = 2
    expected[DURATION_BUCKETS.index(0.05)] = 2
    assert route.buckets == expected


def test_a_snapshot_without_buckets_counts_its_requests_in_the_last_one() -> None:
    route = RouteStats.from_json({"count": 3, "sum": 0.3, "min": 0.1, "max": 0.1,
                                  "statuses": {"200": 3}})
    assert route.buckets == [0] * len(DURATION_BUCKETS) + [3]


@pytest.fixture
def two_worker_server(postgres: PostgresServer, redis_server: RedisServer,
                      database_url: str) -> Iterator[AppServer]:
    server = AppServer({"DATABASE_URL": database_url, "REDIS_URL": redis_server.url()},
                       workers=2).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_counts_are_aggregated_across_two_worker_processes(
        two_worker_server: AppServer) -> None:
    server = two_worker_server
    # Counted requests the server's own start-up probe cannot have made: unmatched paths (all
    # under one pattern) and /health (which also tells which worker answered).
    missing_requests = 60
    healths: list[httpx.Response] = []

    def fresh_connection_get(path: str) -> httpx.Response:
        # No connection reuse: every request is accepted anew, by whichever worker wins.
        return httpx.get(server.base_url + path, timeout=10)

    def both_workers_answered() -> bool:
        with ThreadPoolExecutor(max_workers=4) as pool:
            healths.extend(pool.map(fresh_connection_get, ["/health"] * 8))
        return len({r.json()["pid"] for r in healths}) == 2

    # The second worker may still be starting when the first one answers.
    wait_until(both_workers_answered, timeout=60, interval=0.2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        missing = list(pool.map(fresh_connection_get,
                                [f"/no-such-page/{i}" for i in range(missing_requests)]))
    assert all(r.status_code == 404 for r in missing)
    health_requests = len(healths)
    health_statuses = [str(r.status_code) for r in healths]

    def totals() -> tuple[float | None, float | None]:
        body = server.get("/metrics").text
        unmatched = sample(body, "assistantapp_http_requests_total",
                           method="GET", route="<unmatched>", status="404")
        health = sum(sample(body, "assistantapp_http_requests_total", method="GET",
                            route="/health", status=status) or 0
                     for status in set(health_statuses))
        return unmatched, health

    # Other workers' numbers arrive with their next snapshot (every FLUSH_INTERVAL_S): one
    # worker may see the total before the other does. Once both have flushed, whichever worker
    # answers the scrape reports the same totals, scrape after scrape.
    expected = (missing_requests, health_requests)
    wait_until(lambda: all(totals() == expected for _ in range(6)), timeout=15)
    time.sleep(2 * FLUSH_INTERVAL_S)
    assert [totals() for _ in range(6)] == [expected] * 6
    body = server.get("/metrics").text
    assert sample(body, "assistantapp_workers") == 2
    assert sample(body, "assistantapp_http_request_duration_seconds_count",
                  method="GET", route="<unmatched>") == missing_requests
    assert "/no-such-page" not in body
