"""`python -m app reencrypt-google-tokens`: re-encrypt every stored Google token with the
first key of GOOGLE_TOKEN_ENCRYPTION_KEY.

Key rotation: set GOOGLE_TOKEN_ENCRYPTION_KEY=new,old on every app host (the app decrypts
with either and encrypts with the new one), run this command once, then remove the old key.
A token that no configured key can read is left as it is and counted: its user signs in
with Google again (the same remedy as a revoked grant); nothing is deleted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from cryptography.fernet import InvalidToken

from app.auth.google_tokens import token_cipher
from app.config import Settings

_TOKEN_FIELDS = ("google_access_token_enc", "google_refresh_token_enc")


@dataclass
class RotationResult:
    users: int = 0
    tokens: int = 0
    unreadable: int = 0


async def reencrypt_google_tokens(settings: Settings) -> RotationResult:
    """Re-encrypt with the first key, one user per transaction (the ORM must be ready)."""
    from tortoise.transactions import in_transaction

    from app.db.models import User

    cipher = token_cipher(settings)
    result = RotationResult()
    ids = await User.filter(google_refresh_token_enc__isnull=False).values_list("id", flat=True)
    ids_access = await User.filter(google_access_token_enc__isnull=False).values_list(
        "id", flat=True)
    for user_id in sorted(set(ids) | set(ids_access)):
        async with in_transaction():
            user = await User.filter(id=user_id).select_for_update().first()
            if user is None:
                continue
            changed = []
            for name in _TOKEN_FIELDS:
                value = getattr(user, name)
                if not value:
                    continue
                try:
                    rotated = cipher.rotate(value.encode("ascii")).decode("ascii")
                except (InvalidToken, UnicodeError, ValueError):
                    result.unreadable += 1
                    continue
                setattr(user, name, rotated)
                changed.append(name)
                result.tokens += 1
            if changed:
                await user.save(update_fields=changed)
                result.users += 1
    return result


def main(settings: Settings) -> int:
    from tortoise import Tortoise
    from tortoise.context import TortoiseContext

    from app.db import tortoise_config

    async def run() -> RotationResult:
        with TortoiseContext():
            await Tortoise.init(config=tortoise_config(settings.database_url))
            try:
                return await reencrypt_google_tokens(settings)
            finally:
                await Tortoise.close_connections()

    result = asyncio.run(run())
    print(f"Re-encrypted {result.tokens} Google token(s) of {result.users} user(s) with the "
          f"first key; {result.unreadable} token(s) no configured key can read")
    return 1 if result.unreadable else 0
