"""`@require_auth()` / `@require_auth(scopes=[...])` for route handlers.

Sets request.ctx.user_id (int) and request.ctx.claims. Failures answer JSON 401/403 with a
WWW-Authenticate header (RFC 6750); the token itself is never logged or echoed. A token of
a revoked session (logout, reuse detection) is refused like an invalid one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import wraps
from typing import Any, TypeVar, cast

from sanic import Request
from sanic.response import HTTPResponse

from app.auth.tokens import TokenError, check_access_token
from app.config import settings_from
from app.errors import json_error

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def _unauthorized(message: str, code: str, bearer_error: str | None) -> HTTPResponse:
    response = json_error(401, message, code)
    challenge = 'Bearer realm="assistantapp"'
    if bearer_error:
        challenge += f', error="{bearer_error}"'
    response.headers["WWW-Authenticate"] = challenge
    return response


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, "" if malformed, None if
    absent."""
    header = request.headers.get("authorization")
    if header is None or not header.strip():
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return token.strip()


def require_auth(scopes: Sequence[str] | None = None) -> Callable[[Handler], Handler]:
    required = list(scopes or [])

    def decorator(handler: Handler) -> Handler:
        @wraps(handler)
        async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Any:
            token = bearer_token(request)
            if token is None:
                return _unauthorized("Authentication required", "auth_required", None)
            settings = settings_from(request.app.config)
            try:
                claims = await check_access_token(token, settings,
                                                  getattr(request.app.ctx, "redis", None))
            except TokenError as exc:
                return _unauthorized(exc.message, exc.code, "invalid_token")
            missing = [scope for scope in required if scope not in claims["scopes"]]
            if missing:
                response = json_error(403, "Insufficient scope", "insufficient_scope",
                                      requiredScopes=missing)
                response.headers["WWW-Authenticate"] = (
                    f'Bearer realm="assistantapp", error="insufficient_scope", '
                    f'scope="{" ".join(required)}"')
                return response
            request.ctx.user_id = int(claims["sub"])
            request.ctx.claims = claims
            return await handler(request, *args, **kwargs)

        return cast(Handler, wrapper)

    return decorator
