"""Rate limiting through the real Redis: limits, headers, windows, client IPs, outages,
and one limit shared by two app instances and by two Sanic worker processes."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sanic import Sanic
from sanic_testing.reusable import ReusableClient

import app.ops.ratelimit as ratelimit
from app.config import SETTINGS
from app.ops.clientip import parse_networks, resolve_client_ip
from app.ops.ratelimit import TOO_MANY_MESSAGE, human_duration, limit_key, ratelimit_status
from tests.conftest import VALID_ENV
from tests.ops_app import drop_app, make_ops_app, ops_settings
from tests.servers import RedisServer, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
SANIC = str(Path(sys.executable).with_name("sanic"))
REDIS_DB = 5  # a database of the session Redis of its own, flushed before every test


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    url = redis_server.url(REDIS_DB)
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


class OpsServer:
    """An ops app served on a real loopback socket (so the peer address is 127.0.0.1)."""

    def __init__(self, **env: str) -> None:
        self.app = make_ops_app(ops_settings(**env))
        self.client = ReusableClient(self.app, port=free_port())

    def __enter__(self) -> OpsServer:
        self.client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.client.__exit__(*exc)
        finally:
            drop_app(self.app)

    def get(self, path: str = "/api/data", **headers: str) -> Any:
        _, response = self.client.get(path, headers=headers)
        return response


def assert_limit_headers(response: Any, limit: int, remaining: int, window_s: int) -> None:
    assert response.headers["ratelimit-limit"] == str(limit)
    assert response.headers["ratelimit-remaining"] == str(remaining)
    assert 1 <= int(response.headers["ratelimit-reset"]) <= window_s
    assert response.headers["ratelimit-policy"] == f"{limit};w={window_s}"


# --- Client IP --------------------------------------------------------------------------------

TRUSTED = parse_networks(["127.0.0.1/32", "10.0.0.0/8", "::1/128"])


@pytest.mark.parametrize(("peer", "xff", "expected"), [
    ("198.51.100.7", None, "198.51.100.7"),                      # direct client
    ("198.51.100.7", "1.2.3.4", "198.51.100.7"),                 # untrusted peer: XFF ignored
    ("127.0.0.1", None, "127.0.0.1"),                            # proxy without header
    ("127.0.0.1", "203.0.113.9", "203.0.113.9"),                 # trusted proxy
    ("127.0.0.1", "6.6.6.6, 203.0.113.9", "203.0.113.9"),        # client-forged left part
    ("127.0.0.1", "203.0.113.9, 10.1.2.3", "203.0.113.9"),       # two trusted hops
    ("127.0.0.1", "10.9.9.9, 10.1.2.3", "10.9.9.9"),             # all trusted: leftmost
    ("127.0.0.1", "garbage, 10.1.2.3", "invalid-forwarded-for"),  # junk: untrusted client
    ("127.0.0.1", "203.0.113.9:4711", "203.0.113.9"),            # address with port
    ("::1", "[2001:db8::1]:443", "2001:db8::1"),                 # IPv6 with port
    ("::ffff:127.0.0.1", "203.0.113.9", "203.0.113.9"),          # v4-mapped proxy address
    ("", "203.0.113.9", "203.0.113.9"),                          # UNIX socket: local proxy
    ("", None, "unix-socket"),                                   # UNIX socket, no header
    ("", "junk", "invalid-forwarded-for"),
])
def test_resolve_client_ip(peer: str, xff: str | None, expected: str) -> None:
    assert resolve_client_ip(peer, xff, TRUSTED) == expected


def test_the_window_reads_like_the_seeds_retry_after() -> None:
    default = next(s.default for s in SETTINGS if s.env == "RATE_LIMIT_WINDOW_MS")
    assert default is not None
    assert human_duration(int(default)) == "15 minutes"
    assert human_duration(900_000) == "15 minutes"
    assert human_duration(60_000) == "1 minute"
    assert human_duration(3_600_000) == "1 hour"
    assert human_duration(7_200_000) == "2 hours"
    assert human_duration(90_000) == "90 seconds"
    assert human_duration(1_500) == "2 seconds"
    assert human_duration(1) == "1 second"


def test_ipv6_clients_are_limited_per_64() -> None:
    assert limit_key("2001:db8:1:2:aaaa::1") == limit_key("2001:db8:1:2:bbbb::2")
    assert limit_key("2001:db8:1:3::1") != limit_key("2001:db8:1:2::1")
    assert limit_key("203.0.113.9") == "ratelimit:203.0.113.9"


# --- Limits against the real Redis ------------------------------------------------------------

def test_limit_hit_with_standard_headers(redis_url: str) -> None:
    with OpsServer(REDIS_URL=redis_url, RATE_LIMIT_MAX_REQUESTS="3",
                   RATE_LIMIT_WINDOW_MS="60000") as server:
        for remaining in (2, 1, 0):
            response = server.get()
            assert response.status == 200
            assert_limit_headers(response, 3, remaining, 60)
            assert "retry-after" not in response.headers
        limited = server.get()
        assert limited.status == 429
        assert_limit_headers(limited, 3, 0, 60)
        retry_after = int(limited.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert limited.headers["ratelimit-reset"] == str(retry_after)
        body = limited.json
        assert body["error"] == TOO_MANY_MESSAGE
        assert body["retryAfter"] == "1 minute"  # the window, in the seed's words
        assert body["retryAfterSeconds"] == retry_after
        # The 429 is a normal response of ours: security headers and a request id.
        assert limited.headers["x-content-type-options"] == "nosniff"
        assert limited.headers["x-request-id"]
    counter = redis.Redis.from_url(redis_url)
    try:
        assert int(counter.get("ratelimit:127.0.0.1") or 0) == 4
        assert 0 < counter.pttl("ratelimit:127.0.0.1") <= 60000
    finally:
        counter.close()


def test_window_resets(redis_url: str) -> None:
    with OpsServer(REDIS_URL=redis_url, RATE_LIMIT_MAX_REQUESTS="2",
                   RATE_LIMIT_WINDOW_MS="1000") as server:
        assert [server.get().status for _ in range(3)] == [200, 200, 429]
        time.sleep(1.2)
        response = server.get()
        assert response.status == 200
        assert_limit_headers(response, 2, 1, 1)


def test_probes_and_metrics_are_exempt(redis_url: str) -> None:
    with OpsServer(REDIS_URL=redis_url, RATE_LIMIT_MAX_REQUESTS="1") as server:
        for path in ("/health/live", "/health/ready", "/metrics") * 3:
            response = server.get(path)
            assert response.status == 200
            assert "ratelimit-limit" not in response.headers
        # They spent nothing: the one real request of the window is still available.
        assert server.get().status == 200
        assert server.get().status == 429


def test_the_page_and_its_files_spend_no_api_budget(redis_url: str) -> None:
    with OpsServer(REDIS_URL=redis_url, RATE_LIMIT_MAX_REQUESTS="1") as server:
        for path in ("/", "/static/app.js", "/static/app.css", "/favicon.ico") * 3:
            assert "ratelimit-limit" not in server.get(path).headers, path
        assert server.get().status == 200
        assert server.get().status == 429
        # Writes to the page's paths are not page loads: they count.
        _, response = server.client.post("/", headers={})
        assert response.status == 429


def test_errors_and_unknown_paths_count_too(redis_url: str) -> None:
    with OpsServer(REDIS_URL=redis_url, RATE_LIMIT_MAX_REQUESTS="2") as server:
        assert server.get("/api/nope").status == 404
        assert server.get("/api/boom").status == 500
        assert server.get("/api/nope").status == 429


def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(redis_url: str) -> None:
    # 127.0.0.1 (the test client) is not a trusted proxy here.
    with OpsServer(REDIS_URL=redis_url, RATE_LIMIT_MAX_REQUESTS="2",
                   TRUSTED_PROXIES="10.250.0.0/16") as server:
        statuses = [server.get(**{"X-Forwarded-For": f"198.51.100.{i}"}).status
                    for i in range(5)]
        assert statuses == [200, 200, 429, 429, 429]


def test_forwarded_for_from_trusted_proxy_is_honored(redis_url: str) -> None:
    with OpsServer(REDIS_URL=redis_url, RATE_LIMIT_MAX_REQUESTS="2",
                   TRUSTED_PROXIES="127.0.0.1/32") as server:
        client_a = {"X-Forwarded-For": "203.0.113.5"}
        first = server.get(**client_a)
        assert first.status == 200
        assert first.json["client"] == "203.0.113.5"
        assert server.get(**client_a).status == 200
        assert server.get(**client_a).status == 429
        # Forging more addresses in front does not make client A someone else.
        assert server.get(**{"X-Forwarded-For": "1.1.1.1, 203.0.113.5"}).status == 429
        # Another client behind the same proxy has its own budget.
        other = server.get(**{"X-Forwarded-For": "203.0.113.6"})
        assert other.status == 200
        assert_limit_headers(other, 2, 1, 900)


def test_two_app_instances_share_one_limit(redis_url: str) -> None:
    env = {"REDIS_URL": redis_url, "RATE_LIMIT_MAX_REQUESTS": "4"}
    with OpsServer(**env) as one, OpsServer(**env) as two:
        statuses = [(one if i % 2 else two).get().status for i in range(8)]
    assert statuses == [200, 200, 200, 200, 429, 429, 429, 429]


# --- Redis outage: fail open, visibly ---------------------------------------------------------

def test_redis_down_fails_open_and_reports(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ratelimit, "REDIS_BACKOFF_S", 0.0)  # try Redis on every request
    own_redis = RedisServer()
    own_redis.start()
    try:
        with OpsServer(REDIS_URL=own_redis.url(), RATE_LIMIT_MAX_REQUESTS="2") as server:
            assert server.get().status == 200
            assert ratelimit_status(server.app) == {"redis_ok": True, "errors_total": 0}

            own_redis.stop()
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="app.ops.ratelimit"):
                responses = [server.get() for _ in range(4)]
            assert [r.status for r in responses] == [200] * 4  # beyond the limit: fail open
            assert all("ratelimit-limit" not in r.headers for r in responses)
            status = ratelimit_status(server.app)
            assert status["redis_ok"] is False
            assert status["errors_total"] == 4
            assert server.app.ctx.ratelimit_errors == 4
            warnings = [r for r in caplog.records if r.name == "app.ops.ratelimit"]
            assert len(warnings) == 1  # at most one warning per interval, not one per request
            assert "fail open" in warnings[0].getMessage()

            own_redis.start()  # same port: the limiter recovers by itself
            recovered = server.get()
            assert recovered.status == 200
            assert_limit_headers(recovered, 2, 1, 900)  # counting restarted in a fresh Redis
            assert server.get().status == 200
            assert server.get().status == 429
            assert ratelimit_status(server.app)["redis_ok"] is True
    finally:
        own_redis.destroy()


def test_backoff_skips_redis_after_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    own_redis = RedisServer()
    own_redis.start()
    own_redis.stop()
    try:
        with OpsServer(REDIS_URL=own_redis.url()) as server:
            # Redis down at startup: the app starts and serves anyway.
            assert [server.get().status for _ in range(3)] == [200] * 3
            # Only the first request paid for a connection attempt; the others skipped Redis.
            assert ratelimit_status(server.app)["errors_total"] == 1
            assert server.app.ctx.redis is not None
        assert server.app.ctx.redis is None  # closed by after_server_stop
    finally:
        own_redis.destroy()


def test_hung_redis_costs_a_request_about_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis that accepts connections but never answers: short timeouts, then fail open."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes handshakes; nobody ever reads or answers
    try:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with OpsServer(REDIS_URL=url) as server:
            started = time.monotonic()
            response = server.get()
            elapsed = time.monotonic() - started
            assert response.status == 200
            assert elapsed < 4.0, elapsed  # 0.5 s socket timeout, one retry (not forever)
            assert ratelimit_status(server.app) == {"redis_ok": False, "errors_total": 1}
            started = time.monotonic()
            assert server.get().status == 200  # within the backoff: Redis not even asked
            assert time.monotonic() - started < 0.5
    finally:
        silent.close()


def test_status_before_setup() -> None:
    Sanic.test_mode = True
    bare = Sanic("ratelimit_status_bare")
    try:
        assert ratelimit_status(bare) == {"redis_ok": True, "errors_total": 0}
    finally:
        drop_app(bare)


# --- The real server: two Sanic workers, one limit --------------------------------------------

def _request(port: int, path: str, timeout: float = 20) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def _log_entries(log_path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def _access_pids(log_path: Path, path: str) -> set[int]:
    return {e["pid"] for e in _log_entries(log_path)
            if e.get("logger") == "app.access" and e.get("path") == path}


def _ready_workers(log_path: Path) -> set[int]:
    return {e["pid"] for e in _log_entries(log_path)
            if e.get("logger") == "sanic.server" and str(e.get("msg")).startswith("Worker ready")}


@pytest.fixture
def two_worker_server(tmp_path: Path, database_url: str, redis_url: str
                      ) -> Iterator[tuple[int, Path]]:
    port = free_port()
    log_path = tmp_path / "server.log"
    names = {s.env for s in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(VALID_ENV)
    env.update({"PYTHONPATH": str(ROOT), "DATABASE_URL": database_url, "REDIS_URL": redis_url,
                "RATE_LIMIT_MAX_REQUESTS": "10", "RATE_LIMIT_WINDOW_MS": "60000",
                "LOG_LEVEL": "info"})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [SANIC, "app:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "2", "--no-motd"],
            cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_for_port(port, timeout=90)
        # Wait until both workers are ready (their JSON "Worker ready" lines carry the pid).
        deadline = time.monotonic() + 90
        while len(_ready_workers(log_path)) < 2:
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        # Probes are exempt, so this spends no budget.
        assert _request(port, "/health/live")[0] == 200
        yield port, log_path
    finally:
        # SIGTERM to the main process only: it stops its workers in order.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.mark.slow
def test_two_workers_share_one_limit(two_worker_server: tuple[int, Path]) -> None:
    port, log_path = two_worker_server
    probe = "/api/rate-limit-probe"
    results = [_request(port, probe) for _ in range(24)]
    statuses = [status for status, _ in results]
    assert all(status != 429 for status in statuses[:10]), statuses
    assert statuses[10:] == [429] * 14, statuses
    # Each response went through the whole stack of the real factory.
    for status, headers in results:
        assert headers["ratelimit-limit"] == "10"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-request-id"]
        if status == 429:
            assert 1 <= int(headers["retry-after"]) <= 60
    # ...and both worker processes served them, so the shared counter did the limiting.
    time.sleep(0.5)  # let the last access lines reach the log
    assert len(_access_pids(log_path, probe)) == 2


def test_cors_preflights_spend_no_budget(redis_url: str) -> None:
    origin = "https://app.example.com"
    with OpsServer(REDIS_URL=redis_url, RATE_LIMIT_MAX_REQUESTS="1",
                   CORS_ORIGIN=origin) as server:
        for _ in range(3):
            _, response = server.client.options(
                "/api/data", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
            assert response.status == 204
        limited_answer = server.get(Origin=origin)
        assert limited_answer.status == 200
        refused = server.get(Origin=origin)
        assert refused.status == 429
        # The browser may read the 429 (CORS headers on it), so the client sees why.
        assert refused.headers["access-control-allow-origin"] == origin
