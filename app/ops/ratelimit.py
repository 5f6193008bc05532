"""Rate limiting per client IP, shared through Redis across workers and hosts.

Algorithm: a fixed window per client, anchored at the client's first request. One Lua script
does INCR and (on the first hit) PEXPIRE atomically and returns the count and the time left,
so every worker on every host sees the same counter and Redis's clock alone defines the
window (no skew between app hosts).

Exempt: /health/live, /health/ready and /metrics. Load balancers, systemd and Prometheus
poll them from a handful of addresses; limiting them would turn a busy monitoring setup
into a false outage (a 429 probe means "unhealthy" and takes the instance out of service).

Redis down: the limiter fails OPEN. Availability of the product matters more than the limit
for the minutes Redis is away; the failure is counted (`rate_limiter_redis_errors`), shown by
`ratelimit_status()` in /health and /metrics, and logged at most once per
REDIS_WARNING_INTERVAL_S so an outage does not flood the logs. After an error the limiter
skips Redis for REDIS_BACKOFF_S, so a hung Redis does not add its timeout to every request.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from sanic import Request, Sanic
from sanic.response import BaseHTTPResponse, HTTPResponse, json

from app.config import Settings
from app.ops.clientip import client_ip

log = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})
# The page and its files are not the API: a page load must not spend the per-IP API budget
# (it used to cost 4 of the 100 requests of a window).
PAGE_PATHS = frozenset({"/", "/favicon.ico"})
PAGE_PREFIX = "/static/"

KEY_PREFIX = "ratelimit:"
TOO_MANY_MESSAGE = "Too many requests from this IP, please try again later."
REDIS_WARNING_INTERVAL_S = 60.0
REDIS_BACKOFF_S = 2.0
# IPv6 clients usually own a whole /64: limiting single addresses would let one client
# rotate through 2**64 of them.
IPV6_PREFIX = 64

# KEYS[1] = counter key, ARGV[1] = window in ms. Returns {count, ms until the window ends}.
_FIXED_WINDOW_LUA = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if count == 1 or ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


def is_exempt(method: str, path: str) -> bool:
    """Probes, metrics and the page's own files never count against the API budget."""
    return path in EXEMPT_PATHS or (method in ("GET", "HEAD") and (
        path in PAGE_PATHS or path.startswith(PAGE_PREFIX)))


@dataclass
class RateLimitState:
    """Per-worker health of the limiter (errors are counted where they happen)."""

    redis_ok: bool = True
    errors_total: int = 0
    last_warning_at: float = -math.inf
    skip_redis_until: float = 0.0


@dataclass(frozen=True)
class Decision:
    limit: int
    remaining: int
    reset_s: int
    allowed: bool


def human_duration(milliseconds: int) -> str:
    """The window as the seed's 429 body put it: "15 minutes", "1 hour", "90 seconds"."""
    for unit_ms, unit in ((3_600_000, "hour"), (60_000, "minute")):
        if milliseconds >= unit_ms and milliseconds % unit_ms == 0:
            count = milliseconds // unit_ms
            return f"{count} {unit}{'' if count == 1 else 's'}"
    seconds = max(1, math.ceil(milliseconds / 1000))
    return f"{seconds} second{'' if seconds == 1 else 's'}"


