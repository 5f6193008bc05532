"""Database models (tortoise-orm). Schema changes go through aerich migrations in
app/db/migrations/models/ — never Tortoise.generate_schemas() outside throwaway tests."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model


class User(Model):
    id = fields.IntField(primary_key=True)
    email = fields.CharField(max_length=320, unique=True)
    name = fields.CharField(max_length=255, default="")
    picture = fields.CharField(max_length=2048, default="")
    # Google's stable account id; null for users created without Google (tests, admin tools).
    google_sub = fields.CharField(max_length=255, unique=True, null=True)
    # Encrypted by the Google sign-in code (app.auth.google); never stored in clear text.
    google_access_token_enc = fields.TextField(null=True)
    google_refresh_token_enc = fields.TextField(null=True)
    google_token_expires_at = fields.DatetimeField(null=True)
    google_scopes = fields.TextField(default="")
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    last_login_at = fields.DatetimeField(null=True)

    refresh_tokens: fields.ReverseRelation[RefreshToken]
    conversations: fields.ReverseRelation[Conversation]
    draft_proposals: fields.ReverseRelation[DraftProposal]

    class Meta:
        table = "users"

    def __str__(self) -> str:
        return f"User({self.id}, {self.email})"


class RefreshToken(Model):
    # One issued refresh token. Only its SHA-256 is stored: a database leak does not leak
    # usable tokens. Tokens of one sign-in share a family_id, so reuse of a spent token
    # revokes every token descended from the same sign-in.
    # (A comment, not a docstring: tortoise would copy a docstring into the schema.)

    id = fields.IntField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="refresh_tokens", on_delete=fields.CASCADE)
    user_id: int
    family_id = fields.UUIDField(db_index=True)
    token_hash = fields.CharField(max_length=64, unique=True)
    expires_at = fields.DatetimeField()
    used_at = fields.DatetimeField(null=True)
    revoked_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    replaced_by: fields.ForeignKeyNullableRelation[RefreshToken] = fields.ForeignKeyField(
        "models.RefreshToken", related_name=False, null=True, on_delete=fields.SET_NULL)
    replaced_by_id: int | None

    class Meta:
        table = "refresh_tokens"


class Conversation(Model):
    id = fields.UUIDField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="conversations", on_delete=fields.CASCADE)
    user_id: int
    title = fields.CharField(max_length=255, default="")
    agent = fields.CharField(max_length=64, default="general")
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    messages: fields.ReverseRelation[Message]

    class Meta:
        table = "conversations"
        # The sidebar lists a user's conversations, most recently active first.
        indexes = (Index(fields=("user_id", "updated_at"), name="idx_conversations_user_recent"),)


class MessageRole(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    SYSTEM = "system"


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    PENDING = "pending"
    ERROR = "error"


class Message(Model):
    id = fields.BigIntField(primary_key=True)
    conversation: fields.ForeignKeyRelation[Conversation] = fields.ForeignKeyField(
        "models.Conversation", related_name="messages", on_delete=fields.CASCADE)
    conversation_id: uuid.UUID
    role = fields.CharEnumField(MessageRole, max_length=16)
    content = fields.TextField(default="")
    tool_calls: Any = fields.JSONField(null=True)
    tool_call_id = fields.CharField(max_length=255, null=True)
    status = fields.CharEnumField(MessageStatus, max_length=16, default=MessageStatus.COMPLETE)
    created_at = fields.DatetimeField(auto_now_add=True)
    agent = fields.CharField(max_length=64, null=True)

    class Meta:
        table = "messages"
        # A conversation's history is read in order.
        indexes = (Index(fields=("conversation_id", "created_at"),
                         name="idx_messages_conversation_created"),)


class DraftStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class DraftProposal(Model):
    # A reply the email agent proposes. Nothing reaches Gmail until the user approves it in
    # the page (POST /api/drafts/<id>/approve), possibly after editing recipient, subject
    # and body. The recipient starts as the original message's From address (never its
    # Reply-To or an address the model chose).

    id = fields.UUIDField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="draft_proposals", on_delete=fields.CASCADE)
    user_id: int
    conversation: fields.ForeignKeyNullableRelation[Conversation] = fields.ForeignKeyField(
        "models.Conversation", related_name=False, null=True, on_delete=fields.SET_NULL)
    conversation_id: uuid.UUID | None
    gmail_message_id = fields.CharField(max_length=128)
    gmail_thread_id = fields.CharField(max_length=128, default="")
    recipient = fields.CharField(max_length=320)
    subject = fields.CharField(max_length=998, default="")
    body = fields.TextField()
    in_reply_to = fields.CharField(max_length=998, default="")
    references_header = fields.TextField(default="")
    status = fields.CharEnumField(DraftStatus, max_length=16, default=DraftStatus.PENDING)
    gmail_draft_id = fields.CharField(max_length=128, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    decided_at = fields.DatetimeField(null=True)

    class Meta:
        table = "draft_proposals"
        indexes = (Index(fields=("user_id", "status", "created_at"),
                         name="idx_draft_proposals_user_status"),)
