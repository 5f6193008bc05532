"""Bad input answers 4xx in the API's error shape, never 500 (issue 10): NUL characters
and lone surrogates in JSON strings, deeply nested JSON, and a property-based sweep over
every JSON endpoint of the OpenAPI document.

The sweep's cases come from `hypothesis` strategies (JSON documents of every shape, any
code point including lone surrogates, hostile strings, broken JSON and UTF-8, nesting past
the limit), CASES_PER_OPERATION per operation, derandomized so every run sends the same
cases. Hypothesis draws them; the async app client then sends them one by one.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.ops.input_guard import MAX_JSON_DEPTH, find_bad_string, json_depth_exceeds

CASES_PER_OPERATION = 40
FIELDS = ["content", "title", "agent", "refreshToken", "to", "subject", "body", "status"]
# The messages endpoint calls the model: its documented upstream answers are not bad input.
UPSTREAM_CODES = {"upstream_error", "upstream_timeout", "upstream_rate_limited",
                  "assistant_not_configured"}
HOSTILE_STRINGS = ["a\x00b", "\ud800", "x\udfffy", "\x00", "é😀", "", " ", "email",
                   "general", "a" * 40_000, "<script>", "\r\nBcc: x@example.com",
                   "../../etc/passwd", "%00", "null"]

# Any code point, lone surrogates and control characters included.
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None),
                   max_size=12)
strings = st.one_of(st.sampled_from(HOSTILE_STRINGS), any_text)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=False, allow_infinity=False), strings),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), any_text), children, max_size=4)),
    max_leaves=12)
documents = st.one_of(
    st.fixed_dictionaries({}, optional={name: json_values for name in FIELDS}),
    json_values)
bodies = st.one_of(
    documents.map(lambda document: json.dumps(document).encode()),  # surrogates as \ud800
    st.sampled_from([b"[" * (MAX_JSON_DEPTH + 1), b"[" * 100_000, b"{",
                     b'{"content": "\xff\xfe"}', b"nul\x00l", b'{"a":1}x']),
    st.binary(max_size=64))
# A path parameter: the conversation the test made (the usual case), or any other id.
EXISTING = "existing"
path_ids = st.one_of(st.just(EXISTING), st.uuids().map(str))


def generated_cases(path: str) -> list[tuple[list[str], bytes]]:
    """CASES_PER_OPERATION (path ids, body) cases for one path, drawn by hypothesis."""
    cases: list[tuple[list[str], bytes]] = []
    holes = path.count("{")

    @settings(max_examples=CASES_PER_OPERATION, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(st.lists(path_ids, min_size=holes, max_size=holes), bodies)
    def collect(ids: list[str], body: bytes) -> None:
        cases.append((ids, body))

    collect()
    return cases


def concrete(path: str, ids: list[str], existing: str) -> str:
    values = iter(ids)

    def fill(_: re.Match[str]) -> str:
        value = next(values)
        return existing if value == EXISTING else value

    return re.sub(r"\{[^}]+\}", fill, path)


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
    conversation = await new_conversation(user, agent="general")
    cases = 0
    failures: list[str] = []
    for path, method in operations:
        for ids, body in generated_cases(path):
            url = concrete(path, ids, conversation)
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
