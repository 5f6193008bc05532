"""Draft proposals of the email agent: the user approves (or rejects) them in the page.

GET  /api/drafts?status=pending        the user's proposals, newest first
POST /api/drafts/<id>/approve          optional edits {to, subject, body}; creates the Gmail
                                       draft (never sends) and marks the proposal approved
POST /api/drafts/<id>/reject           marks it rejected; nothing reaches Gmail

Proposals are owned: someone else's proposal is "not found". A proposal is decided once
(a second approve is 409), under a row lock so two clicks cannot create two drafts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import getaddresses
from typing import Any
from uuid import UUID

from sanic import Request
from sanic.response import HTTPResponse
from sanic.response import json as json_response
from sanic_ext.extensions.openapi import openapi
from tortoise.transactions import in_transaction

from app.assistant.conversations import BadInput, _body, bp
from app.assistant.email_agent import (
    AgentNotice,
    can_draft,
    gmail_client,
    granted_scopes,
    proposal_json,
)
from app.assistant.gmail import GmailAccessError, GmailError
from app.auth.decorators import require_auth
from app.db.models import DraftProposal, DraftStatus, User
from app.errors import json_error

MAX_SUBJECT_CHARS = 998
MAX_BODY_CHARS = 100_000


def _not_found() -> HTTPResponse:
    return json_error(404, "Draft proposal not found", "not_found")


def _edits(body: dict[str, Any], proposal: DraftProposal) -> dict[str, str]:
    to = body.get("to", proposal.recipient)
    subject = body.get("subject", proposal.subject)
    text = body.get("body", proposal.body)
    if not isinstance(to, str) or not isinstance(subject, str) or not isinstance(text, str):
        raise BadInput(400, "to, subject and body must be strings", "validation_error")
    to, subject = to.strip(), subject.strip()
    addresses = [addr for _, addr in getaddresses([to]) if addr]
    if (len(addresses) != 1 or "@" not in addresses[0] or any(c in to for c in "\r\n")
            or len(to) > 320):
        raise BadInput(400, "to must be one email address", "validation_error")
    if any(c in subject for c in "\r\n") or len(subject) > MAX_SUBJECT_CHARS:
        raise BadInput(400, f"subject must be one line of at most {MAX_SUBJECT_CHARS} "
                       "characters", "validation_error")
    if not text.strip() or len(text) > MAX_BODY_CHARS:
        raise BadInput(400, f"body must be 1-{MAX_BODY_CHARS} characters", "validation_error")
    return {"to": to, "subject": subject, "body": text}


@bp.get("/drafts")
@openapi.tag("assistant")
@openapi.secured("bearerAuth")
@openapi.summary("The user's draft proposals (status=pending|approved|rejected)")
@openapi.response(200, description='{"drafts": [{id, to, subject, body, status, ...}]}')
@openapi.response(401, description="Missing or invalid access token (auth_required, ...)")
@require_auth()
async def list_drafts(request: Request) -> HTTPResponse:
    status = request.args.get("status", DraftStatus.PENDING.value)
    if status not in {s.value for s in DraftStatus}:
        return json_error(400, "status must be pending, approved or rejected",
                          "validation_error")
    query = DraftProposal.filter(user_id=request.ctx.user_id, status=status)
    conversation = request.args.get("conversationId")
    if conversation:
        try:
            query = query.filter(conversation_id=UUID(conversation))
        except ValueError:
            return json_error(400, "conversationId must be a UUID", "validation_error")
    proposals = await query.order_by("-created_at").limit(50)
    return json_response({"drafts": [proposal_json(p) for p in proposals]})


@bp.post("/drafts/<proposal_id:uuid>/approve")
@openapi.tag("assistant")
@openapi.secured("bearerAuth")
@openapi.summary("Approve a draft proposal (optionally edited): saved to Gmail Drafts")
@openapi.body({"application/json": {"to": str, "subject": str, "body": str}})
@openapi.response(200, description='{"draft": {..., "status": "approved", "gmailDraftId"}}')
@openapi.response(400, description="validation_error / invalid_json")
@openapi.response(403, description="gmail_access_missing")
@openapi.response(404, description="not_found")
@openapi.response(409, description="already_decided")
@openapi.response(502, description="gmail_error")
@require_auth()
async def approve_draft(request: Request, proposal_id: UUID) -> HTTPResponse:
    try:
        body = _body(request, required=False)
    except BadInput as exc:
        return json_error(exc.status, exc.message, exc.code)
    user = await User.get_or_none(id=request.ctx.user_id)
    if user is None:
        return json_error(401, "The user of this token no longer exists", "unauthorized")
    async with in_transaction():
        proposal = await DraftProposal.filter(
            id=proposal_id, user_id=user.id).select_for_update().first()
        if proposal is None:
            return _not_found()
        if proposal.status != DraftStatus.PENDING:
            return json_error(409, f"This proposal was already {proposal.status}",
                              "already_decided")
        try:
            edits = _edits(body, proposal)
        except BadInput as exc:
            return json_error(exc.status, exc.message, exc.code)
        if not can_draft(granted_scopes(user)):
            return json_error(403, "Creating drafts needs the Gmail compose permission: sign "
                              "in with Google again and allow it.", "gmail_access_missing")

        gmail = gmail_client(request.app, user)
        try:
            created = await gmail.create_draft(
                to=edits["to"], subject=edits["subject"], body=edits["body"],
                thread_id=proposal.gmail_thread_id, in_reply_to=proposal.in_reply_to,
                references=proposal.references_header)
        except AgentNotice as notice:
            status = 503 if notice.code == "google_unavailable" else 403
            return json_error(status, notice.message, notice.code)
        except GmailAccessError:
            return json_error(403, "Gmail refused to save the draft with the granted "
                              "permissions: sign in with Google again.", "gmail_access_missing")
        except GmailError as exc:
            status = 400 if exc.status == 422 else 502
            return json_error(status, exc.message, "gmail_error")
        proposal.recipient, proposal.subject, proposal.body = (
            edits["to"], edits["subject"], edits["body"])
        proposal.status = DraftStatus.APPROVED
        proposal.gmail_draft_id = str(created.get("draftId") or "") or None
        proposal.decided_at = datetime.now(UTC)
        await proposal.save()
    return json_response({"draft": {**proposal_json(proposal),
                                    "gmailDraftId": proposal.gmail_draft_id}})


@bp.post("/drafts/<proposal_id:uuid>/reject")
@openapi.tag("assistant")
@openapi.secured("bearerAuth")
@openapi.summary("Reject a draft proposal: nothing is written to Gmail")
@openapi.response(200, description='{"draft": {..., "status": "rejected"}}')
@openapi.response(404, description="not_found")
@openapi.response(409, description="already_decided")
@require_auth()
async def reject_draft(request: Request, proposal_id: UUID) -> HTTPResponse:
    updated = await DraftProposal.filter(
        id=proposal_id, user_id=request.ctx.user_id, status=DraftStatus.PENDING).update(
        status=DraftStatus.REJECTED, decided_at=datetime.now(UTC))
    proposal = await DraftProposal.get_or_none(id=proposal_id, user_id=request.ctx.user_id)
    if proposal is None:
        return _not_found()
    if not updated:
        return json_error(409, f"This proposal was already {proposal.status}",
                          "already_decided")
    return json_response({"draft": proposal_json(proposal)})
