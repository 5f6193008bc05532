"""A small Gmail REST API v1 client (httpx) for the email agent.

Only reading and drafting: there is no method that sends mail, on purpose. Ids given by the
model are validated before they become part of a URL path, so a prompt-injected id such as
"x/send" can never reach another endpoint. A 401 (token revoked or expired early) triggers
one forced refresh of the user's Google token and one retry.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from typing import Any

import httpx

# The body of one message as handed to the model is capped: long newsletters would
# otherwise eat the whole context window (and cost).
MAX_BODY_CHARS = 6000
MAX_SEARCH_RESULTS = 20
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_TAG_RE = re.compile(r"<[^>]+>")

# force_refresh=True asks for a new token even if the stored one looks valid.
AccessTokenProvider = Callable[[bool], Awaitable[str]]


class GmailError(Exception):
    """Gmail refused or failed; `status` is Gmail's HTTP status (0: unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class GmailAccessError(GmailError):
    """The user's Google grant does not allow this (401 after refresh, 403 scopes)."""


def _b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _header(payload: dict[str, Any], name: str) -> str:
    for header in payload.get("headers", []) or []:
        if str(header.get("name", "")).lower() == name.lower():
            return str(header.get("value", ""))
    return ""


def _body_text(payload: dict[str, Any]) -> str:
    """Plain text of a message payload: text/plain preferred, else tag-stripped text/html."""
    plain: list[str] = []
    rich: list[str] = []

    def walk(part: dict[str, Any]) -> None:
        mime = str(part.get("mimeType", ""))
        data = (part.get("body") or {}).get("data")
        if data and not part.get("filename"):
            text = _b64url_decode(str(data)).decode("utf-8", errors="replace")
            if mime == "text/plain":
                plain.append(text)
            elif mime == "text/html":
                rich.append(html.unescape(_TAG_RE.sub(" ", text)))
        for child in part.get("parts", []) or []:
            walk(child)

    walk(payload)
    text = "\n".join(plain) if plain else "\n".join(rich)
    text = re.sub(r"[ \t]+", " ", text).strip()
    if len(text) > MAX_BODY_CHARS:
        text = text[:MAX_BODY_CHARS] + " [truncated]"
    return text


def validate_id(value: Any, what: str = "id") -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise GmailError(400, f"Invalid Gmail {what}: {str(value)[:40]!r}")
    return value


class GmailClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str,
                 access_token: AccessTokenProvider) -> None:
        self.http = http
        self.base = base_url.rstrip("/") + "/gmail/v1/users/me"
        self.access_token = access_token

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        token = await self.access_token(False)
        for attempt in range(2):
            try:
                response = await self.http.request(
                    method, self.base + path,
                    headers={"Authorization": f"Bearer {token}"}, **kwargs)
            except httpx.HTTPError as exc:
                raise GmailError(0, f"Gmail is unreachable ({type(exc).__name__})") from exc
            if response.status_code == 401 and attempt == 0:
                token = await self.access_token(True)
                continue
            break
        if response.status_code in (401, 403):
            raise GmailAccessError(response.status_code,
                                   "Gmail refused access with the granted permissions")
        if response.status_code >= 400:
            try:
                message = str(response.json()["error"]["message"])
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {response.status_code}"
            raise GmailError(response.status_code, f"Gmail error: {message}"[:300])
        try:
            result = response.json()
        except ValueError as exc:
            raise GmailError(502, "Gmail returned an invalid answer") from exc
        return result if isinstance(result, dict) else {}

    @staticmethod
    def _summary(resource: dict[str, Any]) -> dict[str, Any]:
        payload = resource.get("payload") or {}
        return {"id": resource.get("id"), "threadId": resource.get("threadId"),
                "from": _header(payload, "From"), "to": _header(payload, "To"),
                "subject": _header(payload, "Subject"), "date": _header(payload, "Date"),
                "unread": "UNREAD" in (resource.get("labelIds") or []),
                "snippet": html.unescape(str(resource.get("snippet", "")))}

    async def search_messages(self, query: str, max_results: int = 10) -> list[dict[str, Any]]:
        """messages.list with Gmail's `q` syntax, then each hit's headers (metadata)."""
        limit = max(1, min(int(max_results), MAX_SEARCH_RESULTS))
        listing = await self._request("GET", "/messages",
                                      params={"q": query, "maxResults": limit})
        results = []
        for item in (listing.get("messages") or [])[:limit]:
            message_id = validate_id(item.get("id"), "message id")
            resource = await self._request(
                "GET", f"/messages/{message_id}",
                params=[("format", "metadata"), ("metadataHeaders", "From"),
                        ("metadataHeaders", "To"), ("metadataHeaders", "Subject"),
                        ("metadataHeaders", "Date")])
            results.append(self._summary(resource))
        return results

    async def get_message(self, message_id: str) -> dict[str, Any]:
        message_id = validate_id(message_id, "message id")
        resource = await self._request("GET", f"/messages/{message_id}",
                                       params={"format": "full"})
        return {**self._summary(resource), "body": _body_text(resource.get("payload") or {})}

    async def get_thread(self, thread_id: str) -> dict[str, Any]:
        thread_id = validate_id(thread_id, "thread id")
        resource = await self._request("GET", f"/threads/{thread_id}", params={"format": "full"})
        return {"id": resource.get("id"), "messages": [
            {**self._summary(m), "body": _body_text(m.get("payload") or {})}
            for m in resource.get("messages") or []]}

    async def create_draft_reply(self, message_id: str, body: str) -> dict[str, Any]:
        """A draft answering `message_id`, addressed to its sender (Reply-To if set).

        The recipient comes from the original message, never from the model, so an
        injected instruction cannot redirect a draft to someone else.
        """
        message_id = validate_id(message_id, "message id")
        original = await self._request(
            "GET", f"/messages/{message_id}",
            params=[("format", "metadata"), *[("metadataHeaders", h) for h in (
                "From", "Reply-To", "Subject", "Message-ID", "References")]])
        payload = original.get("payload") or {}
        addresses = getaddresses([_header(payload, "Reply-To") or _header(payload, "From")])
        recipient = next((addr for _, addr in addresses if "@" in addr), "")
        if not recipient:
            raise GmailError(422, "The original message has no address to reply to")
        subject = _header(payload, "Subject")
        if not subject.lower().startswith("re:"):
            subject = f"Re: {subject}".strip()
        draft = EmailMessage()
        draft["To"] = recipient
        draft["Subject"] = subject
        draft["Date"] = formatdate(usegmt=True)
        original_id = _header(payload, "Message-ID")
        if original_id:
            draft["In-Reply-To"] = original_id
            draft["References"] = f"{_header(payload, 'References')} {original_id}".strip()
        draft.set_content(body)
        raw = base64.urlsafe_b64encode(draft.as_bytes()).decode().rstrip("=")
        created = await self._request("POST", "/drafts", json={
            "message": {"raw": raw, "threadId": original.get("threadId")}})
        return {"draftId": created.get("id"), "to": recipient, "subject": subject,
                "threadId": original.get("threadId")}
