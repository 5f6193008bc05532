"""Access and refresh tokens (HS256 JWTs) and the refresh-token rotation rules.

- Access tokens are stateless: {sub, userId, scopes, type: "access"}; checked by
  app.auth.decorators.require_auth without a database read.
- Refresh tokens {sub, type: "refresh", fam, jti} are stored only as their SHA-256 in
  RefreshToken. Each use spends the token and issues a new one in the same family; using a
  spent token again means it was stolen (or replayed), so the whole family is revoked.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from jwt.api_jws import PyJWS
from jwt.exceptions import DecodeError
from jwt.utils import base64url_decode, base64url_encode

from app.config import Settings
from app.db.models import RefreshToken, User

ISSUER = "assistantapp"
AUDIENCE = "assistantapp-users"
ALGORITHM = "HS256"
ACCESS = "access"
REFRESH = "refresh"
# Scopes of a normal signed-in user; require_auth(scopes=[...]) checks against these.
DEFAULT_SCOPES: tuple[str, ...] = ("user",)
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


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
                        scopes: Sequence[str] = DEFAULT_SCOPES) -> str:
    token, _ = _encode({"sub": str(user_id), "userId": user_id, "scopes": list(scopes),
                        "type": ACCESS}, settings, settings.jwt_expires_in)
    return token


def decode_token(token: str, settings: Settings, expected_type: str,
                 verify_exp: bool = True) -> dict[str, Any]:
    """Verified claims of `token`, or TokenExpiredError / InvalidTokenError.

    The algorithm list is pinned, so "alg": "none" or RS/HS confusion cannot pass.
    """
    try:
        claims: dict[str, Any] = _decoder.decode(
            token, _verification_key(settings.jwt_secret), algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER, options={"require": _REQUIRED_CLAIMS, "verify_exp": verify_exp})
    except jwt.ExpiredSignatureError:
        raise TokenExpiredError from None
    except jwt.PyJWTError:
        raise InvalidTokenError from None
    if claims.get("type") != expected_type:
        raise InvalidTokenError
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.isdigit():
        raise InvalidTokenError
    if expected_type == ACCESS:
        scopes = claims.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise InvalidTokenError
    elif not isinstance(claims.get("fam"), str) or not isinstance(claims.get("jti"), str):
        raise InvalidTokenError
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
    refresh, _ = await _new_refresh_token(user.id, uuid.uuid4(), scopes, settings)
    return _pair(create_access_token(user.id, settings, scopes), refresh, settings)


async def rotate_refresh_token(token: str, settings: Settings) -> dict[str, Any]:
    """Spend `token` and return a new pair in the same family."""
    claims = decode_token(token, settings, REFRESH)
    row = await RefreshToken.get_or_none(token_hash=hash_token(token))
    if row is None or str(row.family_id) != claims["fam"] or row.user_id != int(claims["sub"]):
        raise InvalidTokenError
    if row.revoked_at is not None:
        raise TokenRevokedError
    now = _now()
    if row.expires_at <= now:
        raise TokenExpiredError
    # Conditional update: of two concurrent uses only one can spend the token.
    spent = await RefreshToken.filter(id=row.id, used_at=None, revoked_at=None).update(used_at=now)
    if not spent:
        await revoke_family(row.family_id)
        raise TokenReusedError
    scopes = claims.get("scopes") or list(DEFAULT_SCOPES)
    refresh, new_row = await _new_refresh_token(row.user_id, row.family_id, scopes, settings)
    await RefreshToken.filter(id=row.id).update(replaced_by_id=new_row.id)
    return _pair(create_access_token(row.user_id, settings, scopes), refresh, settings)


async def revoke_family(family_id: uuid.UUID | str) -> int:
    return await RefreshToken.filter(family_id=family_id, revoked_at=None).update(
        revoked_at=_now())


async def revoke_user_tokens(user_id: int) -> int:
    return await RefreshToken.filter(user_id=user_id, revoked_at=None).update(revoked_at=_now())


async def revoke_presented_token(token: str, user_id: int, settings: Settings) -> int:
    """Logout with a refresh token: revoke its family. The token may be expired (the user
    is still entitled to end that session) but must be genuine and belong to `user_id`."""
    claims = decode_token(token, settings, REFRESH, verify_exp=False)
    if int(claims["sub"]) != user_id:
        raise InvalidTokenError
    row = await RefreshToken.get_or_none(token_hash=hash_token(token))
    if row is None or row.user_id != user_id:
        raise InvalidTokenError
    return await revoke_family(row.family_id)
