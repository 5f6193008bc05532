"""Authentication: JWT access/refresh tokens, the require_auth decorator, token routes.

Google sign-in (app.auth.google) mints the first token pair with issue_token_pair().
"""

from __future__ import annotations

from sanic import Sanic

from app.auth.routes import register_routes
from app.config import Settings


def setup_auth(app: Sanic, settings: Settings) -> None:
    register_routes(app)
