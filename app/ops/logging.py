"""JSON-lines logging with request ids and secret redaction.

Every record (ours, Sanic's access/error/server loggers, libraries') leaves the process as one
JSON object per line on stdout (journald keeps it) and, if LOG_FILE_PATH is set, in that file.
The formatter itself redacts, so no handler or logger can bypass it: bearer tokens, JWTs,
API keys, passwords in URLs, `password=...`-style pairs, sensitive keys of structured extras,
and the literal values of this deployment's secrets never reach a log line.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import json
import logging
import logging.handlers
import os
import re
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sanic import Request, Sanic
from sanic.response import BaseHTTPResponse

from app.config import Settings
from app.ops.clientip import client_ip

REQUEST_ID_HEADER = "X-Request-ID"
REDACTED = "[REDACTED]"

# A client-supplied request id is kept only if it is short and plain, so it can neither
# forge log structure nor smuggle data into logs; anything else gets a fresh id.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None)

access_log = logging.getLogger("app.access")

# Probes and scrapes arrive every few seconds from load balancers, systemd and Prometheus:
# their successful answers are logged at DEBUG so they don't drown the real traffic (and
# cost nothing at the usual INFO level); failed ones are logged like any other request.
QUIET_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})

SANIC_LOGGERS = ("sanic.root", "sanic.error", "sanic.access", "sanic.server",
                 "sanic.websockets")

_SENSITIVE_KEY = re.compile(
    r"(pass(word|wd)?|secret|token|api[_-]?key|authorization|cookie|credential|"
    r"private[_-]?key|session)", re.IGNORECASE)

# (pattern, replacement) applied to every string that reaches a log line.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer/Basic <credentials>
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 " + REDACTED),
    # JSON Web Tokens anywhere (header.payload.signature, base64url)
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"), REDACTED),
    # OpenAI-style API keys
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), "sk-" + REDACTED),
    # user:password@ in URLs
    (re.compile(r"(://[^:/@\s]*):[^@\s/]+@"), r"\1:" + REDACTED + "@"),
    # key=value / key: value / "key": "value" for sensitive keys
    (re.compile(
        r"""(?ix)
        (\b[\w\-]*(?:pass(?:word|wd)?|secret|token|api[_-]?key|authorization|cookie)[\w\-]*
         ["']?\s*[:=]\s*["']?)
        (?!\[REDACTED|(?:bearer|basic)\s|[\d.]+(?:[\s"'&,;}]|$))([^\s"'&,;}]+)"""),
     r"\1" + REDACTED),
)

# One cheap scan decides whether the patterns above need to run at all: most log strings
# (paths, ids, methods) contain none of these, and logging sits on every request's path.
_MAYBE_SENSITIVE = re.compile(
    r"(?i)bearer|basic|eyJ|sk-|://|pass|secret|token|api[_-]?key|authorization|cookie")

_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)

_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName"}


class Redactor:
    """Masks secrets in strings and structured values."""

    def __init__(self, secret_values: Iterable[str] = ()) -> None:
        # Only values long enough to be secrets: masking "a" would mangle every line.
        self.secret_values = sorted({v for v in secret_values if v and len(v) >= 8},
                                    key=len, reverse=True)

    def text(self, value: str) -> str:
        for secret in self.secret_values:
            if secret in value:
                value = value.replace(secret, REDACTED)
        if not _MAYBE_SENSITIVE.search(value):
            return value
        for pattern, replacement in _PATTERNS:
            value = pattern.sub(replacement, value)
        return value

    def value(self, value: Any, key: str = "") -> Any:
        if isinstance(value, int | float | bool) or value is None:
            return value  # numbers under sensitive keys (token counts) are harmless
        if value and key and _is_sensitive_key(key):
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {str(k): self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        return self.text(str(value))


@functools.lru_cache(maxsize=1024)
def _is_sensitive_key(key: str) -> bool:
    return _SENSITIVE_KEY.search(key) is not None


def secret_values_of(settings: Settings) -> list[str]:
    """The literal secrets of this deployment, including passwords inside URLs."""
    values = [settings.jwt_secret, settings.google_client_secret, settings.openai_api_key,
              settings.google_token_encryption_key]
    for url in (settings.database_url, settings.redis_url):
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            values.append(password)
    return values


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, pid, request_id, extras, exc."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        try:
            message = record.getMessage()
        except Exception:  # a bad %-format must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": self.redactor.text(message),
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key in entry or key.startswith("_"):
                continue
            entry[key] = self.redactor.value(value, key)
        if record.exc_info:
            entry["exc"] = self.redactor.text(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = self.redactor.text(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.redactor.text(self.formatStack(record.stack_info))
        return _ENCODER.encode(entry)


def _tag(handler: logging.Handler) -> logging.Handler:
    handler._assistantapp = True  # type: ignore[attr-defined]
    return handler


def configure_logging(settings: Settings) -> list[logging.Handler]:
    """Install the JSON handlers on the root logger (idempotent: replaces earlier ones)."""
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    formatter = JsonFormatter(Redactor(secret_values_of(settings)))
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_assistantapp", False):
            root.removeHandler(handler)
            handler.close()

    handlers: list[logging.Handler] = [_tag(logging.StreamHandler(sys.stdout))]
    file_error: str | None = None
    if settings.log_file_path:
        try:
            Path(settings.log_file_path).parent.mkdir(parents=True, exist_ok=True)
            # Watched: logrotate may move the file; the handler reopens it.
            handlers.append(_tag(logging.handlers.WatchedFileHandler(
                settings.log_file_path, encoding="utf-8")))
        except OSError as exc:
            file_error = f"cannot open LOG_FILE_PATH {settings.log_file_path}: {exc}"
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)

    # Sanic's loggers get their own console handlers from Sanic(); drop them so their
    # records propagate to the root logger and come out as JSON like everything else.
    for name in SANIC_LOGGERS:
        sanic_logger = logging.getLogger(name)
        for handler in list(sanic_logger.handlers):
            sanic_logger.removeHandler(handler)
        sanic_logger.setLevel(level)
        sanic_logger.propagate = True
    if file_error:
        logging.getLogger(__name__).warning("%s; logging to stdout only", file_error)
    return handlers


def _safe_client_ip(request: Request) -> str | None:
    # A response middleware that raises would skip the others (security headers): never.
    try:
        return client_ip(request)
    except Exception:
        return None


class RequestIdSource:
    """Request ids: a random 64-bit prefix per process plus a 64-bit counter (32 hex chars).

    Unique across workers and hosts (each process draws its own prefix, again after a fork)
    at a fraction of uuid4's cost (one os.urandom syscall per process instead of one per
    request; uuid4 cost ~10 us per request on a loaded host). Ids need not be unguessable:
    they correlate log lines, they authorize nothing.
    """

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(1)

    def next_id(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_request_ids = RequestIdSource()
new_request_id = _request_ids.next_id


def request_id_from(header_value: str | None) -> str:
    if header_value and _SANE_REQUEST_ID.match(header_value):
        return header_value
    return new_request_id()


def setup_logging(app: Sanic, settings: Settings) -> None:
    configure_logging(settings)
    # Our access line (with request id, client IP and duration) replaces Sanic's.
    app.config.ACCESS_LOG = False
    perf_counter = time.perf_counter
    is_enabled_for = access_log.isEnabledFor
    set_request_id = request_id_var.set

    # Plain (not async) middleware: Sanic awaits only what is awaitable, so this saves a
    # coroutine per request and middleware on every response.
    def assign_request_id(request: Request) -> None:
        header_value = request.headers.get(REQUEST_ID_HEADER)
        request_id = (header_value if header_value and _SANE_REQUEST_ID.match(header_value)
                      else new_request_id())
        ctx = request.ctx
        ctx.request_id = request_id
        ctx.started_at = perf_counter()
        set_request_id(request_id)

    def log_and_tag_response(request: Request, response: BaseHTTPResponse) -> None:
        ctx = request.ctx
        request_id = getattr(ctx, "request_id", None)
        if request_id is None:  # request middleware did not run (e.g. a malformed request)
            request_id = ctx.request_id = new_request_id()
        response.headers[REQUEST_ID_HEADER] = request_id
        status = response.status
        path = request.path
        if status >= 500:
            level = logging.ERROR
        elif status < 400 and path in QUIET_PATHS:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if not is_enabled_for(level):
            return
        started = getattr(ctx, "started_at", None)
        duration_ms = (round((perf_counter() - started) * 1000, 3)
                       if started is not None else None)
        access_log.log(level, "%s %s %s", request.method, path, status, extra={
            "request_id": request_id,
            "method": request.method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "client_ip": _safe_client_ip(request),
        })

    app.on_request(assign_request_id, priority=1000)
    app.on_response(log_and_tag_response, priority=-1000)