def limit_key(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return KEY_PREFIX + ip
    if isinstance(address, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network(f"{address}/{IPV6_PREFIX}", strict=False)
        return f"{KEY_PREFIX}{network}"
    return KEY_PREFIX + str(address)


def ratelimit_status(app: Sanic) -> dict[str, Any]:
    """{"redis_ok": bool, "errors_total": int} for /health and /metrics (this worker)."""
    state: RateLimitState | None = getattr(app.ctx, "ratelimit", None)
    if state is None:
        return {"redis_ok": True, "errors_total": 0}
    return {"redis_ok": state.redis_ok, "errors_total": state.errors_total}


def rate_limit_headers(decision: Decision, window_s: int) -> dict[str, str]:
    # IETF draft-6 fields, as express-rate-limit's standardHeaders sends them.
    return {
        "RateLimit-Policy": f"{decision.limit};w={window_s}",
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_s),
    }


class RateLimiter:
    def __init__(self, app: Sanic, settings: Settings) -> None:
        self.app = app
        self.limit = settings.rate_limit_max_requests
        self.window_ms = settings.rate_limit_window_ms
        self.window_s = max(1, math.ceil(self.window_ms / 1000))
        self.window_text = human_duration(self.window_ms)
        self.state = RateLimitState()
        self.script: Any = None
        app.ctx.ratelimit = self.state
        app.ctx.ratelimit_errors = 0

    async def hit(self, key: str) -> Decision | None:
        """Count one request; None when Redis cannot be asked (fail open)."""
        state = self.state
        redis = getattr(self.app.ctx, "redis", None)
        if redis is None or time.monotonic() < state.skip_redis_until:
            return None
        try:
            script = self.script
            if script is None or script.registered_client is not redis:
                # EVALSHA with a transparent EVAL fallback (e.g. after a Redis restart).
                script = self.script = redis.register_script(_FIXED_WINDOW_LUA)
            count, ttl_ms = await script(keys=[key], args=[self.window_ms])
            count, ttl_ms = int(count), max(0, int(ttl_ms))
        except (RedisError, OSError, TimeoutError, ValueError, TypeError) as exc:
            # Anything Redis does wrong costs the limit, never the request (no 500s).
            self._redis_failed(exc)
            return None
        state.redis_ok = True
        return Decision(limit=self.limit, remaining=max(0, self.limit - count),
                        reset_s=max(1, math.ceil(ttl_ms / 1000)), allowed=count <= self.limit)

    def _redis_failed(self, exc: BaseException) -> None:
        state = self.state
        state.redis_ok = False
        state.errors_total += 1
        self.app.ctx.ratelimit_errors = state.errors_total
        now = time.monotonic()
        state.skip_redis_until = now + REDIS_BACKOFF_S
        if now - state.last_warning_at >= REDIS_WARNING_INTERVAL_S:
            state.last_warning_at = now
            log.warning("rate limiter cannot reach Redis, serving requests unlimited "
                        "(fail open): %s: %s", type(exc).__name__, exc,
                        extra={"rate_limiter_redis_errors": state.errors_total})


def setup_rate_limit(app: Sanic, settings: Settings) -> None:
    limiter = RateLimiter(app, settings)

    async def count_request(request: Request) -> HTTPResponse | None:
        decision = await limiter.hit(limit_key(client_ip(request)))
        if decision is None:
            return None
        request.ctx.ratelimit = decision
        if decision.allowed:
            return None
        headers = rate_limit_headers(decision, limiter.window_s)
        headers["Retry-After"] = str(decision.reset_s)
        # retryAfter: the window in words, as the seed's body said it ("15 minutes" by
        # default); retryAfterSeconds: the exact wait for machines (same as Retry-After).
        return json({"error": TOO_MANY_MESSAGE, "code": "rate_limited",
                     "retryAfter": limiter.window_text,
                     "retryAfterSeconds": decision.reset_s}, status=429, headers=headers)

    # Plain functions: Sanic awaits a middleware's result only when it is awaitable, so
    # exempt requests (probes, scrapes) and responses without a decision cost no coroutine.
    def enforce_rate_limit(request: Request) -> Coroutine[Any, Any, HTTPResponse | None] | None:
        if is_exempt(request.method, request.path):
            return None
        return count_request(request)

    def add_rate_limit_headers(request: Request, response: BaseHTTPResponse) -> None:
        decision: Decision | None = getattr(request.ctx, "ratelimit", None)
        if decision is not None:
            for name, value in rate_limit_headers(decision, limiter.window_s).items():
                response.headers.setdefault(name, value)

    app.on_request(enforce_rate_limit, priority=800)
    app.on_response(add_rate_limit_headers, priority=800)
