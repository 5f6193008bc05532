"""JWT access/refresh tokens: claims, every decode failure mode, rotation, reuse, revocation."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from app.auth import sessions, tokens
from app.auth.tokens import (
    AUDIENCE,
    ISSUER,
    InvalidTokenError,
    RefreshInProgressError,
    SessionRevokedError,
    TokenExpiredError,
    TokenReusedError,
    TokenRevokedError,
    check_access_token,
    create_access_token,
    decode_token,
    hash_token,
    issue_token_pair,
    revoke_family,
    revoke_presented_token,
    revoke_user_tokens,
    rotate_refresh_token,
)
from app.cache import create_redis_client
from app.config import Settings, load_settings
from app.db.models import RefreshToken
from tests.conftest import VALID_ENV, replace_settings


@pytest.fixture
def settings() -> Settings:
    """Settings for the tests that need no database."""
    return load_settings(VALID_ENV, env_file=None)


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "7", "userId": 7, "scopes": ["user"], "type": "access",
                              "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600,
                              "fam": str(uuid.uuid4())}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims: dict[str, Any], secret: str, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def test_access_token_claims(settings: Any) -> None:
    token = create_access_token(42, settings, ["user", "email"])
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    claims = decode_token(token, settings, tokens.ACCESS)
    assert claims["sub"] == "42" and claims["userId"] == 42
    assert claims["scopes"] == ["user", "email"]
    assert claims["type"] == "access"
    assert claims["iss"] == "assistantapp" and claims["aud"] == "assistantapp-users"
    assert claims["exp"] - claims["iat"] == settings.jwt_expires_in


def test_access_lifetime_comes_from_settings(settings: Any) -> None:
    settings = replace_settings(settings, jwt_expires_in=900)
    claims = decode_token(create_access_token(1, settings), settings, tokens.ACCESS)
    assert claims["exp"] - claims["iat"] == 900


def _bad_tokens(secret: str) -> dict[str, str]:
    good = _sign(_claims(), secret)
    with warnings.catch_warnings():  # pyjwt warns that the key is short for HS512; we know
        warnings.simplefilter("ignore")
        hs512 = _sign(_claims(), secret, "HS512")
    head, payload, sig = good.split(".")
    return {
        "wrong signature": _sign(_claims(), secret + "-other"),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}.",
        "alg none with signature": f"{_b64({'alg': 'none'})}.{_b64(_claims())}.{sig}",
        "other HMAC algorithm": hs512,
        "wrong audience": _sign(_claims(aud="someone-else"), secret),
        "wrong issuer": _sign(_claims(iss="evil"), secret),
        "refresh token as access": _sign(_claims(type="refresh", fam="f", jti="j"), secret),
        "no type": _sign(_claims(type=None), secret),
        "missing sub": _sign(_claims(sub=None), secret),
        "non-numeric sub": _sign(_claims(sub="admin"), secret),
        "missing exp": _sign(_claims(exp=None), secret),
        "missing iat": _sign(_claims(iat=None), secret),
        "missing aud": _sign(_claims(aud=None), secret),
        "missing iss": _sign(_claims(iss=None), secret),
        "scopes not a list": _sign(_claims(scopes="admin"), secret),
        "tampered payload": f"{head}.{_b64(_claims(sub='1', userId=1))}.{sig}",
        "garbage": "not-a-jwt",
        "empty": "",
        "two segments": f"{head}.{payload}",
    }


@pytest.mark.parametrize("case", list(_bad_tokens("x" * 64)))
def test_invalid_access_tokens_are_rejected(settings: Any, case: str) -> None:
    token = _bad_tokens(settings.jwt_secret)[case]
    with pytest.raises(InvalidTokenError):
        decode_token(token, settings, tokens.ACCESS)


def test_the_valid_control_token_passes(settings: Any) -> None:
    # Guards the failure-mode table above: only the listed defect makes those tokens fail.
    claims = decode_token(_sign(_claims(), settings.jwt_secret), settings,
                          tokens.ACCESS)
    assert claims["sub"] == "7"


def test_expired_token_is_reported_as_expired(settings: Any) -> None:
    now = int(time.time())
    token = _sign(_claims(iat=now - 120, exp=now - 60), settings.jwt_secret)
    with pytest.raises(TokenExpiredError):
        decode_token(token, settings, tokens.ACCESS)


def test_expired_token_with_bad_signature_is_invalid_not_expired(settings: Any) -> None:
    now = int(time.time())
    token = _sign(_claims(iat=now - 120, exp=now - 60), "another-secret-another-secret-xx")
    with pytest.raises(InvalidTokenError):
        decode_token(token, settings, tokens.ACCESS)


def test_access_token_is_not_a_refresh_token(settings: Any) -> None:
    with pytest.raises(InvalidTokenError):
        decode_token(create_access_token(1, settings), settings, tokens.REFRESH)


async def test_issue_token_pair_stores_only_the_hash(app_settings: Any, make_user: Any,
                                                     db_session: Any) -> None:
    user = await make_user()
    async with db_session():
        pair = await issue_token_pair(user, app_settings)
        rows = await RefreshToken.filter(user_id=user.id)
    assert set(pair) == {"accessToken", "refreshToken", "tokenType", "expiresIn"}
    assert pair["tokenType"] == "Bearer" and pair["expiresIn"] == app_settings.jwt_expires_in
    refresh_claims = decode_token(pair["refreshToken"], app_settings, tokens.REFRESH)
    assert refresh_claims["sub"] == str(user.id) and refresh_claims["type"] == "refresh"
    assert refresh_claims["exp"] - refresh_claims["iat"] == app_settings.jwt_refresh_expires_in
    assert len(rows) == 1
    row = rows[0]
    assert row.token_hash == hash_token(pair["refreshToken"])
    assert len(row.token_hash) == 64 and pair["refreshToken"] not in row.token_hash
    assert str(row.family_id) == refresh_claims["fam"]
    assert row.used_at is None and row.revoked_at is None
    assert abs((row.expires_at - datetime.now(UTC)).total_seconds()
               - app_settings.jwt_refresh_expires_in) < 10


async def test_rotation_spends_the_old_token_and_keeps_the_family(
        app_settings: Any, make_user: Any, db_session: Any) -> None:
    user = await make_user()
    async with db_session():
        first = await issue_token_pair(user, app_settings)
        second = await rotate_refresh_token(first["refreshToken"], app_settings)
        old = await RefreshToken.get(token_hash=hash_token(first["refreshToken"]))
        new = await RefreshToken.get(token_hash=hash_token(second["refreshToken"]))
    assert second["refreshToken"] != first["refreshToken"]
    assert decode_token(second["accessToken"], app_settings, tokens.ACCESS)["userId"] == user.id
    assert old.used_at is not None and old.revoked_at is None
    assert old.replaced_by_id == new.id
    assert new.family_id == old.family_id and new.used_at is None


async def _past_the_grace(token: str) -> None:
    """Make the spend of `token` older than the refresh grace period."""
    await RefreshToken.filter(token_hash=hash_token(token)).update(
        used_at=datetime.now(UTC) - timedelta(minutes=5))


async def test_reuse_of_a_spent_token_revokes_the_whole_family(
        app_settings: Any, make_user: Any, db_session: Any) -> None:
    user = await make_user()
    async with db_session():
        first = await issue_token_pair(user, app_settings)
        other_sign_in = await issue_token_pair(user, app_settings)
        second = await rotate_refresh_token(first["refreshToken"], app_settings)
        await _past_the_grace(first["refreshToken"])
        with pytest.raises(TokenReusedError):
            await rotate_refresh_token(first["refreshToken"], app_settings)
        family = await RefreshToken.filter(
            family_id=(await RefreshToken.get(
                token_hash=hash_token(first["refreshToken"]))).family_id)
        # The thief's (or the victim's) newer token is dead too.
        with pytest.raises(TokenRevokedError):
            await rotate_refresh_token(second["refreshToken"], app_settings)
        # Another sign-in of the same user is a different family and keeps working.
        still_ok = await rotate_refresh_token(other_sign_in["refreshToken"], app_settings)
    assert len(family) == 2 and all(row.revoked_at is not None for row in family)
    assert still_ok["refreshToken"]


async def test_concurrent_use_without_grace_cache_lets_only_one_through(
        app_settings: Any, make_user: Any, db_session: Any) -> None:
    user = await make_user()
    async with db_session():
        pair = await issue_token_pair(user, app_settings)
        results = await asyncio.gather(
            *(rotate_refresh_token(pair["refreshToken"], app_settings) for _ in range(4)),
            return_exceptions=True)
        rows = await RefreshToken.filter(user_id=user.id)
    successes = [r for r in results if isinstance(r, dict)]
    assert len(successes) == 1
    # Without a grace cache (no Redis) the duplicates are told to retry; nothing is revoked.
    assert all(isinstance(r, RefreshInProgressError) for r in results if not isinstance(r, dict))
    assert len(rows) == 2 and all(r.revoked_at is None for r in rows)


@pytest.fixture
async def redis(app_settings: Any) -> Any:
    client = create_redis_client(app_settings.redis_url)
    yield client
    await client.aclose()


async def test_concurrent_refresh_from_one_client_gets_the_same_successor(
        app_settings: Any, make_user: Any, db_session: Any, redis: Any) -> None:
    """Two tabs (or the page's retry) refresh at once: both keep the session."""
    user = await make_user()
    async with db_session():
        pair = await issue_token_pair(user, app_settings)
        results = await asyncio.gather(
            *(rotate_refresh_token(pair["refreshToken"], app_settings, redis, "ip|browser")
              for _ in range(4)))
        rows = await RefreshToken.filter(user_id=user.id)
        # The shared successor keeps working.
        later = await rotate_refresh_token(results[0]["refreshToken"], app_settings, redis,
                                           "ip|browser")
    assert len({r["refreshToken"] for r in results}) == 1
    assert len(rows) == 2 and all(r.revoked_at is None for r in rows)
    assert later["refreshToken"]


async def test_grace_does_not_serve_another_client_or_a_late_reuse(
        app_settings: Any, make_user: Any, db_session: Any, redis: Any) -> None:
    user = await make_user()
    async with db_session():
        pair = await issue_token_pair(user, app_settings)
        await rotate_refresh_token(pair["refreshToken"], app_settings, redis, "ip|browser")
        # A stolen copy replayed from elsewhere within the grace period: reuse.
        with pytest.raises(TokenReusedError):
            await rotate_refresh_token(pair["refreshToken"], app_settings, redis, "ip2|curl")
        assert all(r.revoked_at is not None
                   for r in await RefreshToken.filter(user_id=user.id))

        late = await issue_token_pair(user, app_settings)
        await rotate_refresh_token(late["refreshToken"], app_settings, redis, "ip|browser")
        await RefreshToken.filter(token_hash=hash_token(late["refreshToken"])).update(
            used_at=datetime.now(UTC) - timedelta(seconds=app_settings.refresh_reuse_grace_seconds
                                                  + 1))
        # The same client, but after the grace period: reuse as before.
        with pytest.raises(TokenReusedError):
            await rotate_refresh_token(late["refreshToken"], app_settings, redis, "ip|browser")

        moved_on = await issue_token_pair(user, app_settings)
        second = await rotate_refresh_token(moved_on["refreshToken"], app_settings, redis, "c")
        await rotate_refresh_token(second["refreshToken"], app_settings, redis, "c")
        # The successor was already spent: the old token is a reuse even within the grace.
        with pytest.raises(TokenReusedError):
            await rotate_refresh_token(moved_on["refreshToken"], app_settings, redis, "c")


async def test_rotation_racing_a_revocation_never_leaves_a_live_token(
        app_settings: Any, make_user: Any, db_session: Any) -> None:
    """A thief rotating while the victim's logout (or reuse detection) revokes the family:
    whichever wins, no token of the family survives."""
    user = await make_user()
    async with db_session():
        for _ in range(8):
            pair = await issue_token_pair(user, app_settings)
            family = decode_token(pair["refreshToken"], app_settings, tokens.REFRESH)["fam"]
            await asyncio.gather(rotate_refresh_token(pair["refreshToken"], app_settings),
                                 revoke_family(family), return_exceptions=True)
            rows = await RefreshToken.filter(family_id=family)
            assert rows and all(r.revoked_at is not None for r in rows), rows


async def test_access_token_names_its_session_and_dies_with_it(
        app_settings: Any, make_user: Any, db_session: Any, redis: Any) -> None:
    user = await make_user()
    async with db_session():
        pair = await issue_token_pair(user, app_settings)
        other = await issue_token_pair(user, app_settings)
        refresh_claims = decode_token(pair["refreshToken"], app_settings, tokens.REFRESH)
        claims = await check_access_token(pair["accessToken"], app_settings, redis)
        assert claims["fam"] == refresh_claims["fam"]
        await revoke_family(claims["fam"], app_settings, redis)
        with pytest.raises(SessionRevokedError):
            await check_access_token(pair["accessToken"], app_settings, redis)
        # Another worker (empty local cache) learns it from Redis ...
        sessions._revoked_locally.clear()
        assert await redis.exists(sessions.REVOKED_KEY_PREFIX + claims["fam"])
        with pytest.raises(SessionRevokedError):
            await check_access_token(pair["accessToken"], app_settings, redis)
        # ... and, with Redis unreachable, from the database.
        sessions._revoked_locally.clear()
        with pytest.raises(SessionRevokedError):
            await check_access_token(pair["accessToken"], app_settings, None)
        assert await check_access_token(other["accessToken"], app_settings, redis)


async def test_reuse_detection_kills_the_access_tokens_of_the_family(
        app_settings: Any, make_user: Any, db_session: Any, redis: Any) -> None:
    user = await make_user()
    async with db_session():
        pair = await issue_token_pair(user, app_settings)
        stolen = await rotate_refresh_token(pair["refreshToken"], app_settings, redis, "thief")
        await RefreshToken.filter(token_hash=hash_token(pair["refreshToken"])).update(
            used_at=datetime.now(UTC) - timedelta(minutes=5))
        with pytest.raises(TokenReusedError):
            await rotate_refresh_token(pair["refreshToken"], app_settings, redis, "victim")
        sessions._revoked_locally.clear()
        for token in (pair["accessToken"], stolen["accessToken"]):
            with pytest.raises(SessionRevokedError):
                await check_access_token(token, app_settings, redis)


def test_access_token_without_a_session_is_invalid(settings: Any) -> None:
    token = _sign(_claims(fam=None), settings.jwt_secret)
    with pytest.raises(InvalidTokenError):
        decode_token(token, settings, tokens.ACCESS)
    with pytest.raises(InvalidTokenError):
        decode_token(_sign(_claims(fam="not-a-uuid"), settings.jwt_secret), settings,
                     tokens.ACCESS)


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_small_clock_skew_is_tolerated(settings: Any, claim: str) -> None:
    """A token minted by an app host whose clock is a few seconds ahead."""
    now = int(time.time())
    ahead = _sign(_claims(**{claim: now + 20}), settings.jwt_secret)
    assert decode_token(ahead, settings, tokens.ACCESS)["sub"] == "7"
    far = _sign(_claims(**{claim: now + 300}), settings.jwt_secret)
    with pytest.raises(InvalidTokenError):
        decode_token(far, settings, tokens.ACCESS)


def test_skew_leeway_does_not_extend_the_lifetime(settings: Any) -> None:
    now = int(time.time())
    with pytest.raises(TokenExpiredError):
        decode_token(_sign(_claims(iat=now - 100, exp=now - 5), settings.jwt_secret),
                     settings, tokens.ACCESS)
    with pytest.raises(InvalidTokenError):
        decode_token(_sign(_claims(exp="soon"), settings.jwt_secret), settings, tokens.ACCESS)


async def test_expired_refresh_token(app_settings: Any, make_user: Any,
                                     db_session: Any) -> None:
    settings = replace_settings(app_settings, jwt_refresh_expires_in=1)
    user = await make_user()
    async with db_session():
        pair = await issue_token_pair(user, settings)
        await asyncio.sleep(1.2)
        with pytest.raises(TokenExpiredError):
            await rotate_refresh_token(pair["refreshToken"], settings)
        row = await RefreshToken.get(token_hash=hash_token(pair["refreshToken"]))
    assert row.used_at is None  # an expired token is refused, not spent


async def test_refresh_token_unknown_to_the_database(app_settings: Any, make_user: Any,
                                                     db_session: Any) -> None:
    user = await make_user()
    forged = _sign(_claims(sub=str(user.id), userId=None, scopes=None, type="refresh",
                           fam="00000000-0000-0000-0000-000000000000", jti="x"),
                   app_settings.jwt_secret)
    async with db_session():
        with pytest.raises(InvalidTokenError):
            await rotate_refresh_token(forged, app_settings)


async def test_refresh_token_row_expiry_is_enforced(app_settings: Any, make_user: Any,
                                                    db_session: Any) -> None:
    user = await make_user()
    async with db_session():
        pair = await issue_token_pair(user, app_settings)
        await RefreshToken.filter(user_id=user.id).update(
            expires_at=datetime.now(UTC) - timedelta(seconds=1))
        with pytest.raises(TokenExpiredError):
            await rotate_refresh_token(pair["refreshToken"], app_settings)


async def test_logout_revocation(app_settings: Any, make_user: Any, db_session: Any) -> None:
    alice, bob = await make_user(), await make_user()
    async with db_session():
        a1 = await issue_token_pair(alice, app_settings)
        a2 = await issue_token_pair(alice, app_settings)
        b1 = await issue_token_pair(bob, app_settings)
        with pytest.raises(InvalidTokenError):  # not Bob's token to revoke
            await revoke_presented_token(a1["refreshToken"], bob.id, app_settings)
        assert await revoke_presented_token(a1["refreshToken"], alice.id,
                                            app_settings) == (alice.id, 1)
        with pytest.raises(TokenRevokedError):
            await rotate_refresh_token(a1["refreshToken"], app_settings)
        a2_next = await rotate_refresh_token(a2["refreshToken"], app_settings)
        # a2 (spent by the rotation) and a2_next are the unrevoked rows left.
        assert await revoke_user_tokens(alice.id) == 2
        with pytest.raises(TokenRevokedError):
            await rotate_refresh_token(a2_next["refreshToken"], app_settings)
        assert await rotate_refresh_token(b1["refreshToken"], app_settings)


@pytest.mark.parametrize("segment", [
    b"", b"eyJhbGciOiJIUzI1NiJ9", b"eyJhbGciOiJIUzI1NiJ9==", b"YQ", b"YQ==", b"YQ=", b"YQ===",
    b"YWI", b"YWI=", b"Y", b"YR", b"!!!!", b"YQ!=", b"a+b/", b"ab\n", b"ab cd", b"YWJj",
    b"YWJj=", b"YWJ=", "\u00e9t\u00e9".encode(),
])
def test_segment_check_matches_pyjwt(segment: bytes) -> None:
    from jwt.api_jws import PyJWS

    def outcome(check: Any) -> Any:
        try:
            return check(segment, "payload")
        except jwt.DecodeError as exc:
            return str(exc)

    assert (outcome(tokens._SegmentCheckingJWS._decode_base64url_segment)
            == outcome(PyJWS._decode_base64url_segment))


def test_token_with_junk_in_a_segment_is_invalid(settings: Settings) -> None:
    header, payload, signature = create_access_token(1, settings).split(".")
    for token in (f"{header}.{payload}!.{signature}", f"{header}.{payload}.{signature}===",
                  f"{header}.{payload}.{signature[:-1]}"):
        with pytest.raises(InvalidTokenError):
            decode_token(token, settings, tokens.ACCESS)
