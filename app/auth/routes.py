"""Token endpoints: POST /auth/refresh, POST /auth/logout, GET /api/me."""

from __future__ import annotations

from typing import Any

from sanic import Request, Sanic
from sanic.exceptions import BadRequest
from sanic.response import HTTPResponse, json

from app.auth.decorators import require_auth
from app.auth.google import clear_refresh_cookie, refresh_token_from_cookie, set_refresh_cookie
from app.auth.tokens import (
    TokenError,
    revoke_presented_token,
    revoke_user_tokens,
    rotate_refresh_token,
)
from app.config import settings_from
from app.db.models import User
from app.errors import json_error


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


async def refresh(request: Request) -> HTTPResponse:
    settings = settings_from(request.app.config)
    # The web page holds its refresh token in an HttpOnly cookie (app.auth.google); a token
    # in the body wins, so API clients are unaffected.
    cookie_token = refresh_token_from_cookie(request)
    try:
        body = _json_body(request, required=cookie_token is None)
        body_token = _refresh_token_field(body, required=cookie_token is None)
    except _BodyError as exc:
        return exc.response
    from_cookie = body_token is None
    token = body_token or cookie_token
    assert token is not None
    try:
        pair = await rotate_refresh_token(token, settings)
    except TokenError as exc:
        response = json_error(exc.status, exc.message, exc.code)
        if from_cookie:
            clear_refresh_cookie(response)
        return response
    if from_cookie:
        # The rotated token replaces the cookie and never reaches page scripts.
        response = json({k: v for k, v in pair.items() if k != "refreshToken"})
        set_refresh_cookie(response, str(pair["refreshToken"]), settings)
        return response
    return json(pair)


@require_auth()
async def logout(request: Request) -> HTTPResponse:
    settings = settings_from(request.app.config)
    user_id: int = request.ctx.user_id
    try:
        token = _refresh_token_field(_json_body(request, required=False), required=False)
    except _BodyError as exc:
        return exc.response
    from_cookie = token is None and refresh_token_from_cookie(request) is not None
    token = token or refresh_token_from_cookie(request)
    revoke_all = request.args.get("all", "").lower() in {"1", "true", "yes"}
    if revoke_all:
        revoked = await revoke_user_tokens(user_id)
    elif token is not None:
        try:
            revoked = await revoke_presented_token(token, user_id, settings)
        except TokenError:
            if not from_cookie:
                return json_error(400, "refreshToken is not a valid refresh token of this user",
                                  "invalid_refresh_token")
            revoked = 0  # a stale browser cookie: nothing left to revoke, just drop it
    else:
        # Access tokens are stateless: without a refresh token there is nothing to revoke;
        # the client drops its access token, which expires on its own.
        revoked = 0
    response = json({"success": True, "revoked": revoked})
    clear_refresh_cookie(response)  # the web page's session cookie (app.auth.google)
    return response


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
