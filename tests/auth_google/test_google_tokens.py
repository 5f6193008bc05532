"""Stored Google tokens: encrypted at rest, and refreshed at the provider when expired."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.auth.google_tokens import (
    GoogleNotConnected,
    GoogleTokenRefreshFailed,
    decrypt_token,
    encrypt_token,
    get_google_access_token,
    token_cipher,
)
from app.config import Settings
from tests.auth_google.conftest import LiveApp, StartApp, fake_idp_discovery
from tests.auth_google.fake_idp import FakeIdP
from tests.auth_google.test_google_signin import idp_sign_in, mock_sign_in, set_mock_user
from tests.conftest import VALID_ENV


def settings_with(**overrides: str) -> Settings:
    from app.config import load_settings

    return load_settings({**VALID_ENV, **overrides}, env_file=None)


def test_encryption_round_trip_and_ciphertext_hides_the_token() -> None:
    settings = settings_with()
    encrypted = encrypt_token(settings, "ya29.secret-access-token")
    assert "ya29" not in encrypted and "secret" not in encrypted
    assert decrypt_token(settings, encrypted) == "ya29.secret-access-token"
    # Fresh IV each time: equal tokens do not give equal ciphertexts.
    assert encrypt_token(settings, "ya29.secret-access-token") != encrypted


def test_configured_key_and_derived_key_differ_and_do_not_cross_decrypt() -> None:
    derived = settings_with()
    configured = settings_with(GOOGLE_TOKEN_ENCRYPTION_KEY="k" * 40)
    encrypted = encrypt_token(configured, "token")
    with pytest.raises(GoogleNotConnected):
        decrypt_token(derived, encrypted)
    with pytest.raises(GoogleNotConnected):
        decrypt_token(configured, encrypted[:-4] + "AAAA")  # tampered: HMAC fails
    assert decrypt_token(configured, encrypted) == "token"


def test_production_needs_an_explicit_key() -> None:
    settings = dataclasses.replace(settings_with(), app_env="production")
    with pytest.raises(RuntimeError):
        token_cipher(settings)


async def _user(email: str):  # type: ignore[no-untyped-def]
    from app.db.models import User

    return await User.get(email=email)


async def _expire(email: str) -> None:
    from app.db.models import User

    await User.filter(email=email).update(
        google_token_expires_at=datetime.now(UTC) - timedelta(minutes=5))


async def test_expired_token_is_refreshed_at_the_mock_provider_and_saved(
        start_app: StartApp, oidc_mock: str) -> None:
    live = await start_app(oidc_mock)
    await set_mock_user(oidc_mock, "tok-sub-fay", {"email": "fay@example.com"})
    async with live.client() as client:
        assert (await mock_sign_in(client, "tok-sub-fay")).status_code == 302

    # The app's ORM context (global fallback) serves this test's queries too.
    user = await _user("fay@example.com")
    original = await get_google_access_token(user, live.app)  # still valid: no refresh
    assert original == decrypt_token(live.settings, user.google_access_token_enc)

    await _expire("fay@example.com")
    user = await _user("fay@example.com")
    refreshed = await get_google_access_token(user, live.app)
    assert refreshed and refreshed != original
    saved = await _user("fay@example.com")
    assert decrypt_token(live.settings, saved.google_access_token_enc) == refreshed
    assert saved.google_token_expires_at > datetime.now(UTC) + timedelta(minutes=30)
    assert saved.google_refresh_token_enc  # kept when the answer carries none


async def _signed_in_with_fake_idp(start_app: StartApp, fake_idp: FakeIdP) -> LiveApp:
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        assert (await idp_sign_in(client)).status_code == 200
    return live


async def test_valid_token_is_used_without_calling_the_provider(
        start_app: StartApp, fake_idp: FakeIdP) -> None:
    live = await _signed_in_with_fake_idp(start_app, fake_idp)
    before = fake_idp.token_requests
    token = await get_google_access_token(await _user("carol@example.com"), live.app)
    assert token.startswith("ya29.") and fake_idp.token_requests == before


async def test_revoked_grant_means_not_connected(start_app: StartApp,
                                                 fake_idp: FakeIdP) -> None:
    live = await _signed_in_with_fake_idp(start_app, fake_idp)
    await _expire("carol@example.com")
    fake_idp.refresh_mode = "invalid_grant"
    with pytest.raises(GoogleNotConnected):
        await get_google_access_token(await _user("carol@example.com"), live.app)


async def test_provider_error_means_try_again_later(start_app: StartApp,
                                                    fake_idp: FakeIdP) -> None:
    live = await _signed_in_with_fake_idp(start_app, fake_idp)
    await _expire("carol@example.com")
    fake_idp.refresh_mode = "error500"
    with pytest.raises(GoogleTokenRefreshFailed) as caught:
        await get_google_access_token(await _user("carol@example.com"), live.app)
    assert "ya29" not in str(caught.value)  # no token material in messages


async def test_missing_refresh_token_means_not_connected(start_app: StartApp,
                                                         fake_idp: FakeIdP) -> None:
    from app.db.models import User

    live = await _signed_in_with_fake_idp(start_app, fake_idp)
    await _expire("carol@example.com")
    await User.filter(email="carol@example.com").update(google_refresh_token_enc=None)
    with pytest.raises(GoogleNotConnected):
        await get_google_access_token(await _user("carol@example.com"), live.app)


async def test_unreachable_provider_on_refresh(start_app: StartApp, fake_idp: FakeIdP) -> None:
    live = await _signed_in_with_fake_idp(start_app, fake_idp)
    await _expire("carol@example.com")
    provider = live.app.ctx.google_oidc
    provider._metadata = {**provider._metadata, "token_endpoint": "http://127.0.0.1:9/token"}
    with pytest.raises(GoogleTokenRefreshFailed):
        await get_google_access_token(await _user("carol@example.com"), live.app)


OLD_KEY, NEW_KEY = "o" * 40, "n" * 40


def test_key_rotation_new_key_first_old_keys_still_decrypt() -> None:
    old = settings_with(GOOGLE_TOKEN_ENCRYPTION_KEY=OLD_KEY)
    rotating = settings_with(GOOGLE_TOKEN_ENCRYPTION_KEY=f"{NEW_KEY},{OLD_KEY}")
    new_only = settings_with(GOOGLE_TOKEN_ENCRYPTION_KEY=NEW_KEY)
    stored = encrypt_token(old, "refresh-token")
    assert decrypt_token(rotating, stored) == "refresh-token"
    fresh = encrypt_token(rotating, "refresh-token")
    assert decrypt_token(new_only, fresh) == "refresh-token"  # the first key encrypts
    with pytest.raises(GoogleNotConnected):
        decrypt_token(old, fresh)


async def test_reencrypt_command_moves_every_token_to_the_first_key(
        app_settings: Settings, make_user: Any, db_session: Any) -> None:
    from app.auth.key_rotation import reencrypt_google_tokens
    from app.db.models import User

    old = dataclasses.replace(app_settings, google_token_encryption_key=OLD_KEY)
    rotating = dataclasses.replace(app_settings,
                                   google_token_encryption_key=f"{NEW_KEY},{OLD_KEY}")
    new_only = dataclasses.replace(app_settings, google_token_encryption_key=NEW_KEY)
    alice = await make_user(google_access_token_enc=encrypt_token(old, "a-access"),
                            google_refresh_token_enc=encrypt_token(old, "a-refresh"))
    broken = await make_user(google_refresh_token_enc="not-a-fernet-token")
    async with db_session():
        result = await reencrypt_google_tokens(rotating)
        alice = await User.get(id=alice.id)
        broken = await User.get(id=broken.id)
    assert (result.users, result.tokens, result.unreadable) == (1, 2, 1)
    assert decrypt_token(new_only, alice.google_access_token_enc) == "a-access"
    assert decrypt_token(new_only, alice.google_refresh_token_enc) == "a-refresh"
    assert broken.google_refresh_token_enc == "not-a-fernet-token"  # kept, never deleted


def test_reencrypt_command_line(app_settings: Settings, tmp_path: Any) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "JWT_"))}
    env.update(VALID_ENV)
    env.update(DATABASE_URL=app_settings.database_url, REDIS_URL=app_settings.redis_url,
               GOOGLE_TOKEN_ENCRYPTION_KEY=f"{NEW_KEY},{OLD_KEY}",
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))  # this checkout's app
    result = subprocess.run([sys.executable, "-m", "app", "reencrypt-google-tokens"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Re-encrypted 0 Google token(s) of 0 user(s)" in result.stdout
