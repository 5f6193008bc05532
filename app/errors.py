"""The one JSON error shape of the API: {"error": message, "code": stable_code, ...}."""

from __future__ import annotations

from typing import Any

from sanic.response import HTTPResponse, json


def json_error(status: int, message: str, code: str, **extra: Any) -> HTTPResponse:
    return json({"error": message, "code": code, **extra}, status=status)
