"""The cheaper header encoding writes exactly what Sanic would, CR/LF/NUL included."""

from __future__ import annotations

import itertools

import pytest
from sanic import Request, Sanic
from sanic.response import HTTPResponse, text
from sanic.response.types import HEADER_TRANSLATION_TABLE, BaseHTTPResponse

from app.ops.fast_headers import (
    install_fast_header_encoding,
    register_constant_headers,
    sanitize_header_value,
)

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


def _sanics_encoding(response: BaseHTTPResponse) -> list[tuple[bytes, bytes]]:
    # Sanic's own BaseHTTPResponse.processed_headers, written out.
    return [(name.translate(HEADER_TRANSLATION_TABLE).encode("ascii"),
             f"{value}".translate(HEADER_TRANSLATION_TABLE).encode(errors="surrogateescape"))
            for name, value in response.headers.items()]


def test_constant_headers_are_encoded_once_with_the_same_bytes() -> None:
    assert install_fast_header_encoding() is True
    register_constant_headers([("X-Const", "same-origin"), ("X-Evil", "a\r\nb")])
    response = HTTPResponse("x", headers={"X-Const": "same-origin", "X-Evil": "a\r\nb",
                                          "X-Other": "caf\u00e9\n", "content-length": 1},
                            content_type="text/plain; charset=utf-8")
    encoded = list(response.processed_headers)
    assert (b"X-Const", b"same-origin") in encoded
    assert (b"X-Evil", b"ab") in encoded  # registered pairs are sanitized too
    assert (b"X-Other", "caf\u00e9".encode()) in encoded
    assert (b"content-length", b"1") in encoded
    assert encoded == _sanics_encoding(response)
    assert (b"content-type", b"text/plain; charset=utf-8") in encoded


def test_no_content_type_added_without_a_body() -> None:
    install_fast_header_encoding()
    response = HTTPResponse(status=204)
    assert [name for name, _ in response.processed_headers] == []


def test_unhashable_header_value_is_encoded_like_sanic() -> None:
    install_fast_header_encoding()
    response = HTTPResponse("x", headers={"X-Const": "same-origin"},
                            content_type="text/plain; charset=utf-8")
    response.headers["X-List"] = ["a", "b"]  # type: ignore[assignment]
    encoded = list(response.processed_headers)
    assert (b"X-List", b"['a', 'b']") in encoded
    assert encoded == _sanics_encoding(response)
