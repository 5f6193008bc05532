"""`python -m app db smoke`: does THIS code's ORM still work on the database's schema?

The deployment runs it with the live (old) release after migrating to the new schema: one
row of every model is written (parents first), read back with a full-model SELECT (every
column this code knows), updated and read again, all inside one transaction that is always
rolled back, so nothing remains. A migration that dropped, renamed or retyped a column the
old code uses fails here, naming the model.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.context import TortoiseContext
from tortoise.models import Model
from tortoise.transactions import in_transaction

from app.db import CONNECTION_NAME, migrate, models, tortoise_config
from app.db.models import (
    Conversation,
    DraftProposal,
    DraftStatus,
    Message,
    MessageRole,
    MessageStatus,
    RefreshToken,
    User,
)


class SmokeTestError(Exception):
    """A model this code cannot write or read on the schema the database has."""

    def __init__(self, model: str, cause: BaseException) -> None:
        self.model = model
        self.cause = cause
        super().__init__(f"{model}: {type(cause).__name__}: {cause}")


class _RollBack(Exception):  # control flow only: never escapes run()
    pass


@dataclass(frozen=True)
class _Step:
    model: type[Model]
    create: Callable[[BaseDBAsyncClient, dict[str, Model]], Awaitable[Model]]
    # One field changed by the update, and its new value.
    update: tuple[str, Any]


def _steps() -> list[_Step]:
    """Every model, parents before children; realistic minimal values."""
    now = datetime.now(UTC)
    tag = secrets.token_hex(8)  # no clash with real rows on unique columns

    async def user(conn: BaseDBAsyncClient, rows: dict[str, Model]) -> Model:
        return await User.create(
            using_db=conn, email=f"schema-smoke-{tag}@example.invalid", name="Schema Smoke",
            picture="https://example.invalid/avatar.png", google_sub=f"schema-smoke-{tag}",
            # Not a token (never decrypted; the row is rolled back): any text fits the column.
            google_access_token_enc=f"schema-smoke:{tag}",
            google_refresh_token_enc=f"schema-smoke:{tag}",
            google_token_expires_at=now + timedelta(hours=1), google_scopes="openid email",
            last_login_at=now)

    async def refresh_token(conn: BaseDBAsyncClient, rows: dict[str, Model]) -> Model:
        return await RefreshToken.create(
            using_db=conn, user=rows["User"], family_id=uuid.uuid4(),
            token_hash=hashlib.sha256(tag.encode()).hexdigest(),
            expires_at=now + timedelta(days=30))

    async def conversation(conn: BaseDBAsyncClient, rows: dict[str, Model]) -> Model:
        return await Conversation.create(using_db=conn, user=rows["User"],
                                         title="Schema smoke test", agent="general")

    async def message(conn: BaseDBAsyncClient, rows: dict[str, Model]) -> Model:
        return await Message.create(
            using_db=conn, conversation=rows["Conversation"], role=MessageRole.ASSISTANT,
            content="", status=MessageStatus.COMPLETE, agent="general",
            tool_calls=[{"id": "call_smoke", "type": "function",
                         "function": {"name": "list_emails", "arguments": "{}"}}],
            tool_call_id="call_smoke")

    async def draft_proposal(conn: BaseDBAsyncClient, rows: dict[str, Model]) -> Model:
        return await DraftProposal.create(
            using_db=conn, user=rows["User"], conversation=rows["Conversation"],
            gmail_message_id=f"smoke-{tag}", gmail_thread_id=f"smoke-{tag}",
            recipient="someone@example.invalid", subject="Re: schema smoke test",
            body="Thanks!", in_reply_to=f"<smoke-{tag}@example.invalid>",
            references_header=f"<smoke-{tag}@example.invalid>", status=DraftStatus.PENDING,
            gmail_draft_id=None)

    return [
        _Step(User, user, ("name", "Schema Smoke (updated)")),
        _Step(RefreshToken, refresh_token, ("used_at", now)),
        _Step(Conversation, conversation, ("title", "Schema smoke test (renamed)")),
        _Step(Message, message, ("status", MessageStatus.ERROR)),
        _Step(DraftProposal, draft_proposal, ("status", DraftStatus.REJECTED)),
    ]


def covered_models() -> set[type[Model]]:
    """The models the smoke test writes (a test keeps this equal to app.db.models')."""
    return {step.model for step in _steps()}


def app_models() -> set[type[Model]]:
    return {value for value in vars(models).values()
            if isinstance(value, type) and issubclass(value, Model) and value is not Model
            and value.__module__ == models.__name__}


async def run(database_url: str) -> int:
    """Write, read, update and read back one row of every model in one transaction that is
    rolled back. Returns the number of models; raises SmokeTestError naming the model that
    failed, migrate.DatabaseUnavailableError when the database cannot be reached."""
    with TortoiseContext():
        try:
            await Tortoise.init(config=tortoise_config(database_url))
            await migrate._check_connection(database_url)
            return await _write_and_roll_back()
        finally:
            await Tortoise.close_connections()


async def _write_and_roll_back() -> int:
    done = 0
    try:
        async with in_transaction(CONNECTION_NAME) as conn:
            rows: dict[str, Model] = {}
            for step in _steps():
                name = step.model.__name__
                try:
                    rows[name] = await _exercise(step, rows, conn)
                except Exception as exc:
                    raise SmokeTestError(name, exc) from exc
                done += 1
            raise _RollBack
    except _RollBack:
        pass
    return done


async def _exercise(step: _Step, rows: dict[str, Model], conn: BaseDBAsyncClient) -> Model:
    created = await step.create(conn, rows)
    _same(step.model, created, await _read(step.model, created, conn))
    field, value = step.update
    setattr(created, field, value)
    await created.save(using_db=conn, update_fields=[field])
    updated = await _read(step.model, created, conn)
    if getattr(updated, field) != value:
        raise AssertionError(f"{field} read back as {getattr(updated, field)!r} after the "
                             f"update to {value!r}")
    return created


async def _read(model: type[Model], row: Model, conn: BaseDBAsyncClient) -> Model:
    # A full-model SELECT: every column this code knows is named in the query.
    return await model.get(pk=row.pk, using_db=conn)


def _same(model: type[Model], written: Model, read: Model) -> None:
    for field in model._meta.fields_db_projection:
        before, after = getattr(written, field), getattr(read, field)
        if before != after:
            raise AssertionError(f"{field} read back as {after!r}, written as {before!r}")
