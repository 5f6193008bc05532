"""Bad input answers 4xx in the API's error shape, never 500 (issue 10): NUL characters
and lone surrogates in JSON strings, deeply nested JSON, and a generated (property-based)
sweep over every JSON endpoint of the OpenAPI document.

`hypothesis`/`schemathesis` are not installed in the project's environment, so the sweep
draws its cases from a seeded random generator: the same cases on every run, bounded by
CASES_PER_OPERATION, with the usual hostile shapes mixed in (NUL, surrogates, deep
nesting, wrong types, huge numbers, broken JSON and UTF-8).
"""

from __future__ import annotations

import json
import random
import re
import uuid
from typing import Any

import pytest

from app.ops.input_guard import MAX_JSON_DEPTH, find_bad_string, json_depth_exceeds

CASES_PER_OPERATION = 30
SEED = 10
FIELDS = ["content", "title", "agent", "refreshToken", "to", "subject", "body", "status"]
# The messages endpoint calls the model: its documented upstream answers are not bad input.
UPSTREAM_CODES = {"upstream_error", "upstream_timeout", "upstream_rate_limited",
                  "assistant_not_configured"}
HOSTILE_STRINGS = ["a\x00b", "\ud800", "x\udfffy", "\x00", "é😀", "", " ", "email",
                   "general", "a" * 40_000, "<script>", "\r\nBcc: x@example.com",
                   "../../etc/passwd", "%00", "null"]


def _string(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(HOSTILE_STRINGS)
    return "".join(chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0, 0x10FFFF)]))
                   for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 7 if depth < 3 else 4)
    if kind == 0:
        return _string(rng)
    if kind == 1:
        return rng.choice([0, -1, 2**63, -(2**70), 10**400 // 10**399])
    if kind == 2:
        return rng.choice([1.5, -0.0, 1e308])
    if kind == 3:
        return rng.choice([True, False])
    if kind == 4:
        return None
    if kind == 5:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice([*FIELDS, _string(rng)]): _value(rng, depth + 1)
            for _ in range(rng.randint(0, 4))}


def _body(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.08:
        return b"[" * rng.choice([MAX_JSON_DEPTH + 1, 5000, 100_000])
    if roll < 0.14:
        return rng.choice([b"{", b'{"content": "\xff\xfe"}', b"nul\x00l", b'{"a":1}x'])
    if roll < 0.7:
        document = {name: _value(rng) for name in rng.sample(FIELDS, rng.randint(1, 4))}
    else:
        document = _value(rng)
    return json.dumps(document).encode()  # lone surrogates travel as \ud800 escapes


def _concrete(path: str, ids: dict[str, str], rng: random.Random) -> str:
    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if "conversation" in name and rng.random() < 0.7:
            return ids["conversation"]
        return rng.choice([str(uuid.uuid4()), ids.get("proposal", str(uuid.uuid4()))])

    return re.sub(r"\{([^}]+)\}", fill, path)


async def test_generated_bodies_never_cause_a_5xx(client: Any, gmail_user: Any,
                                                  auth_headers: Any, new_conversation: Any,
                                                  capsys: Any) -> None:
    _, spec = await client.get("/docs/openapi.json")
    assert spec.status == 200
    operations = sorted((path, method.upper()) for path, item in spec.json["paths"].items()
                        for method in item if method in ("post", "put", "patch", "delete"))
    assert ("/api/conversations/{conversation_id}/messages", "POST") in operations
    assert ("/auth/refresh", "POST") in operations
    user = await gmail_user()
    ids = {"conversation": await new_conversation(user, agent="general")}
    rng = random.Random(SEED)
    cases = 0
    failures: list[str] = []
    for path, method in operations:
        for _ in range(CASES_PER_OPERATION):
            url = _concrete(path, ids, rng)
            body = _body(rng)
            headers = {**auth_headers(user), "Content-Type": "application/json"}
            _, response = await client.request(method, url, content=body, headers=headers)
            cases += 1
            status = response.status
            payload = response.json if "json" in response.headers.get("content-type", "") \
                else None
            if status >= 400:
                if not (isinstance(payload, dict) and isinstance(payload.get("error"), str)
                        and isinstance(payload.get("code"), str)):
                    failures.append(f"{method} {url} {body[:80]!r}: {status} not JSON shape")
            if status >= 500 and not (payload and payload.get("code") in UPSTREAM_CODES):
                failures.append(f"{method} {url} {body[:80]!r}: {status} {payload}")
    with capsys.disabled():
        print(f"\n[bad-input sweep] {len(operations)} operations, {cases} generated cases")
    assert cases == len(operations) * CASES_PER_OPERATION
    assert failures == []


@pytest.mark.parametrize(("path", "body"), [
    ("/api/conversations", {"title": "a\x00b"}),
    ("/api/conversations", {"title": "\ud800"}),
    ("/api/conversations", {"title": "ok", "extra": {"k\x00": 1}}),
    ("/auth/refresh", {"refreshToken": "x\x00y"}),
    ("/auth/logout", {"refreshToken": "\udfff"}),
])
async def test_nul_and_lone_surrogates_are_400(client: Any, make_user: Any,
                                               auth_headers: Any, path: str,
                                               body: dict[str, Any]) -> None:
    user = await make_user()
    _, response = await client.post(path, content=json.dumps(body).encode(),
                                    headers={**auth_headers(user),
                                             "Content-Type": "application/json"})
    assert response.status == 400
    assert response.json["code"] == "invalid_characters" and response.json["error"]


async def test_messages_with_nul_are_400_and_nothing_is_stored(
        client: Any, make_user: Any, auth_headers: Any, new_conversation: Any,
        stored_messages: Any) -> None:
    user = await make_user()
    cid = await new_conversation(user)
    _, response = await client.post(f"/api/conversations/{cid}/messages",
                                    json={"content": "hello\x00world"},
                                    headers=auth_headers(user))
    assert response.status == 400 and response.json["code"] == "invalid_characters"
    assert await stored_messages(cid) == []


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
async def test_deeply_nested_json_is_400(client: Any, make_user: Any, auth_headers: Any,
                                         depth: int) -> None:
    user = await make_user()
    body = b'{"title": ' + b"[" * depth + b"]" * depth + b"}"
    _, response = await client.post("/api/conversations", content=body,
                                    headers={**auth_headers(user),
                                             "Content-Type": "application/json"})
    assert response.status == 400 and response.json["code"] == "invalid_body"


def test_depth_scan_ignores_brackets_in_strings() -> None:
    assert not json_depth_exceeds(json.dumps({"a": "[" * 1000}).encode())
    assert json_depth_exceeds(b"[" * (MAX_JSON_DEPTH + 1))
    assert not json_depth_exceeds(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert find_bad_string({"a": ["ok", {"b": "\x00"}]})
    assert not find_bad_string({"a": ["ok", {"b": "é😀"}], "n": 1})
