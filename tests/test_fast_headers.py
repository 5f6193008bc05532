"""The cheaper header encoding writes exactly what Sanic would, CR/LF/NUL included."""

from __future__ import annotations

import itertools

import pytest
from sanic import Request, Sanic
from sanic.response import HTTPResponse, text
from sanic.response.types import HEADER_TRANSLATION_TABLE, BaseHTTPResponse

from app.ops.fast_headers import install_fast_header_encoding, sanitize_header_value

Sanic.test_mode = True
_names = (f"fast_headers_{i}" for i in itertools.count())


@pytest.mark.parametrize("value", [
    "", "nosniff", "strict-origin-when-cross-origin", "max-age=31536000; includeSubDomains",
    "caf\u00e9 \u2603", "a\r\nSet-Cookie: stolen=1", "\r", "\n", "\x00", "x\x00y\rz\n",
    "\r\n\r\n", "tab\tis fine",
])
def test_same_result_as_sanics_translation(value: str) -> None:
    assert sanitize_header_value(value) == value.translate(HEADER_TRANSLATION_TABLE)


def test_installed_and_response_splitting_still_impossible() -> None:
    assert install_fast_header_encoding() is True
    assert install_fast_header_encoding() is True  # idempotent
    assert BaseHTTPResponse._sanitize_header_value is sanitize_header_value

    app = Sanic(next(_names))

    @app.get("/echo")
    async def echo(request: Request) -> HTTPResponse:
        return text("ok", headers={"X-Echo": request.args.get("v", ""),
                                   "X-Plain": "strict-origin-when-cross-origin"})

    _, response = app.test_client.get("/echo", params={"v": "a\r\nSet-Cookie: stolen=1"})
    assert response.status == 200
    assert response.headers["x-echo"] == "aSet-Cookie: stolen=1"
    assert "set-cookie" not in response.headers
    assert response.headers["x-plain"] == "strict-origin-when-cross-origin"
