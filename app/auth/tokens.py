"""Access and refresh tokens (HS256 JWTs) and the refresh-token rotation rules.

- Access tokens {sub, userId, scopes, type: "access", fam} are short-lived (JWT_EXPIRES_IN,
  15 minutes by default) and name their session: `fam`, the refresh-token family of the
  sign-in. app.auth.decorators.require_auth checks the signature and asks app.auth.sessions
  whether that family was revoked (one Redis read, no database read).
- Refresh tokens {sub, type: "refresh", fam, jti} are stored only as their SHA-256 in
  RefreshToken. Each use spends the token and issues a new one in the same family; using a
  spent token again means it was stolen (or replayed), so the whole family is revoked.
  Rotation runs in one transaction that locks the family's rows (SELECT ... FOR UPDATE)
  and re-checks it, so a revocation and a rotation can never interleave. A duplicate
  request with the same token within REFRESH_REUSE_GRACE_SECONDS (two tabs, a retry)
  receives the same successor instead of tripping the reuse detection.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from jwt.api_jws import PyJWS
from jwt.exceptions import DecodeError
from jwt.utils import base64url_decode, base64url_encode
from redis.exceptions import RedisError
from tortoise.transactions import in_transaction

from app.auth import sessions
from app.config import Settings
from app.db.models import RefreshToken, User

log = logging.getLogger(__name__)

ISSUER = "assistantapp"
AUDIENCE = "assistantapp-users"
ALGORITHM = "HS256"
ACCESS = "access"
REFRESH = "refresh"
# Scopes of a normal signed-in user; require_auth(scopes=[...]) checks against these.
DEFAULT_SCOPES: tuple[str, ...] = ("user",)
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
# Clocks of app hosts may differ a little: a token minted on a host a few seconds ahead must
# not be refused as "issued in the future" (iat/nbf) by its neighbour.
CLOCK_SKEW_LEEWAY_SECONDS = 30
SUCCESSOR_KEY_PREFIX = "auth:refresh-successor:"
_SUCCESSOR_KEY_INFO = b"assistantapp refresh-successor cache v1"


class TokenError(Exception):
    """Base of token failures; `code` is the stable API error code."""

    status = 401
    code = "invalid_token"
    message = "Invalid token"


class InvalidTokenError(TokenError):
    pass


class TokenExpiredError(TokenError):
    code = "token_expired"
    message = "Token expired"


class TokenReusedError(TokenError):
    code = "token_reused"
    message = "Refresh token was already used; all sessions of this sign-in were revoked"


class TokenRevokedError(TokenError):
    code = "token_revoked"
    message = "Refresh token has been revoked"


class SessionRevokedError(TokenError):
    code = "session_revoked"
    message = "This session has been signed out"


class RefreshInProgressError(TokenError):
    """A duplicate refresh within the grace period whose successor is not available
    (yet): the client should retry; nothing was revoked."""

    status = 409
    code = "refresh_in_progress"
    message = "This refresh token is being rotated by another request; retry"


_BASE64URL_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")


class _SegmentCheckingJWS(PyJWS):
    """pyjwt's JWS with its base64url check done by one regex instead of a Python generator
    over every byte (that generator was ~40 % of a token check). Same rules, same errors:
    at most two '=' of padding and only on a segment of full 4-character blocks, nothing
    outside the base64url alphabet, canonical encoding only."""

    @staticmethod
    def _decode_base64url_segment(segment: bytes, name: str) -> bytes:
        stripped = segment.rstrip(b"=")
        padding = len(segment) - len(stripped)
        if padding > 2:
            raise DecodeError(f"Invalid {name} padding")
        if padding and len(segment) % 4 != 0:
            raise DecodeError(f"Invalid {name} padding")
        if len(stripped) % 4 == 1 or not _BASE64URL_SEGMENT.fullmatch(stripped):
            raise DecodeError(f"Invalid {name} padding")
        try:
            decoded = base64url_decode(stripped)
        except (TypeError, binascii.Error) as err:
            raise DecodeError(f"Invalid {name} padding") from err
        if base64url_encode(decoded) != stripped:
            raise DecodeError(f"Invalid {name} padding")
        return decoded


_decoder = jwt.PyJWT()
_decoder._jws = _SegmentCheckingJWS(options=_decoder._get_sig_options())


@functools.lru_cache(maxsize=4)
def _verification_key(secret: str) -> jwt.PyJWK:
    """The HMAC key prepared once per secret (pyjwt otherwise re-validates it per decode)."""
    k = base64.urlsafe_b64encode(secret.encode("utf-8")).rstrip(b"=").decode("ascii")
    return jwt.PyJWK({"kty": "oct", "k": k, "alg": ALGORITHM})


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def _encode(claims: dict[str, Any], settings: Settings, lifetime_s: int) -> tuple[str, datetime]:
    issued = _now()
    expires = issued + timedelta(seconds=lifetime_s)
    payload = {**claims, "iss": ISSUER, "aud": AUDIENCE, "iat": issued, "exp": expires}
    return jwt.encode(payload, settings.jwt_secret, algorithm=ALGORITHM), expires


def create_access_token(user_id: int, settings: Settings,
                        scopes: Sequence[str] = DEFAULT_SCOPES,
                        family_id: uuid.UUID | str | None = None) -> str:
    """An access token of session `family_id` (a fresh id, a session of its own, when the
    caller has no refresh-token family, e.g. admin tools and tests)."""
    fam = str(family_id) if family_id is not None else str(uuid.uuid4())
    token, _ = _encode({"sub": str(user_id), "userId": user_id, "scopes": list(scopes),
                        "type": ACCESS, "fam": fam}, settings, settings.jwt_expires_in)
    return token


def revocation_ttl(settings: Settings) -> int:
    """How long a revoked family must be remembered: as long as its access tokens live."""
    return settings.jwt_expires_in + CLOCK_SKEW_LEEWAY_SECONDS + 60


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def decode_token(token: str, settings: Settings, expected_type: str,
                 verify_exp: bool = True) -> dict[str, Any]:
    """Verified claims of `token`, or TokenExpiredError / InvalidTokenError.

    The algorithm list is pinned, so "alg": "none" or RS/HS confusion cannot pass.
    """
    try:
        claims: dict[str, Any] = _decoder.decode(
            token, _verification_key(settings.jwt_secret), algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER, leeway=CLOCK_SKEW_LEEWAY_SECONDS,
            # exp is checked below without the leeway: skew tolerance is for "issued in
            # the future" (iat/nbf), not a longer life.
            options={"require": _REQUIRED_CLAIMS, "verify_exp": False})
    except jwt.PyJWTError:
        raise InvalidTokenError from None
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise InvalidTokenError
    if verify_exp and exp <= time.time():
        raise TokenExpiredError
    if claims.get("type") != expected_type:
        raise InvalidTokenError
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.isdigit():
        raise InvalidTokenError
    if expected_type == ACCESS:
        scopes = claims.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise InvalidTokenError
        if not _is_uuid(claims.get("fam")):
            # Every access token names its session; one without cannot be revoked.
            raise InvalidTokenError
    elif not _is_uuid(claims.get("fam")) or not isinstance(claims.get("jti"), str):
        raise InvalidTokenError
    return claims


async def check_access_token(token: str, settings: Settings, redis: Any) -> dict[str, Any]:
    """decode_token(ACCESS) plus the revocation check of its session."""
    claims = decode_token(token, settings, ACCESS)
    if await sessions.is_revoked(redis, claims["fam"], revocation_ttl(settings)):
        raise SessionRevokedError
    return claims


async def _new_refresh_token(user_id: int, family_id: uuid.UUID, scopes: Sequence[str],
                             settings: Settings) -> tuple[str, RefreshToken]:
    token, expires = _encode({"sub": str(user_id), "type": REFRESH, "fam": str(family_id),
                              "jti": uuid.uuid4().hex, "scopes": list(scopes)},
                             settings, settings.jwt_refresh_expires_in)
    row = await RefreshToken.create(user_id=user_id, family_id=family_id,
                                    token_hash=hash_token(token), expires_at=expires)
    return token, row


def _pair(access: str, refresh: str, settings: Settings) -> dict[str, Any]:
    return {"accessToken": access, "refreshToken": refresh, "tokenType": "Bearer",
            "expiresIn": settings.jwt_expires_in}


async def issue_token_pair(user: User, settings: Settings,
                           scopes: Sequence[str] = DEFAULT_SCOPES) -> dict[str, Any]:
    """A new sign-in: access token plus the first refresh token of a new family."""
    family_id = uuid.uuid4()
    refresh, _ = await _new_refresh_token(user.id, family_id, scopes, settings)
    return _pair(create_access_token(user.id, settings, scopes, family_id), refresh, settings)


def _successor_cipher(settings: Settings) -> Any:
    from app.auth.google_tokens import _fernet_from_secret

    return _fernet_from_secret(settings.jwt_secret, _SUCCESSOR_KEY_INFO)


async def _remember_successor(redis: Any, token_hash: str, successor: str, client_key: str,
                              settings: Settings) -> None:
    if redis is None or settings.refresh_reuse_grace_seconds <= 0:
        return
    # Sealed: the cache must not turn a Redis read into a usable refresh token.
    sealed = _successor_cipher(settings).encrypt(
        f"{hash_token(client_key)}\n{successor}".encode())
    try:
        await redis.set(SUCCESSOR_KEY_PREFIX + token_hash, sealed,
                        ex=settings.refresh_reuse_grace_seconds)
    except (RedisError, OSError) as exc:
        log.warning("refresh grace cache unavailable: %s", exc)


async def _cached_successor(redis: Any, token_hash: str, client_key: str,
                            settings: Settings) -> tuple[bool, str | None]:
    """(an entry exists, the successor if it was made for this client)."""
    if redis is None:
        return False, None
    try:
        sealed = await redis.get(SUCCESSOR_KEY_PREFIX + token_hash)
    except (RedisError, OSError):
        return False, None
    if not sealed:
        return False, None
    try:
        client, _, successor = _successor_cipher(settings).decrypt(sealed).decode(
            "utf-8").partition("\n")
    except Exception:  # a damaged entry is the same as none
        return False, None
    # Only the client that rotated the token (same user agent and address) gets the
    # successor again; anyone else replaying the spent token is a reuse.
    return True, (successor if client == hash_token(client_key) else None)


async def rotate_refresh_token(token: str, settings: Settings, redis: Any = None,
                               client_key: str = "") -> dict[str, Any]:
    """Spend `token` and return a new pair in the same family.

    One transaction: the family's rows are locked (in id order, as revoke_family locks
    them) and re-checked, so a revocation either happens before (this rotation is refused)
    or after (it revokes the successor too). `redis` (optional) holds the grace-period
    successor and receives the revocation on reuse; `client_key` identifies the client
    (user agent and address) that may receive that successor again.
    """
    claims = decode_token(token, settings, REFRESH)
    token_hash = hash_token(token)
    scopes = claims.get("scopes") or list(DEFAULT_SCOPES)
    reused_family: uuid.UUID | None = None
    async with in_transaction():
        found = await RefreshToken.get_or_none(token_hash=token_hash)
        if (found is None or str(found.family_id) != claims["fam"]
                or found.user_id != int(claims["sub"])):
            raise InvalidTokenError
        await (RefreshToken.filter(family_id=found.family_id)
               .select_for_update().order_by("id"))
        # Read again in a new statement: under READ COMMITTED the locking one cannot see a
        # successor that a concurrent rotation inserted while we waited for the lock.
        family = await RefreshToken.filter(family_id=found.family_id).order_by("id")
        row = next(r for r in family if r.id == found.id)
        if any(r.revoked_at is not None for r in family):
            raise TokenRevokedError
        now = _now()
        if row.expires_at <= now:
            raise TokenExpiredError
        if row.used_at is not None:
            successor_row = next((r for r in family if r.id == row.replaced_by_id), None)
            grace = timedelta(seconds=settings.refresh_reuse_grace_seconds)
            if (now - row.used_at <= grace and successor_row is not None
                    and successor_row.used_at is None):
                found_entry, successor = await _cached_successor(redis, token_hash,
                                                                 client_key, settings)
                if successor is not None and hash_token(successor) == successor_row.token_hash:
                    return _pair(create_access_token(row.user_id, settings, scopes,
                                                     row.family_id), successor, settings)
                if not found_entry:
                    # No proof either way (no cache, or Redis down): refuse without revoking.
                    raise RefreshInProgressError
                # An entry made for another client: a stolen copy raced the owner.
            await RefreshToken.filter(family_id=row.family_id, revoked_at=None).update(
                revoked_at=now)
            reused_family = row.family_id
        else:
            await RefreshToken.filter(id=row.id).update(used_at=now)
            refresh, new_row = await _new_refresh_token(row.user_id, row.family_id, scopes,
                                                        settings)
            await RefreshToken.filter(id=row.id).update(replaced_by_id=new_row.id)
            # Before the commit: a duplicate request waiting on our lock finds it.
            await _remember_successor(redis, token_hash, refresh, client_key, settings)
    if reused_family is not None:
        await sessions.publish_revoked(redis, [str(reused_family)], revocation_ttl(settings))
        raise TokenReusedError
    return _pair(create_access_token(row.user_id, settings, scopes, row.family_id), refresh,
                 settings)


async def revoke_family(family_id: uuid.UUID | str, settings: Settings | None = None,
                        redis: Any = None) -> int:
    """Revoke every token of a sign-in; its access tokens stop working at once."""
    async with in_transaction():
        # Same lock order as rotate_refresh_token: a rotation in flight finishes first,
        # and the UPDATE (a new statement) then sees the successor it inserted.
        await RefreshToken.filter(family_id=family_id).select_for_update().order_by("id")
        count = await RefreshToken.filter(family_id=family_id, revoked_at=None).update(
            revoked_at=_now())
    ttl = revocation_ttl(settings) if settings is not None else 86400
    await sessions.publish_revoked(redis, [str(family_id)], ttl)
    return count


async def revoke_user_tokens(user_id: int, settings: Settings | None = None,
                             redis: Any = None) -> int:
    families: list[Any] = list(await RefreshToken.filter(
        user_id=user_id, revoked_at=None).distinct().values_list("family_id", flat=True))
    total = 0
    for family_id in set(families):
        total += await revoke_family(family_id, settings, redis)
    return total


async def revoke_presented_token(token: str, user_id: int | None, settings: Settings,
                                 redis: Any = None) -> tuple[int, int]:
    """Logout with a refresh token: revoke its family. The token may be expired (the user
    is still entitled to end that session) but must be genuine and, when `user_id` is
    given, belong to that user. Returns (user id, revoked rows)."""
    claims = decode_token(token, settings, REFRESH, verify_exp=False)
    owner = int(claims["sub"])
    if user_id is not None and owner != user_id:
        raise InvalidTokenError
    row = await RefreshToken.get_or_none(token_hash=hash_token(token))
    if row is None or row.user_id != owner:
        raise InvalidTokenError
    return owner, await revoke_family(row.family_id, settings, redis)
