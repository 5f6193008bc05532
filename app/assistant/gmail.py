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
# A thread read is capped too: its newest messages, and at most this much body text.
MAX_THREAD_MESSAGES = 15
MAX_THREAD_CHARS = 24_000
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


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]+")


def _header(payload: dict[str, Any], name: str) -> str:
    """A header value as one clean line: CR, LF and other control characters (which a
    hostile sender can smuggle into Subject or Message-ID) become a space."""
    for header in payload.get("headers", []) or []:
        if str(header.get("name", "")).lower() == name.lower():
            return _CONTROL_RE.sub(" ", str(header.get("value", ""))).strip()
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
        """The newest MAX_THREAD_MESSAGES messages, bodies within MAX_THREAD_CHARS in all."""
        thread_id = validate_id(thread_id, "thread id")
        resource = await self._request("GET", f"/threads/{thread_id}", params={"format": "full"})
        all_messages = [m for m in resource.get("messages") or [] if isinstance(m, dict)]
        newest = all_messages[-MAX_THREAD_MESSAGES:]
        budget = MAX_THREAD_CHARS
        messages: list[dict[str, Any]] = []
        for m in reversed(newest):  # the newest keep their text first
            body = _body_text(m.get("payload") or {})
            entry = self._summary(m)
            if len(body) > budget:
                body = body[:max(budget, 0)]
                entry["bodyTruncated"] = True
            budget -= len(body)
            messages.append({**entry, "body": body})
        return {"id": resource.get("id"), "messages": messages[::-1],
                "omittedMessages": len(all_messages) - len(newest)}

    async def prepare_reply(self, message_id: str) -> dict[str, Any]:
        """Recipient, subject and threading headers of a reply to `message_id`.

        The recipient is the original From address: not Reply-To (the sender controls it,
        so a hostile email could point it anywhere) and never an address the model chose.
        """
        message_id = validate_id(message_id, "message id")
        original = await self._request(
            "GET", f"/messages/{message_id}",
            params=[("format", "metadata"), *[("metadataHeaders", h) for h in (
                "From", "Subject", "Message-ID", "References")]])
        payload = original.get("payload") or {}
        addresses = getaddresses([_header(payload, "From")])
        recipient = next((addr for _, addr in addresses if "@" in addr), "")
        if not recipient:
            raise GmailError(422, "The original message has no address to reply to")
        subject = _header(payload, "Subject")
        if not subject.lower().startswith("re:"):
            subject = f"Re: {subject}".strip()
        original_id = _header(payload, "Message-ID")
        references = f"{_header(payload, 'References')} {original_id}".strip()
        return {"messageId": message_id, "threadId": str(original.get("threadId") or ""),
                "to": recipient, "subject": subject[:998], "inReplyTo": original_id[:998],
                "references": references if original_id else ""}

    async def create_draft(self, *, to: str, subject: str, body: str, thread_id: str = "",
                           in_reply_to: str = "", references: str = "") -> dict[str, Any]:
        """Save a draft (after the user approved it). Never sends."""
        draft = EmailMessage()
        try:
            draft["To"] = to
            draft["Subject"] = subject
            draft["Date"] = formatdate(usegmt=True)
            if in_reply_to:
                draft["In-Reply-To"] = in_reply_to
                draft["References"] = references or in_reply_to
            draft.set_content(body)
            raw = base64.urlsafe_b64encode(draft.as_bytes()).decode().rstrip("=")
        except (ValueError, TypeError) as exc:
            raise GmailError(422, "The draft has an invalid header or body") from exc
        message: dict[str, Any] = {"raw": raw}
        if thread_id:
            message["threadId"] = thread_id
        created = await self._request("POST", "/drafts", json={"message": message})
        return {"draftId": created.get("id"), "to": to, "subject": subject,
                "threadId": thread_id or None}
