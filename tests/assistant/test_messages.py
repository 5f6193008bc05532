"""Posting messages: JSON and SSE replies from the fake model, persistence, upstream errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sanic import Sanic

from app.assistant.llm import NOT_CONFIGURED_MESSAGE
from tests.assistant.conftest import parse_sse
from tests.conftest import replace_settings
from tests.fakes.openai_server import FakeOpenAI, Reply

SSE = {"Accept": "text/event-stream"}


@pytest.fixture
def app_with(app_settings: Any) -> Iterator[Any]:
    """Build an app from the test settings with a few changes (other keys, retries...)."""
    from app.factory import create_app

    built: list[Sanic] = []

    def build(**changes: Any) -> Sanic:
        Sanic.test_mode = True
        Sanic._app_registry.pop("assistantapp", None)
        application = create_app(replace_settings(app_settings, **changes))
        built.append(application)
        return application

    yield build
    for application in built:
        Sanic._app_registry.pop(application.name, None)


async def _post(client: Any, cid: str, headers: dict[str, str], **body: Any) -> Any:
    _, response = await client.post(f"/api/conversations/{cid}/messages", json=body,
                                    headers=headers)
    return response


async def test_json_reply_is_stored_with_history(client: Any, make_user: Any, auth_headers: Any,
                                                 new_conversation: Any, fake_openai: FakeOpenAI,
                                                 stored_messages: Any) -> None:
    user = await make_user()
    cid = await new_conversation(user)
    first = await _post(client, cid, auth_headers(user), content="What is 2+2?")
    assert first.status == 200, first.text
    assert first.json["message"]["content"] == "You said: What is 2+2?"
    assert first.json["message"]["role"] == "assistant"
    assert first.json["userMessage"]["content"] == "What is 2+2?"

    fake_openai.enqueue(Reply(content="Four, as I said."))
    second = await _post(client, cid, auth_headers(user), content="Again?")
    assert second.json["message"]["content"] == "Four, as I said."

    # The model received the whole dialogue, with the key and the configured model.
    requests = fake_openai.chat_requests()
    assert [m["role"] for m in requests[1]["messages"]] == ["system", "user", "assistant", "user"]
    assert requests[1]["messages"][2]["content"] == "You said: What is 2+2?"
    assert requests[1]["model"] == "gpt-4o-mini"
    assert "stream" not in requests[1]
    assert fake_openai.requests[0].headers["authorization"] == "Bearer sk-test-0123456789abcdef"

    stored = await stored_messages(cid)
    assert [(m.role, m.content, m.status) for m in stored] == [
        ("user", "What is 2+2?", "complete"),
        ("assistant", "You said: What is 2+2?", "complete"),
        ("user", "Again?", "complete"),
        ("assistant", "Four, as I said.", "complete")]
    _, listing = await client.get("/api/conversations", headers=auth_headers(user))
    # The first message names an untitled conversation.
    assert listing.json["conversations"][0]["title"] == "What is 2+2?"


async def test_sse_reply_streams_tokens_then_done(client: Any, make_user: Any, auth_headers: Any,
                                                  new_conversation: Any, fake_openai: FakeOpenAI,
                                                  stored_messages: Any) -> None:
    user = await make_user()
    cid = await new_conversation(user)
    fake_openai.enqueue(Reply(content="Streaming works fine today."))
    response = await _post(client, cid, {**auth_headers(user), **SSE}, content="Stream please")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"].startswith("no-cache")
    events = parse_sse(response.text)
    tokens = [data["text"] for name, data in events if name == "token"]
    assert len(tokens) == 4  # one event per upstream token, not one buffered blob
    assert "".join(tokens) == "Streaming works fine today."
    name, done = events[-1]
    assert name == "done"
    assert fake_openai.chat_requests()[0]["stream"] is True

    stored = await stored_messages(cid)
    assert done["messageId"] == stored[1].id
    assert done["userMessageId"] == stored[0].id
    assert done["conversationId"] == cid
    assert stored[1].content == "Streaming works fine today."


@pytest.mark.parametrize(("reply", "status", "code"), [
    (Reply(status=500), 502, "upstream_error"),
    (Reply(status=429, headers={"retry-after": "0"}), 503, "upstream_rate_limited"),
    (Reply(status=401, error_message="Incorrect API key provided."), 502, "upstream_error"),
    (Reply(content="too late", delay=2.5), 504, "upstream_timeout"),
])
@pytest.mark.parametrize("streaming", [False, True])
async def test_upstream_failures_keep_the_user_message(
        client: Any, make_user: Any, auth_headers: Any, new_conversation: Any,
        fake_openai: FakeOpenAI, stored_messages: Any, reply: Reply, status: int, code: str,
        streaming: bool) -> None:
    user = await make_user()
    cid = await new_conversation(user)
    fake_openai.enqueue(reply)
    headers = {**auth_headers(user), **(SSE if streaming else {})}
    response = await _post(client, cid, headers, content="Please answer")
    # Nothing was streamed yet, so even an SSE client gets the HTTP status and JSON error.
    assert response.status == status
    assert response.json["code"] == code
    assert response.json["error"]
    stored = await stored_messages(cid)
    assert (stored[0].role, stored[0].content, stored[0].status) == (
        "user", "Please answer", "complete")
    assert response.json["userMessageId"] == stored[0].id
    assert [(m.role, m.status) for m in stored[1:]] == [("assistant", "error")]

    # The failed turn is not replayed to the model as if it had been answered.
    fake_openai.enqueue(Reply(content="Back again"))
    retry = await _post(client, cid, auth_headers(user), content="Try again")
    assert retry.status == 200
    assert [m["content"] for m in fake_openai.chat_requests()[-1]["messages"][1:]] == [
        "Please answer", "Try again"]


async def test_stream_broken_midway_ends_with_error_event(
        client: Any, make_user: Any, auth_headers: Any, new_conversation: Any,
        fake_openai: FakeOpenAI, stored_messages: Any) -> None:
    user = await make_user()
    cid = await new_conversation(user)
    fake_openai.enqueue(Reply(content="This answer will be cut off here", cut_after=3))
    response = await _post(client, cid, {**auth_headers(user), **SSE}, content="Go")
    assert response.status == 200
    events = parse_sse(response.text)
    assert [name for name, _ in events] == ["token", "token", "token", "error"]
    assert events[-1][1]["code"] == "upstream_error"
    stored = await stored_messages(cid)
    assert [(m.role, m.status) for m in stored] == [("user", "complete"),
                                                    ("assistant", "error")]


async def test_bounded_retries_recover_from_one_failure(
        app_with: Any, start_client: Any, make_user: Any, auth_headers: Any,
        fake_openai: FakeOpenAI) -> None:
    client = start_client(app_with(openai_max_retries=1))
    user = await make_user()
    _, created = await client.post("/api/conversations", headers=auth_headers(user))
    cid = created.json["conversation"]["id"]
    fake_openai.fail_next(500, headers={"retry-after-ms": "10"})
    response = await _post(client, cid, auth_headers(user), content="hello")
    assert response.status == 200
    assert len(fake_openai.chat_requests()) == 2

    fake_openai.fail_next(500, times=3, headers={"retry-after-ms": "10"})
    response = await _post(client, cid, auth_headers(user), content="hello")
    assert response.status == 502
    assert len(fake_openai.chat_requests()) == 4  # 1 + max_retries, then give up
    assert fake_openai.pending() == 1


async def test_not_configured_in_development(app_with: Any, start_client: Any, make_user: Any,
                                             auth_headers: Any,
                                             fake_openai: FakeOpenAI) -> None:
    client = start_client(app_with(app_env="development", openai_api_key=""))
    user = await make_user()
    _, created = await client.post("/api/conversations", headers=auth_headers(user))
    cid = created.json["conversation"]["id"]
    for extra in ({}, SSE):
        response = await _post(client, cid, {**auth_headers(user), **extra}, content="hello")
        assert response.status == 503
        assert response.json == {
            "code": "assistant_not_configured",
            "error": NOT_CONFIGURED_MESSAGE}
    assert "OPENAI_API_KEY" in NOT_CONFIGURED_MESSAGE
    assert fake_openai.requests == []


async def test_message_bad_input(client: Any, make_user: Any, auth_headers: Any,
                                 new_conversation: Any, fake_openai: FakeOpenAI,
                                 stored_messages: Any) -> None:
    user = await make_user()
    cid = await new_conversation(user)
    headers = {**auth_headers(user), "Content-Type": "application/json"}
    cases = [
        (b"", 400, "invalid_body"),
        (b"{oops", 400, "invalid_json"),
        (b'"just a string"', 400, "invalid_body"),
        (b"{}", 400, "validation_error"),
        (b'{"content": "   "}', 400, "validation_error"),
        (b'{"content": 42}', 400, "validation_error"),
        (b'{"content": "hi", "agent": "root"}', 400, "unknown_agent"),
        (b'{"content": "' + b"a" * 40_000 + b'"}', 413, "message_too_large"),
    ]
    for body, status, code in cases:
        _, response = await client.post(f"/api/conversations/{cid}/messages",
                                        content=body, headers=headers)
        assert response.status == status, body[:40]
        assert response.json["code"] == code, body[:40]
    assert await stored_messages(cid) == []
    assert fake_openai.requests == []


async def test_body_over_the_size_limit_is_413(client: Any, make_user: Any, auth_headers: Any,
                                               new_conversation: Any,
                                               app_settings: Any) -> None:
    user = await make_user()
    cid = await new_conversation(user)
    body = b'{"content": "' + b"a" * (app_settings.request_max_size + 10) + b'"}'
    _, response = await client.post(
        f"/api/conversations/{cid}/messages", content=body,
        headers={**auth_headers(user), "Content-Type": "application/json"})
    assert response.status == 413


async def test_agent_runs_are_recorded(client: Any, make_user: Any, auth_headers: Any,
                                       new_conversation: Any, fake_openai: FakeOpenAI,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from app.ops import metrics

    recorded: list[tuple[str, bool, float]] = []
    monkeypatch.setattr(metrics, "record_agent_execution",
                        lambda app, agent, success, duration_s:
                        recorded.append((agent, success, duration_s)), raising=False)
    user = await make_user()
    cid = await new_conversation(user)
    fake_openai.enqueue(Reply(content="ok", delay=0.05), Reply(status=500))
    assert (await _post(client, cid, auth_headers(user), content="one")).status == 200
    assert (await _post(client, cid, auth_headers(user), content="two")).status == 502
    assert [(a, s) for a, s, _ in recorded] == [("general", True), ("general", False)]
    assert recorded[0][2] >= 0.05


async def test_agent_statistics_reach_health(client: Any, gmail_user: Any, auth_headers: Any,
                                             new_conversation: Any,
                                             fake_openai: FakeOpenAI) -> None:
    user = await gmail_user()
    cid = await new_conversation(user)
    fake_openai.enqueue(Reply(content="fine"), Reply(status=500), Reply(content="mail ok"))
    assert (await _post(client, cid, auth_headers(user), content="a")).status == 200
    assert (await _post(client, cid, auth_headers(user), content="b")).status == 502
    assert (await _post(client, cid, auth_headers(user), content="c", agent="email")).status == 200

    _, health = await client.get("/health")
    agents = health.json["agents"]
    assert agents["byAgent"]["general"]["total"] == 2
    assert agents["byAgent"]["general"]["successful"] == 1
    assert agents["byAgent"]["general"]["failed"] == 1
    assert agents["byAgent"]["email"] == {**agents["byAgent"]["email"], "total": 1,
                                          "successful": 1, "failed": 0}
    assert agents["total"] == 3
