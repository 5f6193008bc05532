"""Refuse JSON bodies no handler should see, before any handler runs: 400 in the API's
error shape instead of a 500 from deep inside (PostgreSQL rejects NUL characters in text,
UTF-8 cannot encode a lone surrogate such as "\\ud800", and Python's JSON parser hits its
recursion limit on a deeply nested document).

Checked: every string of a JSON request body, keys included. Bodies that are not JSON are
left to their handlers (which answer invalid_json).
"""

from __future__ import annotations

import json
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse

from app.errors import json_error

# Far deeper than any of our request shapes; far below Python's recursion limit.
MAX_JSON_DEPTH = 32
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def json_depth_exceeds(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when brackets outside strings nest deeper than `limit` (one linear scan)."""
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _bad_string(value: str) -> bool:
    if "\x00" in value:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return True
    return False


def find_bad_string(data: Any) -> bool:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _bad_string(item):
                return True
        elif isinstance(item, dict):
            for key, value in item.items():
                if isinstance(key, str) and _bad_string(key):
                    return True
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_json_body(raw: bytes) -> HTTPResponse | None:
    stripped = raw.lstrip()
    if not stripped or stripped[:1] not in (b"{", b"["):
        return None
    if json_depth_exceeds(stripped):
        return json_error(400, f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels",
                          "invalid_body")
    try:
        data = json.loads(stripped)
    except (ValueError, RecursionError):
        return None  # the handler answers invalid_json in its own words
    if find_bad_string(data):
        return json_error(400, "Text must not contain NUL characters or unpaired UTF-16 "
                          "surrogates", "invalid_characters")
    return None


def setup_input_guard(app: Sanic) -> None:
    async def refuse_unusable_json(request: Request) -> HTTPResponse | None:
        if request.method not in _BODY_METHODS or not request.body:
            return None
        return check_json_body(request.body)

    # After rate limiting (800) and request ids (1000), before every handler.
    app.on_request(refuse_unusable_json, priority=700)
