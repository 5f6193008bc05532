"""Revoked sessions: an access token names its session (the refresh-token family, `fam`)
and is refused as soon as that family is revoked — by logout, `logout?all=1` or the reuse
detection of a stolen refresh token.

The database (refresh_tokens.revoked_at) is the truth. Every revocation is also written to
Redis (`auth:revoked-session:<fam>`, kept as long as an access token of that family can
live), so the per-request check is one Redis GET instead of a database query; a revoked
family is remembered in a small in-process cache (revocation never ends, so the cache can
never be stale). When Redis cannot answer, the check falls back to the database: an outage
of Redis costs a query, never a revoked session coming back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger(__name__)

REVOKED_KEY_PREFIX = "auth:revoked-session:"
# Entries of the in-process cache of revoked families (oldest dropped first).
LOCAL_CACHE_SIZE = 10_000

_revoked_locally: dict[str, float] = {}


def _key(family_id: str) -> str:
    return REVOKED_KEY_PREFIX + family_id


def _remember(family_id: str, ttl_s: int) -> None:
    if len(_revoked_locally) >= LOCAL_CACHE_SIZE:
        now = time.monotonic()
        for fam in [f for f, until in _revoked_locally.items() if until <= now]:
            del _revoked_locally[fam]
        while len(_revoked_locally) >= LOCAL_CACHE_SIZE:
            del _revoked_locally[next(iter(_revoked_locally))]
    _revoked_locally[family_id] = time.monotonic() + ttl_s


def _known_revoked(family_id: str) -> bool:
    until = _revoked_locally.get(family_id)
    if until is None:
        return False
    if until <= time.monotonic():
        del _revoked_locally[family_id]
        return False
    return True


async def publish_revoked(redis: Any, family_ids: Iterable[str], ttl_s: int) -> None:
    """Tell every worker that these families are revoked (after the database says so)."""
    families = [str(fam) for fam in family_ids]
    for fam in families:
        _remember(fam, ttl_s)
    if redis is None or not families:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for fam in families:
                pipe.set(_key(fam), b"1", ex=ttl_s)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        # The database row is revoked; other workers find it by the database fallback
        # only while Redis is unreachable, so say loudly that their check may lag.
        log.error("could not publish %d revoked session(s) to Redis: %s", len(families), exc)


async def is_revoked(redis: Any, family_id: str, ttl_s: int) -> bool:
    if _known_revoked(family_id):
        return True
    if redis is not None:
        try:
            found = await redis.exists(_key(family_id))
        except (RedisError, OSError):
            found = None
        if found is not None:
            if found:
                _remember(family_id, ttl_s)
            return bool(found)
    return await _revoked_in_database(family_id, ttl_s)


async def _revoked_in_database(family_id: str, ttl_s: int) -> bool:
    from app.db.models import RefreshToken

    revoked = await RefreshToken.filter(family_id=family_id,
                                        revoked_at__isnull=False).exists()
    if revoked:
        _remember(family_id, ttl_s)
    return revoked
