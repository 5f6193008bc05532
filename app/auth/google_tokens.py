"""The user's Google tokens: encrypted at rest, refreshed when they expire.

The Gmail client asks `get_google_access_token(user, app)` for a usable access token; this
module decrypts the stored one, or trades the stored refresh token for a new one at the
provider's token endpoint (found by OIDC discovery) and saves it, encrypted, before
returning it. Tokens never appear in clear text in the database, logs or errors.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.config import Settings

if TYPE_CHECKING:
    from sanic import Sanic

    from app.db.models import User

GMAIL_READONLY_SCOPE = "https://www.googleapis.com/auth/gmail.readonly"
GMAIL_COMPOSE_SCOPE = "https://www.googleapis.com/auth/gmail.compose"
# An access token this close to its expiry is refreshed first: a Gmail call that starts
# with a token about to expire would fail half-way through a tool call.
EXPIRY_MARGIN = timedelta(seconds=60)

_KEY_INFO = b"assistantapp google-token-encryption v1"
_DERIVED_KEY_INFO = b"assistantapp google-token-encryption derived-from-jwt-secret v1"


class GoogleTokenError(Exception):
    """The user's Google access cannot be used; `code` is stable for API answers."""

    code = "google_token_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class GoogleNotConnected(GoogleTokenError):
    """No usable Google grant: never signed in with Google, or the grant was revoked."""

    code = "google_not_connected"


class GoogleTokenRefreshFailed(GoogleTokenError):
    """The provider could not be reached or answered unexpectedly; retrying may work."""

    code = "google_unavailable"


def _fernet_from_secret(secret: str, info: bytes) -> Fernet:
    # HKDF turns any 32+ character secret into exactly the 32 bytes Fernet needs, and the
    # distinct `info` keeps this key unrelated to the JWT signing key it may derive from.
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        secret.encode("utf-8"))
    return Fernet(base64.urlsafe_b64encode(raw))


def encryption_keys(settings: Settings) -> list[str]:
    """GOOGLE_TOKEN_ENCRYPTION_KEY as a list: the first key encrypts, every key decrypts."""
    return [k.strip() for k in settings.google_token_encryption_key.split(",") if k.strip()]


def token_cipher(settings: Settings) -> MultiFernet:
    """The Fernet (AES-128-CBC + HMAC-SHA256) cipher for stored Google tokens.

    Production requires GOOGLE_TOKEN_ENCRYPTION_KEY (app.config validates it); elsewhere a
    key is derived from JWT_SECRET so a developer needs one secret less. Several keys
    (comma-separated) make a MultiFernet: key rotation without unreadable tokens.
    """
    keys = encryption_keys(settings)
    if keys:
        return MultiFernet([_fernet_from_secret(key, _KEY_INFO) for key in keys])
    if settings.is_production:
        raise RuntimeError("GOOGLE_TOKEN_ENCRYPTION_KEY is required in production")
    if not settings.jwt_secret:
        raise RuntimeError("JWT_SECRET or GOOGLE_TOKEN_ENCRYPTION_KEY must be set")
    return MultiFernet([_fernet_from_secret(settings.jwt_secret, _DERIVED_KEY_INFO)])


def encrypt_token(settings: Settings, token: str) -> str:
    return token_cipher(settings).encrypt(token.encode("utf-8")).decode("ascii")


def decrypt_token(settings: Settings, encrypted: str) -> str:
    """Decrypt a stored token; a wrong key or damaged value raises GoogleNotConnected."""
    try:
        return token_cipher(settings).decrypt(encrypted.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError, ValueError):
        # A rotated key makes old tokens unreadable: the user must sign in again, which
        # is the same remedy as a revoked grant.
        raise GoogleNotConnected(
            "Stored Google credentials cannot be read; sign in with Google again") from None


def parse_scopes(scope: str | Iterable[str] | None) -> list[str]:
    if not scope:
        return []
    items = scope.split() if isinstance(scope, str) else list(scope)
    return sorted(set(items))


def granted_scopes(user: User) -> set[str]:
    """Scopes the user actually granted (Google lets people untick Gmail on the consent page)."""
    return set(parse_scopes(user.google_scopes))


def has_gmail_access(user: User, *, compose: bool = False) -> bool:
    needed = {GMAIL_READONLY_SCOPE} | ({GMAIL_COMPOSE_SCOPE} if compose else set())
    return needed <= granted_scopes(user)


def expiry_from(token: dict[str, Any], now: datetime | None = None) -> datetime | None:
    now = now or datetime.now(UTC)
    expires_at = token.get("expires_at")
    if isinstance(expires_at, int | float) and expires_at > 0:
        return datetime.fromtimestamp(expires_at, UTC)
    expires_in = token.get("expires_in")
    try:
        return now + timedelta(seconds=int(expires_in)) if expires_in is not None else None
    except (TypeError, ValueError):
        return None


def store_google_tokens(user: User, token: dict[str, Any], settings: Settings) -> None:
    """Copy a token-endpoint answer onto the user (encrypted); the caller saves the user.

    Google sends a refresh token only on consent: a missing one keeps the stored one.
    """
    access_token = token.get("access_token")
    if isinstance(access_token, str) and access_token:
        user.google_access_token_enc = encrypt_token(settings, access_token)
        user.google_token_expires_at = expiry_from(token)
    refresh_token = token.get("refresh_token")
    if isinstance(refresh_token, str) and refresh_token:
        user.google_refresh_token_enc = encrypt_token(settings, refresh_token)
    scope = token.get("scope")
    if scope:
        user.google_scopes = " ".join(parse_scopes(scope))


async def get_google_access_token(user: User, app: Sanic) -> str:
    """A valid Google access token for `user`, refreshed (and saved) when it has expired.

    Raises GoogleNotConnected when there is no usable grant (sign in again) and
    GoogleTokenRefreshFailed when the provider is unreachable (try again later).
    """
    settings: Settings = app.config.SETTINGS
    now = datetime.now(UTC)
    expires_at = user.google_token_expires_at
    if user.google_access_token_enc and (expires_at is None or expires_at - EXPIRY_MARGIN > now):
        return decrypt_token(settings, user.google_access_token_enc)
    if not user.google_refresh_token_enc:
        raise GoogleNotConnected("Google access has expired; sign in with Google again")

    refresh_token = decrypt_token(settings, user.google_refresh_token_enc)
    provider = app.ctx.google_oidc
    token = await provider.refresh_access_token(refresh_token)
    store_google_tokens(user, token, settings)
    await user.save(update_fields=["google_access_token_enc", "google_refresh_token_enc",
                                   "google_token_expires_at", "google_scopes", "updated_at"])
    return str(token["access_token"])
