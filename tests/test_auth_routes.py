"""HTTP behaviour of require_auth, /auth/refresh, /auth/logout and /api/me (real app,
real PostgreSQL and Redis)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

from app.auth.decorators import require_auth
from app.auth.tokens import AUDIENCE, ISSUER, hash_token, issue_token_pair
from app.db.models import RefreshToken, User
from tests.conftest import replace_settings

INVALID = {"error": "Invalid token", "code": "invalid_token"}
EXPIRED = {"error": "Token expired", "code": "token_expired"}
REQUIRED = {"error": "Authentication required", "code": "auth_required"}


def _token(secret: str, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "1", "userId": 1, "scopes": ["user"], "type": "access",
                              "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600,
                              "fam": str(uuid.uuid4())}
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, secret,
                      algorithm="HS256")


async def _pair(make_user: Any, db_session: Any, settings: Any) -> tuple[User, dict[str, Any]]:
    user = await make_user()
    async with db_session():
        pair = await issue_token_pair(user, settings)
    return user, pair


async def test_me_returns_the_profile(app: Sanic, make_user: Any, auth_headers: Any) -> None:
    # app.asgi_client (start/stop listeners around the request); the other tests use the
    # faster `client` fixture.
    user = await make_user(email="ada@example.com", name="Ada", picture="https://x/p.png")
    _, response = await app.asgi_client.get("/api/me", headers=auth_headers(user))
    assert response.status == 200
    body = response.json
    assert body["id"] == user.id and body["email"] == "ada@example.com"
    assert body["name"] == "Ada" and body["picture"] == "https://x/p.png"
    assert body["googleConnected"] is False and body["scopes"] == ["user"]
    assert body["createdAt"]


async def test_missing_header_is_auth_required(client: Any) -> None:
    _, response = await client.get("/api/me")
    assert response.status == 401 and response.json == REQUIRED
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc",
                                    "Bearer not.a.jwt", "Bearer garbage"])
async def test_malformed_authorization_header_is_invalid(client: Any, header: str) -> None:
    _, response = await client.get("/api/me", headers={"Authorization": header})
    assert response.status == 401 and response.json == INVALID


def _bad_access_tokens(secret: str, user_id: int) -> dict[str, str]:
    base = {"sub": str(user_id), "userId": user_id}
    good = _token(secret, **base)
    head, _, sig = good.split(".")
    none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"  # {"alg":"none","typ":"JWT"}
    return {
        "wrong signature": _token(secret + "x", **base),
        "alg none": f"{none_header}.{good.split('.')[1]}.",
        "wrong audience": _token(secret, aud="other-app", **base),
        "wrong issuer": _token(secret, iss="not-assistantapp", **base),
        "refresh token as access": _token(secret, type="refresh", fam="f", jti="j", **base),
        "missing sub": _token(secret, sub=None, userId=user_id),
        "missing exp": _token(secret, exp=None, **base),
        "missing iat": _token(secret, iat=None, **base),
        "truncated signature": f"{head}.{good.split('.')[1]}.{sig[:-4]}",
    }


@pytest.mark.parametrize("case", list(_bad_access_tokens("s" * 40, 1)))
async def test_every_bad_token_is_401_invalid_token(client: Any, app_settings: Any,
                                                    make_user: Any, case: str) -> None:
    user = await make_user()
    token = _bad_access_tokens(app_settings.jwt_secret, user.id)[case]
    _, response = await client.get("/api/me",
                                            headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401 and response.json == INVALID
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_expired_access_token_is_401_token_expired(client: Any, app_settings: Any,
                                                         make_user: Any) -> None:
    user = await make_user()
    now = int(time.time())
    token = _token(app_settings.jwt_secret, sub=str(user.id), userId=user.id,
                   iat=now - 100, exp=now - 10)
    _, response = await client.get("/api/me",
                                            headers={"Authorization": f"Bearer {token}"})
    assert response.status == 401 and response.json == EXPIRED


async def test_short_access_lifetime_from_settings_expires(client: Any, app_settings: Any,
                                                          make_user: Any,
                                                          auth_headers: Any) -> None:
    user = await make_user()
    await client.get("/api/me")  # server start-up first
    headers = auth_headers(user, settings=replace_settings(app_settings, jwt_expires_in=3))
    claims = jwt.decode(headers["Authorization"].split()[1], options={"verify_signature": False})
    # The lifetime comes from settings; checked on the claims so a loaded machine can't flake it.
    assert claims["exp"] - claims["iat"] == 3
    time.sleep(max(0.0, claims["exp"] + 1.2 - time.time()))
    _, response = await client.get("/api/me", headers=headers)
    assert response.status == 401 and response.json == EXPIRED


async def test_token_of_a_deleted_user_is_refused(client: Any, make_user: Any,
                                                 auth_headers: Any, db_session: Any) -> None:
    user = await make_user()
    async with db_session():
        await User.filter(id=user.id).delete()
    _, response = await client.get("/api/me", headers=auth_headers(user))
    assert response.status == 401 and response.json == INVALID


async def test_scopes(app: Sanic, client: Any, make_user: Any, auth_headers: Any) -> None:
    @require_auth(scopes=["admin"])
    async def admin_only(request: Request) -> HTTPResponse:
        return json({"userId": request.ctx.user_id, "scopes": request.ctx.claims["scopes"]})

    app.add_route(admin_only, "/test/admin-only", name="test_admin_only")
    user = await make_user()
    _, response = await client.get("/test/admin-only", headers=auth_headers(user))
    assert response.status == 403
    assert response.json["code"] == "insufficient_scope"
    assert response.json["requiredScopes"] == ["admin"]
    _, response = await client.get(
        "/test/admin-only", headers=auth_headers(user, scopes=["user", "admin"]))
    assert response.status == 200
    assert response.json == {"userId": user.id, "scopes": ["user", "admin"]}
    _, response = await client.get("/test/admin-only")
    assert response.status == 401 and response.json == REQUIRED


async def test_refresh_rotates_and_new_tokens_work(client: Any, app_settings: Any,
                                                  make_user: Any, db_session: Any) -> None:
    user, pair = await _pair(make_user, db_session, app_settings)
    _, response = await client.post("/auth/refresh",
                                             json={"refreshToken": pair["refreshToken"]})
    assert response.status == 200
    new = response.json
    assert new["tokenType"] == "Bearer" and new["expiresIn"] == app_settings.jwt_expires_in
    assert new["refreshToken"] != pair["refreshToken"]
    _, me = await client.get(
        "/api/me", headers={"Authorization": f"Bearer {new['accessToken']}"})
    assert me.status == 200 and me.json["id"] == user.id
    _, again = await client.post("/auth/refresh",
                                          json={"refreshToken": new["refreshToken"]})
    assert again.status == 200


async def test_refresh_reuse_revokes_the_family(client: Any, app_settings: Any,
                                                make_user: Any, db_session: Any) -> None:
    _, pair = await _pair(make_user, db_session, app_settings)
    _, first = await client.post("/auth/refresh",
                                          json={"refreshToken": pair["refreshToken"]})
    assert first.status == 200
    async with db_session():  # later than the refresh grace period
        await RefreshToken.filter(token_hash=hash_token(pair["refreshToken"])).update(
            used_at=datetime.now(UTC) - timedelta(minutes=5))
    # The spent token comes back (stolen copy): 401 and the whole family dies.
    _, reuse = await client.post("/auth/refresh",
                                          json={"refreshToken": pair["refreshToken"]})
    assert reuse.status == 401 and reuse.json["code"] == "token_reused"
    _, after = await client.post("/auth/refresh",
                                          json={"refreshToken": first.json["refreshToken"]})
    assert after.status == 401 and after.json["code"] == "token_revoked"
    async with db_session():
        row = await RefreshToken.get(token_hash=hash_token(pair["refreshToken"]))
        family = await RefreshToken.filter(family_id=row.family_id)
    assert len(family) == 2 and all(r.revoked_at is not None for r in family)


async def test_refresh_with_an_access_token_is_invalid(client: Any, app_settings: Any,
                                                      make_user: Any, db_session: Any) -> None:
    _, pair = await _pair(make_user, db_session, app_settings)
    _, response = await client.post("/auth/refresh",
                                             json={"refreshToken": pair["accessToken"]})
    assert response.status == 401 and response.json == INVALID


async def test_expired_refresh_token_is_token_expired(client: Any, app_settings: Any,
                                                     make_user: Any, db_session: Any) -> None:
    short = replace_settings(app_settings, jwt_refresh_expires_in=1)
    _, pair = await _pair(make_user, db_session, short)
    time.sleep(1.2)
    _, response = await client.post("/auth/refresh",
                                             json={"refreshToken": pair["refreshToken"]})
    assert response.status == 401 and response.json == EXPIRED


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", "invalid_json"),
    (b"", "invalid_request"),
    (b"[1, 2]", "invalid_request"),
    (b'{"refreshToken": 5}', "invalid_request"),
    (b'{"refreshToken": ""}', "invalid_request"),
    (b'{"other": "x"}', "invalid_request"),
])
async def test_refresh_bad_bodies_are_400(client: Any, body: bytes, code: str) -> None:
    _, response = await client.post(
        "/auth/refresh", content=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert response.json["code"] == code and response.json["error"]


async def test_logout_revokes_the_presented_family_only(client: Any, app_settings: Any,
                                                       make_user: Any, db_session: Any,
                                                       auth_headers: Any) -> None:
    user, laptop = await _pair(make_user, db_session, app_settings)
    async with db_session():
        phone = await issue_token_pair(user, app_settings)
    _, response = await client.post(
        "/auth/logout", json={"refreshToken": laptop["refreshToken"]},
        headers=auth_headers(user))
    assert response.status == 200 and response.json == {"success": True, "revoked": 1}
    _, dead = await client.post("/auth/refresh",
                                         json={"refreshToken": laptop["refreshToken"]})
    assert dead.status == 401 and dead.json["code"] == "token_revoked"
    _, alive = await client.post("/auth/refresh",
                                          json={"refreshToken": phone["refreshToken"]})
    assert alive.status == 200


async def test_logout_all_revokes_every_session(client: Any, app_settings: Any,
                                               make_user: Any, db_session: Any,
                                               auth_headers: Any) -> None:
    user, laptop = await _pair(make_user, db_session, app_settings)
    _, other = await _pair(make_user, db_session, app_settings)
    async with db_session():
        phone = await issue_token_pair(user, app_settings)
    _, response = await client.post("/auth/logout?all=1", headers=auth_headers(user))
    assert response.status == 200 and response.json["revoked"] == 2
    for pair in (laptop, phone):
        _, dead = await client.post("/auth/refresh",
                                             json={"refreshToken": pair["refreshToken"]})
        assert dead.status == 401
    _, alive = await client.post("/auth/refresh",
                                          json={"refreshToken": other["refreshToken"]})
    assert alive.status == 200


async def test_logout_without_any_credential_is_401_and_still_clears_the_cookie(
        client: Any) -> None:
    _, response = await client.post("/auth/logout", json={})
    assert response.status == 401 and response.json["code"] == "auth_required"
    assert "aa_refresh=" in response.headers["set-cookie"]
    assert "max-age=0" in response.headers["set-cookie"].lower()


def _cookie_headers(refresh_token: str, **extra: str) -> dict[str, str]:
    return {"Cookie": f"aa_refresh={refresh_token}", **extra}


async def test_logout_with_the_refresh_cookie_alone(client: Any, app_settings: Any,
                                                   make_user: Any, db_session: Any) -> None:
    """The laptop slept: the access token expired, only the cookie is left."""
    user, pair = await _pair(make_user, db_session, app_settings)
    now = int(time.time())
    expired = _token(app_settings.jwt_secret, sub=str(user.id), userId=user.id,
                     iat=now - 3600, exp=now - 60)
    _, response = await client.post(
        "/auth/logout", headers=_cookie_headers(pair["refreshToken"],
                                                Authorization=f"Bearer {expired}"))
    assert response.status == 200 and response.json == {"success": True, "revoked": 1}
    assert "max-age=0" in response.headers["set-cookie"].lower()
    assert response.headers["cache-control"] == "no-store"
    _, dead = await client.post("/auth/refresh", json={"refreshToken": pair["refreshToken"]})
    assert dead.status == 401 and dead.json["code"] == "token_revoked"
    # The session's access token is refused at once, not when it expires.
    _, me = await client.get("/api/me",
                             headers={"Authorization": f"Bearer {pair['accessToken']}"})
    assert me.status == 401 and me.json["code"] == "session_revoked"

    _, nothing = await client.post("/auth/logout", headers=_cookie_headers("garbage"))
    assert nothing.status == 401
    assert "max-age=0" in nothing.headers["set-cookie"].lower()


async def test_access_tokens_die_with_their_session(client: Any, app_settings: Any,
                                                   make_user: Any, db_session: Any) -> None:
    user, laptop = await _pair(make_user, db_session, app_settings)
    async with db_session():
        phone = await issue_token_pair(user, app_settings)
    laptop_auth = {"Authorization": f"Bearer {laptop['accessToken']}"}
    phone_auth = {"Authorization": f"Bearer {phone['accessToken']}"}
    _, response = await client.post("/auth/logout", headers=laptop_auth)
    assert response.status == 200 and response.json["revoked"] == 1
    _, me = await client.get("/api/me", headers=laptop_auth)
    assert me.status == 401 and me.json["code"] == "session_revoked"
    _, me = await client.get("/api/me", headers=phone_auth)
    assert me.status == 200
    _, everything = await client.post("/auth/logout?all=1", headers=phone_auth)
    assert everything.status == 200
    _, me = await client.get("/api/me", headers=phone_auth)
    assert me.status == 401 and me.json["code"] == "session_revoked"


async def test_refresh_reuse_kills_the_stolen_access_token(client: Any, app_settings: Any,
                                                          make_user: Any,
                                                          db_session: Any) -> None:
    _, pair = await _pair(make_user, db_session, app_settings)
    _, thief = await client.post("/auth/refresh", json={"refreshToken": pair["refreshToken"]},
                                 headers={"User-Agent": "thief"})
    _, victim = await client.post("/auth/refresh",
                                  json={"refreshToken": pair["refreshToken"]},
                                  headers={"User-Agent": "victim-browser"})
    assert thief.status == 200 and victim.status == 401
    assert victim.json["code"] == "token_reused"
    _, me = await client.get("/api/me",
                             headers={"Authorization": f"Bearer {thief.json['accessToken']}"})
    assert me.status == 401 and me.json["code"] == "session_revoked"


async def test_duplicate_cookie_refresh_keeps_the_session(client: Any, app_settings: Any,
                                                         make_user: Any,
                                                         db_session: Any) -> None:
    """Two tabs refresh with the same cookie at once: both succeed with one successor."""
    _, pair = await _pair(make_user, db_session, app_settings)
    headers = _cookie_headers(pair["refreshToken"], **{"User-Agent": "tab"})
    responses = await asyncio.gather(*(client.post("/auth/refresh", headers=headers)
                                       for _ in range(3)))
    assert [r.status for _, r in responses] == [200, 200, 200]
    cookies = {r.headers["set-cookie"].split(";")[0] for _, r in responses}
    assert len(cookies) == 1
    for _, response in responses:
        assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("body", [None, b"{oops"])
async def test_token_answers_are_not_cacheable(client: Any, app_settings: Any, make_user: Any,
                                               db_session: Any, body: bytes | None) -> None:
    _, pair = await _pair(make_user, db_session, app_settings)
    if body is None:
        _, response = await client.post("/auth/refresh",
                                         json={"refreshToken": pair["refreshToken"]})
        assert response.status == 200
    else:
        _, response = await client.post("/auth/refresh", content=body,
                                         headers={"Content-Type": "application/json"})
        assert response.status == 400
    assert response.headers["cache-control"] == "no-store"


async def test_logout_with_another_users_refresh_token_is_refused(
        client: Any, app_settings: Any, make_user: Any, db_session: Any,
        auth_headers: Any) -> None:
    _, victim = await _pair(make_user, db_session, app_settings)
    attacker = await make_user()
    _, response = await client.post(
        "/auth/logout", json={"refreshToken": victim["refreshToken"]},
        headers=auth_headers(attacker))
    assert response.status == 400 and response.json["code"] == "invalid_refresh_token"
    _, alive = await client.post("/auth/refresh",
                                          json={"refreshToken": victim["refreshToken"]})
    assert alive.status == 200


async def test_logout_malformed_json_is_400(client: Any, make_user: Any,
                                           auth_headers: Any) -> None:
    user = await make_user()
    _, response = await client.post(
        "/auth/logout", content=b"{oops",
        headers={**auth_headers(user), "Content-Type": "application/json"})
    assert response.status == 400 and response.json["code"] == "invalid_json"


async def test_logout_without_refresh_token_is_harmless(client: Any, make_user: Any,
                                                       auth_headers: Any) -> None:
    user = await make_user()
    _, response = await client.post("/auth/logout", headers=auth_headers(user))
    assert response.status == 200 and response.json == {"success": True, "revoked": 0}
