"""JSON-lines logs: fields, levels, file output, request ids, and secret redaction."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sanic import Sanic

from app.config import Settings
from app.ops.logging import REDACTED, configure_logging, new_request_id
from tests.ops_app import drop_app, make_ops_app, ops_settings
from tests.servers import RedisServer

JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiIsInR5cGUiOiJhY2Nlc3MifQ."
       "c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if getattr(handler, "_assistantapp", False):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def settings_for(**env: str) -> Settings:
    return ops_settings(LOG_LEVEL="info", **env)


def test_one_json_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(settings_for())
    logging.getLogger("app.sample").info("hello %s", "world", extra={"user_id": 7})
    logging.getLogger("app.sample").warning("multi\nline")
    entries = json_lines(capsys.readouterr().out)
    assert len(entries) == 2
    first = entries[0]
    assert first["msg"] == "hello world"
    assert first["level"] == "info"
    assert first["logger"] == "app.sample"
    assert first["user_id"] == 7
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert isinstance(first["pid"], int)
    assert entries[1]["msg"] == "multi\nline"  # escaped inside the one line


def test_level_from_settings(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(ops_settings(LOG_LEVEL="warning"))
    logging.getLogger("app.sample").info("quiet")
    logging.getLogger("app.sample").warning("loud")
    assert [e["msg"] for e in json_lines(capsys.readouterr().out)] == ["loud"]


def test_sanic_loggers_use_the_json_formatter(capsys: pytest.CaptureFixture[str]) -> None:
    Sanic.test_mode = True
    app = Sanic("logging_sanic_loggers")  # Sanic() installs its own console handlers...
    try:
        configure_logging(settings_for())  # ...which setup_logging replaces
        for name in ("sanic.root", "sanic.error", "sanic.access", "sanic.server"):
            logging.getLogger(name).error("from %s", name)
        entries = json_lines(capsys.readouterr().out)
        assert [e["logger"] for e in entries] == ["sanic.root", "sanic.error", "sanic.access",
                                                 "sanic.server"]
    finally:
        drop_app(app)


def test_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = tmp_path / "logs" / "app.log"
    configure_logging(settings_for(LOG_FILE_PATH=str(log_file)))
    logging.getLogger("app.sample").error("to both")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert json_lines(log_file.read_text())[0]["msg"] == "to both"
    assert json_lines(capsys.readouterr().out)[0]["msg"] == "to both"


def test_unwritable_log_file_does_not_crash(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    configure_logging(settings_for(LOG_FILE_PATH=str(blocker / "app.log")))
    entries = json_lines(capsys.readouterr().out)
    assert any("cannot open LOG_FILE_PATH" in e["msg"] for e in entries)


def test_secrets_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(DATABASE_URL="postgres://app:db-password-123@db:5432/app")
    configure_logging(settings)
    log = logging.getLogger("app.sample")
    log.info("calling API with Authorization: Bearer %s and secret %s", JWT, settings.jwt_secret)
    log.info("key %s, url postgres://app:db-password-123@db:5432/app, password=hunter2 "
             "{\"refresh_token\": \"abc123def\"}", settings.openai_api_key)
    log.info("request", extra={"headers": {"Authorization": f"Bearer {JWT}",
                                           "Content-Type": "application/json"},
                               "password": "hunter2", "client_secret": "cs-123456",
                               "note": f"token {JWT}"})
    try:
        raise ValueError(f"bad token {JWT} with secret {settings.jwt_secret}")
    except ValueError:
        log.exception("failed")
    output = capsys.readouterr().out
    for secret in (JWT, settings.jwt_secret, settings.openai_api_key, "db-password-123",
                   "hunter2", "abc123def", "cs-123456", "sk-test"):
        assert secret not in output, secret
    entries = json_lines(output)
    assert entries[0]["msg"] == (f"calling API with Authorization: Bearer {REDACTED} "
                                 f"and secret {REDACTED}")
    assert "postgres://app:" + REDACTED + "@db:5432/app" in entries[1]["msg"]
    assert entries[2]["headers"] == {"Authorization": REDACTED,
                                     "Content-Type": "application/json"}
    assert entries[2]["password"] == REDACTED
    assert entries[3]["exc"].startswith("Traceback")
    assert "ValueError: bad token" in entries[3]["exc"]


def test_token_counts_are_not_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(settings_for())
    logging.getLogger("app.sample").info("usage prompt_tokens=120 total_tokens: 180",
                                         extra={"completion_tokens": 60})
    entry = json_lines(capsys.readouterr().out)[0]
    assert entry["msg"] == "usage prompt_tokens=120 total_tokens: 180"
    assert entry["completion_tokens"] == 60


@pytest.fixture
def app(redis_server: RedisServer) -> Iterator[Sanic]:
    application = make_ops_app(settings_for(REDIS_URL=redis_server.url(),
                                            RATE_LIMIT_MAX_REQUESTS="100000"))
    yield application
    drop_app(application)


def log_to_captured_stdout(app: Sanic) -> None:
    # pytest swaps sys.stdout between fixture setup and the test body; the JSON handler
    # binds to the stdout of the moment, so (re)install it inside the test.
    configure_logging(app.config.SETTINGS)


async def test_request_id_generated_and_logged(app: Sanic,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    log_to_captured_stdout(app)
    _, response = await app.asgi_client.get(
        "/api/data", headers={"Authorization": f"Bearer {JWT}"})
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    entries = json_lines(capsys.readouterr().out)
    access = [e for e in entries if e["logger"] == "app.access"]
    assert len(access) == 1
    line = access[0]
    assert line["request_id"] == request_id
    assert line["method"] == "GET"
    assert line["path"] == "/api/data"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    # Lines logged by the handler carry the same id, and no header leaks the token.
    handler_lines = [e for e in entries if e["logger"] == "app.tests.route"]
    assert handler_lines[0]["request_id"] == request_id
    assert handler_lines[0]["headers"]["authorization"] == REDACTED
    assert JWT not in json.dumps(entries)


async def test_sane_incoming_request_id_is_kept(app: Sanic) -> None:
    _, response = await app.asgi_client.get("/api/data",
                                            headers={"X-Request-ID": "edge-4711.abc:1"})
    assert response.headers["x-request-id"] == "edge-4711.abc:1"


@pytest.mark.parametrize("bad_id", ["x" * 200, "has space", "quote\"d", "{json}", "-lead"])
async def test_insane_incoming_request_id_is_replaced(app: Sanic, bad_id: str) -> None:
    _, response = await app.asgi_client.get("/api/data", headers={"X-Request-ID": bad_id})
    request_id = response.headers["x-request-id"]
    assert request_id != bad_id
    assert len(request_id) == 32


async def test_request_id_on_error_and_refused_responses(app: Sanic,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    log_to_captured_stdout(app)
    _, crash = await app.asgi_client.get("/api/boom")
    _, refused = await app.asgi_client.get("/api/data",
                                           headers={"Origin": "https://evil.example"})
    assert crash.status == 500 and crash.headers["x-request-id"]
    assert refused.status == 403 and refused.headers["x-request-id"]
    entries = json_lines(capsys.readouterr().out)
    access = {e["status"]: e for e in entries if e["logger"] == "app.access"}
    assert access[500]["level"] == "error"
    assert access[500]["request_id"] == crash.headers["x-request-id"]
    assert access[403]["request_id"] == refused.headers["x-request-id"]
    errors = [e for e in entries if e["logger"] == "sanic.error"]
    assert errors and errors[0]["request_id"] == crash.headers["x-request-id"]
    assert "RuntimeError: boom" in errors[0]["exc"]


async def test_successful_probes_are_quiet_at_info(app: Sanic,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    log_to_captured_stdout(app)
    for path in ("/health/live", "/health/ready", "/metrics"):
        _, response = await app.asgi_client.get(path)
        assert response.status == 200
        assert response.headers["x-request-id"]
    _, response = await app.asgi_client.get("/api/data")
    access = [e for e in json_lines(capsys.readouterr().out) if e["logger"] == "app.access"]
    assert [e["path"] for e in access] == ["/api/data"]


async def test_probes_are_logged_at_debug(redis_server: RedisServer,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    app = make_ops_app(ops_settings(REDIS_URL=redis_server.url(), LOG_LEVEL="debug"))
    try:
        log_to_captured_stdout(app)
        await app.asgi_client.get("/health/live")
        access = [e for e in json_lines(capsys.readouterr().out) if e["logger"] == "app.access"]
        assert [(e["path"], e["level"]) for e in access] == [("/health/live", "debug")]
    finally:
        drop_app(app)


def test_request_ids_are_unique_32_hex_and_differ_after_fork() -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a new worker process must draw its own prefix
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child_id) == 32
    assert child_id[:16] != ids[0][:16]
    assert child_id not in ids
