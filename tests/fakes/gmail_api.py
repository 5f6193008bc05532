"""A fake Gmail REST API v1 plus a Google-style OAuth token endpoint.

Serves, under /gmail/v1/users/me: messages.list (with a useful subset of the `q` syntax:
from:, to:, subject:, is:unread/read, in:inbox, label:, plain words, "quoted phrases"),
messages.get (format full/metadata/minimal/raw), threads.get and drafts.create. There is
deliberately NO send endpoint: any attempt answers 404 and is recorded in `send_attempts`,
so tests can assert mail is never sent.

Access tokens are checked (Bearer); unknown or expired ones get 401 like Google's, tokens
without a Gmail scope get 403. POST /token implements the refresh_token grant, and
/.well-known/openid-configuration advertises it, so the client's discovery + refresh path
runs unchanged against this server.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import itertools
import secrets
import shlex
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes import FakeServer, RecordedRequest

SCOPE_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
SCOPE_COMPOSE = "https://www.googleapis.com/auth/gmail.compose"
GMAIL_SCOPES = (SCOPE_READONLY, SCOPE_COMPOSE)
CLIENT_ID = "test-client-id-1234567890.apps.googleusercontent.com"
CLIENT_SECRET = "test-client-secret-abcdefghij"
PREFIX = "/gmail/v1/users/me"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


@dataclass
class FakeEmail:
    sender: str
    subject: str
    body: str
    to: str = "me@example.com"
    id: str = ""
    thread_id: str = ""
    labels: list[str] = field(default_factory=lambda: ["INBOX", "UNREAD"])
    internal_date: int = 0  # ms since epoch
    message_id_header: str = ""
    # More headers as the API returns them, e.g. Reply-To, or hostile values with CR/LF.
    extra_headers: list[dict[str, str]] = field(default_factory=list)

    def headers(self) -> list[dict[str, str]]:
        date = email.utils.formatdate(self.internal_date / 1000, usegmt=True)
        return [{"name": "From", "value": self.sender}, {"name": "To", "value": self.to},
                {"name": "Subject", "value": self.subject}, {"name": "Date", "value": date},
                {"name": "Message-ID", "value": self.message_id_header},
                *self.extra_headers]


@dataclass
class IssuedToken:
    scopes: tuple[str, ...]
    expires_at: float


@dataclass
class Draft:
    id: str
    thread_id: str | None
    raw: bytes

    @property
    def message(self) -> email.message.Message:
        return email.message_from_bytes(self.raw, policy=email.policy.default)


class FakeGmail(FakeServer):
    def __init__(self, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.emails: dict[str, FakeEmail] = {}
        self.tokens: dict[str, IssuedToken] = {}
        self.refresh_tokens: dict[str, tuple[str, ...]] = {}
        self.drafts: list[Draft] = []
        self.send_attempts: list[RecordedRequest] = []
        self.refresh_grants: list[dict[str, str]] = []
        self._ids = itertools.count(0x18c0000000000001)
        self._clock = itertools.count(1_700_000_000_000, 60_000)

    # -- test setup ------------------------------------------------------------------------
    def add_email(self, sender: str, subject: str, body: str, *, thread_id: str | None = None,
                  unread: bool = True, to: str = "me@example.com",
                  extra_headers: list[dict[str, str]] | None = None) -> FakeEmail:
        message_id = f"{next(self._ids):x}"
        mail = FakeEmail(sender=sender, subject=subject, body=body, to=to, id=message_id,
                         thread_id=thread_id or message_id,
                         labels=["INBOX", "UNREAD"] if unread else ["INBOX"],
                         internal_date=next(self._clock),
                         message_id_header=f"<{message_id}@mail.example.com>",
                         extra_headers=list(extra_headers or []))
        with self.lock:
            self.emails[message_id] = mail
        return mail

    def issue_token(self, scopes: tuple[str, ...] = GMAIL_SCOPES, expires_in: float = 3600,
                    token: str | None = None) -> str:
        token = token or f"ya29.{secrets.token_urlsafe(24)}"
        with self.lock:
            self.tokens[token] = IssuedToken(scopes, time.time() + expires_in)
        return token

    def issue_refresh_token(self, scopes: tuple[str, ...] = GMAIL_SCOPES) -> str:
        token = f"1//{secrets.token_urlsafe(24)}"
        with self.lock:
            self.refresh_tokens[token] = scopes
        return token

    def expire(self, token: str) -> None:
        with self.lock:
            self.tokens[token].expires_at = 0

    def api_requests(self) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith("/gmail/")]

    # -- protocol --------------------------------------------------------------------------
    def handle(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        if request.path == "/.well-known/openid-configuration":
            self.send_json(handler, 200, {
                "issuer": self.url, "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token", "jwks_uri": f"{self.url}/jwks",
                "response_types_supported": ["code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"]})
            return
        if request.path == "/jwks":
            self.send_json(handler, 200, {"keys": []})
            return
        if request.path == "/token" and request.method == "POST":
            self._token(handler, request)
            return
        if request.path.endswith("/send"):
            with self.lock:
                self.send_attempts.append(request)
            self._error(handler, 404, "Not Found", "NOT_FOUND")
            return
        if not request.path.startswith(PREFIX):
            self._error(handler, 404, "Not Found", "NOT_FOUND")
            return

        token = self.bearer(request)
        with self.lock:
            issued = self.tokens.get(token or "")
        if issued is None or issued.expires_at <= time.time():
            self._error(handler, 401, "Request had invalid authentication credentials. "
                        "Expected OAuth 2 access token, login cookie or other valid "
                        "authentication credential.", "UNAUTHENTICATED")
            return

        route = request.path[len(PREFIX):].strip("/").split("/")
        if request.method == "GET" and route == ["messages"]:
            self._require(handler, issued, SCOPE_READONLY) and self._list(handler, request)
        elif request.method == "GET" and len(route) == 2 and route[0] == "messages":
            self._require(handler, issued, SCOPE_READONLY) and self._get_message(
                handler, request, route[1])
        elif request.method == "GET" and len(route) == 2 and route[0] == "threads":
            self._require(handler, issued, SCOPE_READONLY) and self._get_thread(
                handler, request, route[1])
        elif request.method == "POST" and route == ["drafts"]:
            self._require(handler, issued, SCOPE_COMPOSE) and self._create_draft(
                handler, request)
        else:
            self._error(handler, 404, "Not Found", "NOT_FOUND")

    def _error(self, handler: BaseHTTPRequestHandler, status: int, message: str,
               status_text: str) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'} \
            if status == 401 else {}
        self.send_json(handler, status, {"error": {"code": status, "message": message,
                                                   "status": status_text}}, headers)

    def _require(self, handler: BaseHTTPRequestHandler, issued: IssuedToken,
                 scope: str) -> bool:
        # gmail.compose also allows reading (as at Google); modify / full scope allow all.
        granted = set(issued.scopes)
        if scope in granted or granted & {"https://www.googleapis.com/auth/gmail.modify",
                                          "https://mail.google.com/"}:
            return True
        if scope == SCOPE_READONLY and SCOPE_COMPOSE in granted:
            return True
        self._error(handler, 403, "Request had insufficient authentication scopes.",
                    "PERMISSION_DENIED")
        return False

    def _token(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        form = request.form()
        with self.lock:
            self.refresh_grants.append(form)
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            decoded = base64.b64decode(auth[6:]).decode()
            client_id, _, client_secret = decoded.partition(":")
        if client_id != self.client_id or client_secret != self.client_secret:
            self.send_json(handler, 401, {"error": "invalid_client",
                                          "error_description": "The OAuth client was not found."})
            return
        if form.get("grant_type") != "refresh_token":
            self.send_json(handler, 400, {"error": "unsupported_grant_type"})
            return
        with self.lock:
            scopes = self.refresh_tokens.get(form.get("refresh_token", ""))
        if scopes is None:
            self.send_json(handler, 400, {
                "error": "invalid_grant",
                "error_description": "Token has been expired or revoked."})
            return
        access = self.issue_token(scopes)
        self.send_json(handler, 200, {"access_token": access, "expires_in": 3599,
                                      "scope": " ".join(scopes), "token_type": "Bearer"})

    # messages.list -------------------------------------------------------------------------
    def _matches(self, mail: FakeEmail, query: str) -> bool:
        try:
            terms = shlex.split(query)
        except ValueError:
            terms = query.split()
        for term in terms:
            key, sep, value = term.partition(":")
            value_l = value.lower()
            key_l = key.lower()
            if sep and key_l == "from":
                ok = value_l in mail.sender.lower()
            elif sep and key_l == "to":
                ok = value_l in mail.to.lower()
            elif sep and key_l == "subject":
                ok = value_l in mail.subject.lower()
            elif sep and key_l == "is" and value_l in ("unread", "read"):
                ok = ("UNREAD" in mail.labels) == (value_l == "unread")
            elif sep and key_l in ("in", "label"):
                ok = value.upper() in mail.labels
            elif sep and key_l in ("newer_than", "older_than", "after", "before"):
                ok = True  # dates are not modelled; do not filter
            else:
                word = term.lower()
                ok = any(word in text.lower() for text in (mail.subject, mail.body, mail.sender))
            if not ok:
                return False
        return True

    def _list(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        query = request.query.get("q", [""])[0]
        try:
            max_results = min(int(request.query.get("maxResults", ["100"])[0]), 500)
        except ValueError:
            self._error(handler, 400, "Invalid maxResults", "INVALID_ARGUMENT")
            return
        with self.lock:
            found = sorted((m for m in self.emails.values() if self._matches(m, query)),
                           key=lambda m: m.internal_date, reverse=True)
        payload: dict[str, Any] = {"resultSizeEstimate": len(found)}
        if found:  # like Gmail: no "messages" key at all when nothing matched
            payload["messages"] = [{"id": m.id, "threadId": m.thread_id}
                                   for m in found[:max_results]]
        self.send_json(handler, 200, payload)

    # messages.get / threads.get ------------------------------------------------------------
    def _resource(self, mail: FakeEmail, fmt: str, metadata_headers: list[str]) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "id": mail.id, "threadId": mail.thread_id, "labelIds": list(mail.labels),
            "snippet": mail.body[:100], "historyId": "1000", "internalDate": str(
                mail.internal_date), "sizeEstimate": len(mail.body) + 500}
        headers = mail.headers()
        if fmt == "minimal":
            return resource
        if fmt == "raw":
            msg = EmailMessage()
            for header in headers:
                msg[header["name"]] = header["value"]
            msg.set_content(mail.body)
            resource["raw"] = b64url(msg.as_bytes())
            return resource
        if fmt == "metadata":
            wanted = {h.lower() for h in metadata_headers}
            resource["payload"] = {"mimeType": "multipart/alternative", "headers": [
                h for h in headers if not wanted or h["name"].lower() in wanted]}
            return resource
        plain = mail.body.encode()
        html = f"<html><body><p>{mail.body}</p></body></html>".encode()
        resource["payload"] = {
            "partId": "", "mimeType": "multipart/alternative", "filename": "",
            "headers": [*headers, {"name": "Content-Type",
                                   "value": 'multipart/alternative; boundary="b1"'}],
            "body": {"size": 0},
            "parts": [
                {"partId": "0", "mimeType": "text/plain", "filename": "",
                 "headers": [{"name": "Content-Type", "value": "text/plain; charset=UTF-8"}],
                 "body": {"size": len(plain), "data": b64url(plain)}},
                {"partId": "1", "mimeType": "text/html", "filename": "",
                 "headers": [{"name": "Content-Type", "value": "text/html; charset=UTF-8"}],
                 "body": {"size": len(html), "data": b64url(html)}},
            ]}
        return resource

    def _get_message(self, handler: BaseHTTPRequestHandler, request: RecordedRequest,
                     message_id: str) -> None:
        with self.lock:
            mail = self.emails.get(message_id)
        if mail is None:
            self._error(handler, 404, "Requested entity was not found.", "NOT_FOUND")
            return
        fmt = request.query.get("format", ["full"])[0]
        if fmt not in ("full", "metadata", "minimal", "raw"):
            self._error(handler, 400, f"Invalid value for format: {fmt}", "INVALID_ARGUMENT")
            return
        self.send_json(handler, 200, self._resource(
            mail, fmt, request.query.get("metadataHeaders", [])))

    def _get_thread(self, handler: BaseHTTPRequestHandler, request: RecordedRequest,
                    thread_id: str) -> None:
        with self.lock:
            mails = sorted((m for m in self.emails.values() if m.thread_id == thread_id),
                           key=lambda m: m.internal_date)
        if not mails:
            self._error(handler, 404, "Requested entity was not found.", "NOT_FOUND")
            return
        fmt = request.query.get("format", ["full"])[0]
        headers = request.query.get("metadataHeaders", [])
        self.send_json(handler, 200, {"id": thread_id, "historyId": "1000",
                                      "messages": [self._resource(m, fmt, headers)
                                                   for m in mails]})

    # drafts.create -------------------------------------------------------------------------
    def _create_draft(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        try:
            body = request.json()
            raw = b64url_decode(body["message"]["raw"])
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            assert parsed["To"], "draft without recipient"
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            self._error(handler, 400, f"Invalid draft: {exc}", "INVALID_ARGUMENT")
            return
        thread_id = body["message"].get("threadId")
        draft = Draft(id=f"r-{next(self._ids):x}", thread_id=thread_id, raw=raw)
        message_id = f"{next(self._ids):x}"
        with self.lock:
            self.drafts.append(draft)
        self.send_json(handler, 200, {"id": draft.id, "message": {
            "id": message_id, "threadId": thread_id or message_id, "labelIds": ["DRAFT"]}})
