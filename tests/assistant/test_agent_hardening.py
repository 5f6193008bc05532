"""Issue 10: draft proposals owned and approved by the user, history that stays valid after
a failed tool round, an `error` event for unexpected failures, capped thread reads and
history, hostile email headers, and no private search terms in the logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from app.assistant.conversations import history_for_model
from app.db.models import Message, MessageRole
from tests.assistant.conftest import parse_sse
from tests.fakes.gmail_api import FakeGmail
from tests.fakes.openai_server import FakeOpenAI, Reply, ToolCall

SSE = {"Accept": "text/event-stream"}


async def _ask(client: Any, cid: str, headers: dict[str, str], content: str) -> Any:
    _, response = await client.post(f"/api/conversations/{cid}/messages",
                                    json={"content": content, "agent": "email"},
                                    headers=headers)
    return response


async def _propose(client: Any, fake_openai: FakeOpenAI, user: Any, cid: str,
                   auth_headers: Any, message_id: str, body: str = "Sure!") -> dict[str, Any]:
    fake_openai.enqueue(Reply(tool_calls=[ToolCall("create_draft_reply",
                                                   {"message_id": message_id, "body": body})]),
                        Reply(content="I proposed a reply."))
    response = await _ask(client, cid, {**auth_headers(user), **SSE}, "Reply to it")
    [proposal] = [d for n, d in parse_sse(response.text) if n == "proposal"]
    return proposal


async def test_proposals_belong_to_their_user(client: Any, gmail_user: Any, auth_headers: Any,
                                              new_conversation: Any, fake_openai: FakeOpenAI,
                                              fake_gmail: FakeGmail) -> None:
    mail = fake_gmail.add_email("Ann <ann@example.com>", "Hi", "Hello")
    owner, other = await gmail_user(), await gmail_user()
    proposal = await _propose(client, fake_openai, owner, await new_conversation(owner),
                              auth_headers, mail.id)
    for action in ("approve", "reject"):
        _, response = await client.post(f"/api/drafts/{proposal['id']}/{action}", json={},
                                        headers=auth_headers(other))
        assert response.status == 404 and response.json["code"] == "not_found"
    _, listed = await client.get("/api/drafts", headers=auth_headers(other))
    assert listed.json["drafts"] == []
    assert fake_gmail.drafts == []


async def test_approve_with_edits_and_bad_edits(client: Any, gmail_user: Any,
                                                auth_headers: Any, new_conversation: Any,
                                                fake_openai: FakeOpenAI,
                                                fake_gmail: FakeGmail) -> None:
    mail = fake_gmail.add_email("Ann <ann@example.com>", "Plans", "Friday?")
    user = await gmail_user()
    proposal = await _propose(client, fake_openai, user, await new_conversation(user),
                              auth_headers, mail.id)
    url = f"/api/drafts/{proposal['id']}/approve"
    for edits in ({"to": "a@example.com\r\nBcc: spy@example.com"},
                  {"to": "a@example.com, b@example.com"}, {"to": "nobody"},
                  {"subject": "x\nBcc: spy@example.com"}, {"body": ""}, {"body": 5}):
        _, bad = await client.post(url, json=edits, headers=auth_headers(user))
        assert bad.status == 400 and bad.json["code"] == "validation_error", edits
    assert fake_gmail.drafts == []
    _, ok = await client.post(url, json={"to": "Ann Work <ann@work.example>",
                                         "subject": "Re: Plans (Friday)", "body": "Yes!"},
                              headers=auth_headers(user))
    assert ok.status == 200, ok.text
    [draft] = fake_gmail.drafts
    assert draft.message["To"] == "Ann Work <ann@work.example>"
    assert draft.message["Subject"] == "Re: Plans (Friday)"
    assert draft.message.get_content().strip() == "Yes!"


async def test_crlf_in_email_headers_is_neutralised(client: Any, gmail_user: Any,
                                                   auth_headers: Any, new_conversation: Any,
                                                   fake_openai: FakeOpenAI,
                                                   fake_gmail: FakeGmail) -> None:
    mail = fake_gmail.add_email("Eve <eve@example.com>", "Hello\r\nBcc: spy@example.com",
                                "body")
    mail.message_id_header = "<id@example.com>\r\nX-Injected: yes"
    user = await gmail_user()
    proposal = await _propose(client, fake_openai, user, await new_conversation(user),
                              auth_headers, mail.id)
    assert "\n" not in proposal["subject"] and "\r" not in proposal["subject"]
    _, ok = await client.post(f"/api/drafts/{proposal['id']}/approve", json={},
                              headers=auth_headers(user))
    assert ok.status == 200, ok.text
    [draft] = fake_gmail.drafts
    assert draft.message["Bcc"] is None and draft.message["X-Injected"] is None
    assert draft.message["To"] == "eve@example.com"


async def test_failed_tool_round_leaves_a_valid_history(
        client: Any, gmail_user: Any, auth_headers: Any, new_conversation: Any,
        fake_openai: FakeOpenAI, fake_gmail: FakeGmail) -> None:
    user = await gmail_user(expired=True)
    fake_gmail.refresh_tokens.clear()  # the grant was revoked: the first Gmail call fails
    cid = await new_conversation(user)
    fake_openai.enqueue(Reply(tool_calls=[ToolCall("search_messages", {"q": "is:unread"}),
                                          ToolCall("get_thread", {"id": "abc"})]))
    first = await _ask(client, cid, auth_headers(user), "What's new?")
    assert first.status == 200 and first.json["notice"] == "gmail_access_missing"

    fake_openai.enqueue(Reply(content="Fine."))
    second = await _ask(client, cid, auth_headers(user), "And now?")
    assert second.status == 200, second.text
    messages = fake_openai.chat_requests()[-1]["messages"]
    for i, message in enumerate(messages):
        if message.get("tool_calls"):
            ids = [c["id"] for c in message["tool_calls"]]
            following = [m["tool_call_id"] for m in messages[i + 1:i + 1 + len(ids)]
                         if m["role"] == "tool"]
            assert following == ids, messages


def _message(role: MessageRole, content: str = "", **fields: Any) -> Message:
    return Message(role=role, content=content, **fields)


def test_history_drops_unanswered_tool_calls_and_orphans() -> None:
    call = {"id": "c1", "type": "function",
            "function": {"name": "search_messages", "arguments": "{}"}}
    stored = [_message(MessageRole.USER, "hi"),
              _message(MessageRole.ASSISTANT, "", tool_calls=[call]),  # never answered
              _message(MessageRole.ASSISTANT, "sorry"),
              _message(MessageRole.TOOL, "{}", tool_call_id="zz"),  # orphan
              _message(MessageRole.USER, "again")]
    history = history_for_model(stored, include_tools=True)
    assert [m["role"] for m in history] == ["user", "assistant", "user"]


def test_history_is_capped_by_a_token_budget() -> None:
    stored = [_message(MessageRole.USER if i % 2 == 0 else MessageRole.ASSISTANT, "x" * 4000)
              for i in range(30)]
    history = history_for_model(stored, include_tools=False, token_budget=5000)
    assert 0 < len(history) <= 5
    assert history[0]["role"] == "user"
    assert history[-1] is not None and len(history) < len(stored)


async def test_unexpected_failure_ends_the_stream_with_an_error_event(
        client: Any, gmail_user: Any, auth_headers: Any, new_conversation: Any,
        fake_openai: FakeOpenAI, fake_gmail: FakeGmail, monkeypatch: Any) -> None:
    from app.assistant import gmail

    async def broken(self: Any, query: str, max_results: int = 10) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gmail.GmailClient, "search_messages", broken)
    user = await gmail_user()
    cid = await new_conversation(user)
    fake_openai.enqueue(Reply(content="Looking. ",
                              tool_calls=[ToolCall("search_messages", {"q": "x"})]))
    response = await _ask(client, cid, {**auth_headers(user), **SSE}, "Search")
    events = parse_sse(response.text)
    assert events[0] == ("token", {"text": "Looking. "})
    assert events[-1][0] == "error" and events[-1][1]["code"] == "agent_error"


async def test_thread_read_is_capped(client: Any, gmail_user: Any, auth_headers: Any,
                                     new_conversation: Any, fake_openai: FakeOpenAI,
                                     fake_gmail: FakeGmail) -> None:
    from app.assistant.gmail import MAX_THREAD_CHARS, MAX_THREAD_MESSAGES

    first = fake_gmail.add_email("Ann <ann@example.com>", "Long", "y" * 5000)
    for _ in range(MAX_THREAD_MESSAGES + 5):
        fake_gmail.add_email("Ann <ann@example.com>", "Re: Long", "z" * 5000,
                             thread_id=first.id)
    user = await gmail_user()
    cid = await new_conversation(user)
    fake_openai.enqueue(Reply(tool_calls=[ToolCall("get_thread", {"id": first.thread_id})]),
                        Reply(content="Long thread."))
    assert (await _ask(client, cid, auth_headers(user), "Summarize")).status == 200
    [output] = [json.loads(m["content"]) for m in fake_openai.chat_requests()[-1]["messages"]
                if m["role"] == "tool"]
    thread = output["data"]
    assert len(thread["messages"]) == MAX_THREAD_MESSAGES
    assert thread["omittedMessages"] == 6
    assert sum(len(m["body"]) for m in thread["messages"]) <= MAX_THREAD_CHARS


async def test_search_terms_and_message_ids_stay_out_of_the_logs(
        client: Any, gmail_user: Any, auth_headers: Any, new_conversation: Any,
        fake_openai: FakeOpenAI, fake_gmail: FakeGmail, caplog: Any) -> None:
    mail = fake_gmail.add_email("Doc <doc@example.com>", "Results", "private")
    user = await gmail_user()
    cid = await new_conversation(user)
    fake_openai.enqueue(Reply(tool_calls=[ToolCall("search_messages",
                                                   {"q": "biopsy-results-secret"})]),
                        Reply(content="Found it."))
    with caplog.at_level(logging.INFO):  # production refuses LOG_LEVEL=debug
        logging.getLogger("httpx").setLevel(logging.NOTSET)  # as a fresh process has it
        from app.assistant import quiet_http_client_logs

        quiet_http_client_logs()
        assert (await _ask(client, cid, auth_headers(user), "Find it")).status == 200
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "biopsy-results-secret" not in text
    assert f"/messages/{mail.id}" not in text


@pytest.mark.parametrize("status", ["pending", "approved", "rejected"])
async def test_draft_list_filters(client: Any, gmail_user: Any, auth_headers: Any,
                                  status: str) -> None:
    user = await gmail_user()
    _, response = await client.get(f"/api/drafts?status={status}", headers=auth_headers(user))
    assert response.status == 200 and response.json == {"drafts": []}
    _, bad = await client.get("/api/drafts?status=sent", headers=auth_headers(user))
    assert bad.status == 400


async def test_per_user_quota_on_model_calls(make_app: Any, app_settings: Any,
                                            start_client: Any, make_user: Any,
                                            auth_headers: Any, fake_openai: FakeOpenAI) -> None:
    import dataclasses

    settings = dataclasses.replace(app_settings, assistant_quota_max_calls=2,
                                   assistant_quota_window=3600)
    client = start_client(make_app(settings))
    heavy, other = await make_user(), await make_user()
    statuses = []
    for user in (heavy, heavy, heavy, other):
        _, created = await client.post("/api/conversations", json={},
                                       headers=auth_headers(user))
        cid = created.json["conversation"]["id"]
        _, response = await client.post(f"/api/conversations/{cid}/messages",
                                        json={"content": "hi"}, headers=auth_headers(user))
        statuses.append(response.status)
        if response.status == 429:
            assert response.json["code"] == "quota_exceeded"
            assert 0 < int(response.headers["retry-after"]) <= 3600
    assert statuses == [200, 200, 429, 200]  # per user, not global
    assert len(fake_openai.chat_requests()) == 3
