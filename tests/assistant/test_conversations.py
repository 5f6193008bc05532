"""Conversations CRUD, ownership and input validation, against real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any


async def test_create_list_get_delete(client: Any, make_user: Any, auth_headers: Any) -> None:
    user = await make_user()
    headers = auth_headers(user)
    _, created = await client.post("/api/conversations",
                                   json={"title": "Trip plans", "agent": "email"},
                                   headers=headers)
    assert created.status == 201
    conversation = created.json["conversation"]
    assert conversation["title"] == "Trip plans"
    assert conversation["agent"] == "email"
    uuid.UUID(conversation["id"])

    _, empty_body = await client.post("/api/conversations", headers=headers)
    assert empty_body.status == 201
    assert empty_body.json["conversation"]["agent"] == "general"

    _, listing = await client.get("/api/conversations", headers=headers)
    assert listing.status == 200
    assert listing.json["total"] == 2
    assert {c["id"] for c in listing.json["conversations"]} == {
        conversation["id"], empty_body.json["conversation"]["id"]}

    _, one = await client.get(f"/api/conversations/{conversation['id']}",
                              headers=headers)
    assert one.status == 200
    assert one.json["conversation"]["messages"] == []

    _, deleted = await client.delete(f"/api/conversations/{conversation['id']}",
                                     headers=headers)
    assert deleted.status == 204
    _, gone = await client.get(f"/api/conversations/{conversation['id']}",
                               headers=headers)
    assert gone.status == 404
    assert gone.json["code"] == "not_found"
    _, again = await client.delete(f"/api/conversations/{conversation['id']}",
                                   headers=headers)
    assert again.status == 404


async def test_list_is_paginated_and_validated(client: Any, make_user: Any,
                                               auth_headers: Any) -> None:
    user = await make_user()
    headers = auth_headers(user)
    for n in range(3):
        await client.post("/api/conversations", json={"title": f"c{n}"},
                          headers=headers)
    _, page = await client.get("/api/conversations?limit=2&offset=0", headers=headers)
    assert page.status == 200
    assert len(page.json["conversations"]) == 2
    assert page.json["total"] == 3
    for bad in ("limit=0", "limit=abc", "offset=-1", "limit=1000"):
        _, response = await client.get(f"/api/conversations?{bad}", headers=headers)
        assert response.status == 400, bad
        assert response.json["code"] == "validation_error"


async def test_users_only_see_their_own(client: Any, make_user: Any, auth_headers: Any,
                                        new_conversation: Any) -> None:
    alice, mallory = await make_user(), await make_user()
    alices = await new_conversation(alice, title="private")

    _, listing = await client.get("/api/conversations", headers=auth_headers(mallory))
    assert listing.json["conversations"] == []
    for method, path, body in (
        ("get", f"/api/conversations/{alices}", None),
        ("delete", f"/api/conversations/{alices}", None),
        ("post", f"/api/conversations/{alices}/messages", {"content": "hi"}),
    ):
        kwargs: dict[str, Any] = {"headers": auth_headers(mallory)}
        if body is not None:
            kwargs["json"] = body
        _, response = await getattr(client, method)(path, **kwargs)
        assert response.status == 404, (method, path)
        assert response.json["code"] == "not_found"
    # ...and the conversation is untouched for its owner.
    _, mine = await client.get(f"/api/conversations/{alices}",
                               headers=auth_headers(alice))
    assert mine.status == 200
    assert mine.json["conversation"]["messages"] == []


async def test_unknown_and_malformed_ids_are_404(client: Any, make_user: Any,
                                                 auth_headers: Any) -> None:
    headers = auth_headers(await make_user())
    for path in (f"/api/conversations/{uuid.uuid4()}", "/api/conversations/not-a-uuid",
                 "/api/conversations/123"):
        _, response = await client.get(path, headers=headers)
        assert response.status == 404, path


async def test_missing_or_bad_auth_is_401(client: Any) -> None:
    some_id = uuid.uuid4()
    for method, path in (("get", "/api/conversations"), ("post", "/api/conversations"),
                         ("get", f"/api/conversations/{some_id}"),
                         ("delete", f"/api/conversations/{some_id}"),
                         ("post", f"/api/conversations/{some_id}/messages")):
        _, response = await getattr(client, method)(path)
        assert response.status == 401, (method, path)
        _, response = await getattr(client, method)(
            path, headers={"Authorization": "Bearer not-a-token"})
        assert response.status == 401, (method, path)


async def test_create_rejects_bad_input(client: Any, make_user: Any, auth_headers: Any) -> None:
    headers = {**auth_headers(await make_user()), "Content-Type": "application/json"}
    cases = [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'{"title": 5}', "validation_error"),
        (b'{"title": "' + b"x" * 300 + b'"}', "validation_error"),
        (b'{"agent": "hacker"}', "unknown_agent"),
    ]
    for body, code in cases:
        _, response = await client.post("/api/conversations", content=body,
                                        headers=headers)
        assert response.status == 400, body
        assert response.json["code"] == code, body
        assert response.json["error"]


async def test_agents_are_listed(client: Any, make_user: Any, auth_headers: Any) -> None:
    _, response = await client.get("/api/agents", headers=auth_headers(await make_user()))
    assert response.status == 200
    assert {a["name"] for a in response.json["agents"]} >= {"general", "email"}


async def test_api_is_documented(client: Any) -> None:
    _, response = await client.get("/docs/openapi.json")
    assert response.status == 200
    paths = response.json["paths"]
    message_path = "/api/conversations/{conversation_id}/messages"
    assert set(paths["/api/conversations"]) == {"get", "post"}
    assert "413" in paths[message_path]["post"]["responses"]
    assert paths[message_path]["post"]["tags"] == ["assistant"]
