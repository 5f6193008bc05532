"""The shared Redis client (rate-limit counters, OAuth state, short-lived caches).

The client is created per worker in `before_server_start` and never pings at startup:
redis-py connects lazily, so a Redis outage degrades the features that use it (visible in
/health and /metrics) instead of keeping the whole app from starting.
"""

from __future__ import annotations

import logging

import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sanic import Sanic

from app.config import Settings

log = logging.getLogger(__name__)

# Short timeouts: every Redis call sits on a request's path (the rate limiter runs on every
# request), so a hung Redis must cost a request at most about a second, never a minute.
REDIS_SOCKET_TIMEOUT_S = 0.5
REDIS_CONNECT_TIMEOUT_S = 0.5
# One immediate retry heals a pooled connection that Redis closed (restart, idle timeout).
REDIS_RETRIES = 1


def create_redis_client(redis_url: str) -> redis_asyncio.Redis:
    return redis_asyncio.from_url(
        redis_url,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), REDIS_RETRIES),
        health_check_interval=30,
        decode_responses=False,
    )


def setup_redis(app: Sanic, settings: Settings) -> None:
    async def open_redis(app: Sanic) -> None:
        app.ctx.redis = create_redis_client(settings.redis_url)

    async def close_redis(app: Sanic) -> None:
        client = getattr(app.ctx, "redis", None)
        if client is None:
            return
        try:
            await client.aclose()
        except Exception as exc:  # closing must never turn a clean stop into a crash
            log.warning("closing the Redis client failed: %s", exc)
        app.ctx.redis = None

    # Early, so other listeners (health checks, OAuth state) find app.ctx.redis ready.
    app.register_listener(open_redis, "before_server_start", priority=1000)
    app.register_listener(close_redis, "after_server_stop")
