"""The one JSON error shape of the API: {"error": message, "code": stable_code, ...}."""

from __future__ import annotations

import logging
from typing import Any

from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, json

log = logging.getLogger("assistantapp.errors")

STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    417: "expectation_failed",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


def json_error(status: int, message: str, code: str, **extra: Any) -> HTTPResponse:
    return json({"error": message, "code": code, **extra}, status=status)


def setup_error_handlers(app: Sanic) -> None:
    """Every error the framework raises (unknown route, wrong method, body too large, ...)
    answers in the API's shape; an unexpected exception is logged and never leaks details."""

    @app.exception(SanicException)
    async def framework_error(request: Request, exc: SanicException) -> HTTPResponse:
        status = int(getattr(exc, "status_code", 500) or 500)
        if status >= 500:
            log.error("request failed: %s", exc, exc_info=exc)
            message = "Internal server error" if status == 500 else str(exc.message or exc)
        else:
            message = str(exc.message or exc) or "Request failed"
        response = json_error(status, message, STATUS_CODES.get(status, f"http_{status}"))
        for name, value in (getattr(exc, "headers", None) or {}).items():
            response.headers[name] = value
        return response

    @app.exception(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> HTTPResponse:
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return json_error(500, "Internal server error", "internal_error")
