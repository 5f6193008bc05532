"""Assistant test fixtures: the app wired to the local fake OpenAI and fake Gmail servers.

Only base URLs differ from production; the code paths are the same.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from tests.conftest import VALID_ENV, replace_settings
from tests.fakes.gmail_api import GMAIL_SCOPES, FakeGmail
from tests.fakes.openai_server import FakeOpenAI


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=VALID_ENV["OPENAI_API_KEY"]).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_gmail() -> Iterator[FakeGmail]:
    fake = FakeGmail(client_id=VALID_ENV["GOOGLE_CLIENT_ID"],
                     client_secret=VALID_ENV["GOOGLE_CLIENT_SECRET"]).start()
    yield fake
    fake.stop()


@pytest.fixture
def app_settings(app_settings: Any, fake_openai: FakeOpenAI, fake_gmail: FakeGmail) -> Any:
    return replace_settings(
        app_settings,
        openai_base_url=f"{fake_openai.url}/v1",
        openai_max_retries=0,
        openai_timeout=2,
        gmail_api_base_url=fake_gmail.url,
        google_discovery_url=f"{fake_gmail.url}/.well-known/openid-configuration",
    )




@pytest.fixture
def gmail_user(make_user: Callable[..., Awaitable[Any]], fake_gmail: FakeGmail,
               app_settings: Any) -> Callable[..., Awaitable[Any]]:
    """A user signed in with Google: encrypted tokens the fake Gmail accepts."""
    from datetime import UTC, datetime, timedelta

    from app.auth.google_tokens import encrypt_token

    async def create(scopes: tuple[str, ...] = GMAIL_SCOPES, expired: bool = False,
                     stored_expired: bool = False, **fields: Any) -> Any:
        """expired: Google rejects the access token although our stored expiry looks
        valid (revoked early); stored_expired: our stored expiry has passed."""
        access = fake_gmail.issue_token(scopes)
        if expired:
            fake_gmail.expire(access)
        refresh = fake_gmail.issue_refresh_token(scopes)
        return await make_user(
            google_access_token_enc=encrypt_token(app_settings, access),
            google_refresh_token_enc=encrypt_token(app_settings, refresh),
            google_token_expires_at=datetime.now(UTC) + timedelta(
                hours=-1 if stored_expired else 1),
            google_scopes=" ".join(["openid", "email", "profile", *scopes]), **fields)

    return create


@pytest.fixture
def new_conversation(client: Any, auth_headers: Callable[..., dict[str, str]]
                     ) -> Callable[..., Awaitable[str]]:
    async def create(user: Any, **body: Any) -> str:
        _, response = await client.post("/api/conversations", json=body,
                                        headers=auth_headers(user))
        assert response.status == 201, response.text
        return str(response.json["conversation"]["id"])

    return create


def parse_sse(text: str) -> list[tuple[str, Any]]:
    """An event-stream body as [(event, data)], data JSON-decoded."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        events.append((name, json.loads("\n".join(data))))
    return events


@pytest.fixture
async def stored_messages(db_session: Any) -> Callable[[str], Awaitable[list[Any]]]:
    from app.db.models import Message

    async def load(conversation_id: str) -> list[Any]:
        async with db_session():
            return list(await Message.filter(conversation_id=conversation_id).order_by("id"))

    return load


