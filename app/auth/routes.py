"""Token endpoints: POST /auth/refresh, POST /auth/logout, GET /api/me."""

from __future__ import annotations

from typing import Any

from sanic import Request, Sanic
from sanic.exceptions import BadRequest
from sanic.response import HTTPResponse, json

from app.auth.decorators import bearer_token, require_auth
from app.auth.google import clear_refresh_cookie, refresh_token_from_cookie, set_refresh_cookie
from app.auth.tokens import (
    ACCESS,
    RefreshInProgressError,
    TokenError,
    decode_token,
    revoke_family,
    revoke_presented_token,
    revoke_user_tokens,
    rotate_refresh_token,
)
from app.config import settings_from
from app.db.models import User
from app.errors import json_error
from app.ops.clientip import client_ip


class _BodyError(Exception):
    def __init__(self, response: HTTPResponse) -> None:
        self.response = response


def _json_body(request: Request, required: bool) -> dict[str, Any]:
    if not request.body:
        if required:
            raise _BodyError(json_error(400, "Request body must be a JSON object",
                                        "invalid_request"))
        return {}
    try:
        body = request.json
    except BadRequest:
        raise _BodyError(json_error(400, "Request body is not valid JSON",
                                    "invalid_json")) from None
    if not isinstance(body, dict):
        raise _BodyError(json_error(400, "Request body must be a JSON object",
                                    "invalid_request"))
    return body


def _refresh_token_field(body: dict[str, Any], required: bool) -> str | None:
    value = body.get("refreshToken")
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _BodyError(json_error(400, "refreshToken is required (a non-empty string)",
                                    "invalid_request"))
    return value.strip()


def serialize_user(user: User, claims: dict[str, Any] | None = None) -> dict[str, Any]:
    """The public profile shape of /api/me (the Google sign-in code may add fields)."""
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "picture": user.picture,
        "googleConnected": bool(user.google_refresh_token_enc or user.google_access_token_enc),
        "scopes": list((claims or {}).get("scopes", [])),
        "createdAt": user.created_at.isoformat() if user.created_at else None,
        "lastLoginAt": user.last_login_at.isoformat() if user.last_login_at else None,
    }


def _no_store(response: HTTPResponse) -> HTTPResponse:
    # Token answers must never be kept by a browser or proxy cache (RFC 6749 5.1).
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _redis(request: Request) -> Any:
    return getattr(request.app.ctx, "redis", None)


def _client_key(request: Request) -> str:
    """Who may receive the same successor again within the refresh grace period."""
    return f"{client_ip(request)}|{request.headers.get('user-agent', '')}"


async def refresh(request: Request) -> HTTPResponse:
    settings = settings_from(request.app.config)
    # The web page holds its refresh token in an HttpOnly cookie (app.auth.google); a token
    # in the body wins, so API clients are unaffected.
    cookie_token = refresh_token_from_cookie(request)
    try:
        body = _json_body(request, required=cookie_token is None)
        body_token = _refresh_token_field(body, required=cookie_token is None)
    except _BodyError as exc:
        return _no_store(exc.response)
    from_cookie = body_token is None
    token = body_token or cookie_token
    assert token is not None
    try:
        pair = await rotate_refresh_token(token, settings, _redis(request),
                                          client_key=_client_key(request))
    except TokenError as exc:
        response = json_error(exc.status, exc.message, exc.code)
        if from_cookie and not isinstance(exc, RefreshInProgressError):
            clear_refresh_cookie(response)
        return _no_store(response)
    if from_cookie:
        # The rotated token replaces the cookie and never reaches page scripts.
        response = json({k: v for k, v in pair.items() if k != "refreshToken"})
        set_refresh_cookie(response, str(pair["refreshToken"]), settings)
        return _no_store(response)
    return _no_store(json(pair))


async def logout(request: Request) -> HTTPResponse:
    """End a session. Works with the refresh token alone (cookie or body): an access token
    that expired while the laptop slept must not keep the next person at a shared computer
    signed in. The refresh cookie is cleared on every answer, errors included."""
    response = await _logout(request)
    clear_refresh_cookie(response)  # the web page's session cookie (app.auth.google)
    return _no_store(response)


def _access_claims_or_none(request: Request, settings: Any) -> dict[str, Any] | None:
    token = bearer_token(request)
    if not token:
        return None
    try:
        return decode_token(token, settings, ACCESS)
    except TokenError:
        return None  # expired or damaged: the refresh token may still identify the session


async def _logout(request: Request) -> HTTPResponse:
    settings = settings_from(request.app.config)
    redis = _redis(request)
    try:
        body_token = _refresh_token_field(_json_body(request, required=False), required=False)
    except _BodyError as exc:
        return exc.response
    cookie_token = refresh_token_from_cookie(request)
    token = body_token or cookie_token
    claims = _access_claims_or_none(request, settings)
    user_id: int | None = int(claims["sub"]) if claims else None
    revoke_all = request.args.get("all", "").lower() in {"1", "true", "yes"}
    revoked = 0
    if token is not None:
        try:
            user_id, revoked = await revoke_presented_token(token, user_id, settings, redis)
        except TokenError:
            if body_token is not None:
                return json_error(400, "refreshToken is not a valid refresh token of this user",
                                  "invalid_refresh_token")
            # A stale browser cookie: nothing left to revoke by it, just drop it.
    if claims is not None:
        # The session of the presented access token ends too (a family of its own when it
        # was minted without a refresh token).
        revoked += await revoke_family(claims["fam"], settings, redis)
    if user_id is None:
        return json_error(401, "Sign-in required: send the refresh token (cookie or body) "
                          "or a valid access token", "auth_required")
    if revoke_all:
        revoked += await revoke_user_tokens(user_id, settings, redis)
    return json({"success": True, "revoked": revoked})


@require_auth()
async def me(request: Request) -> HTTPResponse:
    user = await User.get_or_none(id=request.ctx.user_id)
    if user is None:
        return json_error(401, "Invalid token", "invalid_token")
    return json(serialize_user(user, request.ctx.claims))


def register_routes(app: Sanic) -> None:
    # Plain routes rather than a module-level Blueprint: tests build many apps per process.
    app.add_route(refresh, "/auth/refresh", methods=["POST"], name="auth_refresh")
    app.add_route(logout, "/auth/logout", methods=["POST"], name="auth_logout")
    app.add_route(me, "/api/me", methods=["GET"], name="api_me")
