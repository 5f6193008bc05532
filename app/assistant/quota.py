"""Per-user quota on model calls (POST .../messages): ASSISTANT_QUOTA_MAX_CALLS per
ASSISTANT_QUOTA_WINDOW, counted in Redis (fixed windows, shared by every worker and app
host). Separate from the per-IP rate limit: one account cannot run up the model bill from
many addresses. Over the quota: 429 with Retry-After. When Redis is unreachable the quota
is not enforced (logged): the per-IP limit still applies, and chat keeps working.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from redis.exceptions import RedisError

from app.config import Settings

log = logging.getLogger(__name__)
KEY_PREFIX = "quota:assistant:"


async def spend_model_call(redis: Any, user_id: int, settings: Settings) -> int | None:
    """Count one call; None when allowed, else the seconds until the window resets."""
    limit, window = settings.assistant_quota_max_calls, settings.assistant_quota_window
    if limit <= 0 or redis is None:
        return None
    now = time.time()
    start = int(now // window) * window
    key = f"{KEY_PREFIX}{user_id}:{start}"
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, window + 60)
            count, _ = await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("assistant quota not enforced, Redis unavailable: %s", exc)
        return None
    if int(count) <= limit:
        return None
    return max(1, math.ceil(start + window - now))
