"""Database: aerich migrations up and down on a populated PostgreSQL database, the
`db` command line, models in sync with migrations, and the app surviving a database outage."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aerich import Command
from tortoise import Tortoise
from tortoise.context import TortoiseContext

from app.auth.tokens import create_access_token
from app.config import load_settings
from app.db import APP_LABEL, MIGRATIONS_DIR, migrate, ping_database, tortoise_config
from app.db import cli as db_cli
from tests.conftest import VALID_ENV, replace_settings
from tests.servers import PostgresServer, free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = migrate.available_versions()
INIT, HEAD = VERSIONS[0], VERSIONS[-1]


def test_at_least_two_migrations_ship_with_the_code() -> None:
    assert len(VERSIONS) >= 2
    assert INIT.startswith("0_") and INIT.endswith("_init")
    for version in VERSIONS:
        assert (MIGRATIONS_DIR / APP_LABEL / f"{version}.py").is_file()


# --- the command line -------------------------------------------------------------------

def run_cli(args: list[str], env: dict[str, str], cwd: Path,
            module: str = "app.db.cli") -> subprocess.CompletedProcess[str]:
    """The CLI as operators run it: a separate process, environment only."""
    clean = {k: v for k, v in os.environ.items()
             if k not in VALID_ENV and k != "DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", *module.split(), *args], cwd=cwd,
                          env={**clean, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=120)


async def cli(args: list[str], monkeypatch: pytest.MonkeyPatch, database_url: str,
              capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The CLI in-process (in a thread: it runs its own event loop)."""
    for key, value in {**VALID_ENV, "DATABASE_URL": database_url}.items():
        monkeypatch.setenv(key, value)
    code = await asyncio.to_thread(db_cli.main, args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout
    return tmp_path


async def test_current_history_upgrade_on_a_fresh_database(
        database_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], in_tmp_cwd: Path) -> None:
    assert await cli(["current"], monkeypatch, database_url, capsys) == (0, "base\n", "")
    code, out, _ = await cli(["history"], monkeypatch, database_url, capsys)
    assert code == 0
    assert out.splitlines() == [f"{v}\tpending" for v in VERSIONS]

    code, out, err = await cli(["upgrade"], monkeypatch, database_url, capsys)
    assert code == 0, err
    assert out.splitlines() == [*(f"Applied {v}" for v in VERSIONS), f"Database is at {HEAD}"]

    assert await cli(["current"], monkeypatch, database_url, capsys) == (0, f"{HEAD}\n", "")
    code, out, _ = await cli(["history"], monkeypatch, database_url, capsys)
    assert out.splitlines() == [f"{v}\tapplied" for v in VERSIONS]
    code, out, _ = await cli(["upgrade"], monkeypatch, database_url, capsys)
    assert (code, out) == (0, f"Already up to date at {HEAD}\n")


async def test_downgrade_to_a_version_then_back(
        database_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], in_tmp_cwd: Path) -> None:
    await migrate.upgrade(database_url)
    code, out, err = await cli(["downgrade", "--to", INIT], monkeypatch, database_url, capsys)
    assert code == 0, err
    assert out.splitlines()[-1] == f"Database is at {INIT}"
    assert [line.removeprefix("Reverted ") for line in out.splitlines()[:-1]] == \
        list(reversed(VERSIONS[1:]))
    assert await cli(["current"], monkeypatch, database_url, capsys) == (0, f"{INIT}\n", "")
    # Already there: nothing to do, still success (the deployment may retry a rollback).
    code, out, _ = await cli(["downgrade", "--to", f"{INIT}.py"], monkeypatch, database_url,
                             capsys)
    assert (code, out) == (0, f"Already at {INIT}\n")
    code, out, _ = await cli(["upgrade"], monkeypatch, database_url, capsys)
    assert code == 0 and out.splitlines()[-1] == f"Database is at {HEAD}"


@pytest.mark.parametrize("target", ["99", "7_20200101000000_nope", "latest", ""])
async def test_downgrade_to_an_unknown_version_is_a_clear_error(
        target: str, database_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], in_tmp_cwd: Path) -> None:
    await migrate.upgrade(database_url)
    code, _, err = await cli(["downgrade", "--to", target], monkeypatch, database_url, capsys)
    assert code == 1
    assert "Unknown migration version" in err and "Traceback" not in err
    assert HEAD in err  # lists what is known
    assert await migrate.current(database_url) == HEAD  # nothing was touched


async def test_downgrade_to_a_version_that_is_not_applied(
        database_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], in_tmp_cwd: Path) -> None:
    await migrate.upgrade(database_url)
    await migrate.downgrade_to(database_url, INIT)
    code, _, err = await cli(["downgrade", "--to", HEAD], monkeypatch, database_url, capsys)
    assert code == 1 and "is not applied" in err and "Traceback" not in err


async def test_downgrade_refuses_versions_this_code_does_not_ship(
        postgres: PostgresServer, database_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], in_tmp_cwd: Path) -> None:
    """Older code cannot undo a newer release's migration (its downgrade lives there)."""
    await migrate.upgrade(database_url)
    future = "9_20991231000000_from_a_newer_release"
    postgres.psql(f"INSERT INTO aerich (version, app, content) VALUES ('{future}.py', "
                  f"'{APP_LABEL}', '{{}}')", database=database_url.rsplit("/", 1)[1])
    assert await cli(["current"], monkeypatch, database_url, capsys) == (0, f"{future}\n", "")
    code, _, err = await cli(["downgrade", "--to", INIT], monkeypatch, database_url, capsys)
    assert code == 1 and "does not ship" in err and future in err
    assert await migrate.current(database_url) == future  # untouched


def test_database_down_is_a_clear_error_without_traceback(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgres://assistantapp:s3cret-pass@127.0.0.1:{port}/assistantapp"
    result = run_cli(["current"], {**VALID_ENV, "DATABASE_URL": url}, tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"Cannot connect to the database 127.0.0.1:{port}/assistantapp" in result.stderr
    assert "Traceback" not in result.stderr and "s3cret-pass" not in result.stderr


@pytest.mark.parametrize("command", [["upgrade"], ["history"], ["downgrade", "--to", "0"]])
async def test_every_command_reports_the_database_down(
        command: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], in_tmp_cwd: Path) -> None:
    url = f"postgres://assistantapp:s3cret-pass@127.0.0.1:{free_port()}/assistantapp"
    code, out, err = await cli(command, monkeypatch, url, capsys)
    assert code == 2 and out == ""
    assert err.startswith("Error: Cannot connect to the database") and "s3cret" not in err


def test_invalid_configuration_exits_1_with_the_list(tmp_path: Path) -> None:
    env = {k: v for k, v in VALID_ENV.items() if k != "JWT_SECRET"}
    result = run_cli(["current"], {**env, "PORT": "abc"}, tmp_path)
    assert result.returncode == 1
    assert "Required environment variable JWT_SECRET is not set" in result.stderr
    assert "PORT" in result.stderr and "Traceback" not in result.stderr


async def test_config_problems_in_process(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str],
                                          in_tmp_cwd: Path) -> None:
    code, _, err = await cli(["current", "--env-file", "missing.env"], monkeypatch,
                             "postgres://x@127.0.0.1/x", capsys)
    assert code == 1 and "Env file not found: missing.env" in err
    monkeypatch.setenv("JWT_SECRET", "short")
    code = await asyncio.to_thread(db_cli.main, ["current"])
    err = capsys.readouterr().err
    assert code == 1 and "JWT_SECRET must be at least 32 characters long" in err


def test_missing_env_file_is_an_error(tmp_path: Path) -> None:
    result = run_cli(["current", "--env-file", str(tmp_path / "nope.env")], VALID_ENV,
                     tmp_path)
    assert result.returncode == 1 and "Env file not found" in result.stderr


def test_settings_come_from_the_env_file(database_url: str, tmp_path: Path) -> None:
    env_file = tmp_path / "shared.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in
                                {**VALID_ENV, "DATABASE_URL": database_url}.items()))
    result = run_cli(["upgrade", "--env-file", str(env_file)], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    # `--env-file` may also come before the command; default is ./.env
    result = run_cli(["--env-file", str(env_file), "current"], {}, tmp_path)
    assert (result.returncode, result.stdout) == (0, f"{HEAD}\n")
    shutil.copy(env_file, tmp_path / ".env")
    result = run_cli(["current"], {}, tmp_path)
    assert (result.returncode, result.stdout) == (0, f"{HEAD}\n")


def test_python_m_app_db_dispatches_here(migrated_database_url: str, tmp_path: Path) -> None:
    result = run_cli(["db", "current"], {**VALID_ENV, "DATABASE_URL": migrated_database_url},
                     tmp_path, module="app")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{HEAD}\n", "")


# --- migrations on a populated database ----------------------------------------------------

POPULATE = """
INSERT INTO users (id, email, name, picture, google_sub, google_access_token_enc,
                   google_scopes, created_at, updated_at, last_login_at) VALUES
  (1, 'ada@example.com', 'Ada', 'https://p/1', 'g-1', 'enc:abc', 'openid email',
   '2026-01-01T10:00:00Z', '2026-01-02T10:00:00Z', '2026-01-03T10:00:00Z'),
  (2, 'bob@example.com', 'Bob', '', NULL, NULL, '', '2026-02-01T10:00:00Z',
   '2026-02-01T10:00:00Z', NULL);
INSERT INTO conversations (id, user_id, title, agent, created_at, updated_at) VALUES
  ('11111111-1111-1111-1111-111111111111', 1, 'Inbox', 'email',
   '2026-01-05T10:00:00Z', '2026-01-06T10:00:00Z');
INSERT INTO messages (conversation_id, role, content, tool_calls, tool_call_id, status,
                      created_at, agent) VALUES
  ('11111111-1111-1111-1111-111111111111', 'user', 'Summarise my mail', NULL, NULL,
   'complete', '2026-01-05T10:00:00Z', NULL),
  ('11111111-1111-1111-1111-111111111111', 'assistant', '',
   '[{"id": "c1", "type": "function", "function": {"name": "list_emails"}}]', NULL,
   'complete', '2026-01-05T10:00:01Z', 'email'),
  ('11111111-1111-1111-1111-111111111111', 'tool', '{"emails": []}', NULL, 'c1',
   'complete', '2026-01-05T10:00:02Z', 'email');
INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at, used_at, created_at)
VALUES (1, '22222222-2222-2222-2222-222222222222', repeat('a', 64), '2026-12-01T00:00:00Z',
        NULL, '2026-01-01T10:00:00Z');
"""

SNAPSHOT = {
    "users": "SELECT id, email, name, picture, google_sub, google_access_token_enc, "
             "google_scopes, created_at, updated_at FROM users ORDER BY id",
    "conversations": "SELECT * FROM conversations ORDER BY id",
    "messages": "SELECT * FROM messages ORDER BY id",
    "refresh_tokens": "SELECT * FROM refresh_tokens ORDER BY id",
}


def _snapshot(postgres: PostgresServer, db: str) -> dict[str, str]:
    return {table: postgres.psql(sql, database=db) for table, sql in SNAPSHOT.items()}


def _columns(postgres: PostgresServer, db: str, table: str) -> set[str]:
    sql = f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'"
    return set(postgres.psql(sql, database=db).split())


def _indexes(postgres: PostgresServer, db: str) -> set[str]:
    return set(postgres.psql("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'",
                             database=db).split())


def _tables(postgres: PostgresServer, db: str) -> set[str]:
    return set(postgres.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                             database=db).split())


async def test_migrations_down_and_up_keep_data_on_a_populated_database(
        postgres: PostgresServer, database_url: str) -> None:
    db = database_url.rsplit("/", 1)[1]
    assert await migrate.upgrade(database_url) == VERSIONS
    postgres.psql(POPULATE, database=db)
    before = _snapshot(postgres, db)
    assert all(before.values())
    assert "last_login_at" in _columns(postgres, db, "users")
    assert {"idx_conversations_user_recent", "idx_messages_conversation_created"} <= \
        _indexes(postgres, db)

    assert await migrate.downgrade_to(database_url, INIT) == list(reversed(VERSIONS[1:]))
    assert await migrate.current(database_url) == INIT
    assert "last_login_at" not in _columns(postgres, db, "users")
    assert not {"idx_conversations_user_recent", "idx_messages_conversation_created"} & \
        _indexes(postgres, db)
    assert _snapshot(postgres, db) == before  # the old code's view of the data is intact

    assert await migrate.upgrade(database_url) == VERSIONS[1:]
    assert await migrate.current(database_url) == HEAD
    assert "last_login_at" in _columns(postgres, db, "users")
    assert {"idx_conversations_user_recent", "idx_messages_conversation_created"} <= \
        _indexes(postgres, db)
    assert _snapshot(postgres, db) == before
    # The app's models work on the re-upgraded schema, including the re-added column.
    with TortoiseContext():
        await Tortoise.init(config=tortoise_config(database_url))
        try:
            from app.db.models import Message, User

            ada = await User.get(email="ada@example.com")
            assert ada.last_login_at is None  # dropped with the column, re-added empty
            tool_call = await Message.get(role="assistant")
            assert tool_call.tool_calls[0]["function"]["name"] == "list_emails"
        finally:
            await Tortoise.close_connections()


async def test_downgrade_to_base_and_upgrade_again(postgres: PostgresServer,
                                                   database_url: str) -> None:
    db = database_url.rsplit("/", 1)[1]
    await migrate.upgrade(database_url)
    postgres.psql(POPULATE, database=db)
    assert await migrate.downgrade_to(database_url, "base") == list(reversed(VERSIONS))
    assert _tables(postgres, db) == {"aerich"}
    assert await migrate.current(database_url) == "base"
    assert await migrate.upgrade(database_url) == VERSIONS
    assert {"users", "conversations", "messages", "refresh_tokens"} <= _tables(postgres, db)


async def test_models_match_the_migrations(migrated_database_url: str,
                                           tmp_path: Path) -> None:
    """A model change without a migration fails here: aerich finds nothing to generate."""
    location = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, location)
    with TortoiseContext():
        command = Command(tortoise_config(migrated_database_url), app=APP_LABEL,
                          location=str(location))
        try:
            await command.init()
            generated = await command.migrate("drift_check", no_input=True)
        finally:
            await Tortoise.close_connections()
    assert not generated, f"models differ from the migrations: aerich generated {generated}"
    assert sorted(p.stem for p in (location / APP_LABEL).glob("[0-9]*_*.py")) == VERSIONS


# --- the app and a database outage ------------------------------------------------------

async def test_ping_database(migrated_database_url: str) -> None:
    with TortoiseContext():
        await Tortoise.init(config=tortoise_config(migrated_database_url))
        try:
            await ping_database()
        finally:
            await Tortoise.close_connections()
    with TortoiseContext():
        await Tortoise.init(config=tortoise_config(
            f"postgres://u:p@127.0.0.1:{free_port()}/nothing"))
        try:
            with pytest.raises((OSError, ConnectionError, Exception)):
                await ping_database(within_s=5)
        finally:
            await Tortoise.close_connections()


def test_tortoise_config() -> None:
    config = tortoise_config("postgresql://u:p@db.internal:5433/app")
    assert config["connections"]["default"] == "postgres://u:p@db.internal:5433/app?timeout=5"
    assert config["apps"]["models"]["models"] == ["app.db.models", "aerich.models"]
    own = tortoise_config("postgres://u:p@h/app?timeout=2&ssl=require")["connections"]
    assert own["default"] == "postgres://u:p@h/app?timeout=2&ssl=require"
    other = tortoise_config("postgres://u:p@h/app?ssl=require")["connections"]
    assert other["default"] == "postgres://u:p@h/app?ssl=require&timeout=5"


async def test_requests_get_503_while_database_is_unreachable(
        app_settings: Any, make_app: Any, auth_headers: Any) -> None:
    dead = f"postgres://assistantapp:pw@127.0.0.1:{free_port()}/assistantapp"
    app = make_app(replace_settings(app_settings, database_url=dead))
    _, response = await app.asgi_client.get("/api/me", headers=auth_headers(1))
    assert response.status == 503
    assert response.json == {"error": "Database temporarily unavailable, please retry",
                             "code": "database_unavailable"}
    assert response.headers["retry-after"] == "5"


async def test_a_silent_database_fails_fast_with_503(
        app_settings: Any, make_app: Any, auth_headers: Any) -> None:
    """A host that accepts TCP but never answers (partitioned network, hung server): the
    connect timeout answers 503 in seconds instead of holding the request for a minute."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        silent = f"postgres://assistantapp:pw@127.0.0.1:{port}/assistantapp?timeout=1"
        app = make_app(replace_settings(app_settings, database_url=silent))
        started = time.monotonic()
        _, response = await app.asgi_client.get("/api/me", headers=auth_headers(1))
        assert response.status == 503 and response.json["code"] == "database_unavailable"
        assert time.monotonic() - started < 15
    finally:
        listener.close()


async def test_other_timeouts_are_not_blamed_on_the_database(
        app_settings: Any, make_app: Any) -> None:
    app = make_app(app_settings)

    async def slow_partner(request: Any) -> Any:
        raise TimeoutError("the partner API did not answer")

    app.add_route(slow_partner, "/test/partner-timeout", name="test_partner_timeout")
    _, response = await app.asgi_client.get("/test/partner-timeout")
    assert response.status == 500
    assert "database" not in response.text.lower()


class AppProcess:
    """`sanic app:create_app --factory`, as production runs it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="aa-db-test-", suffix=".log")[1])
        base = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANTAPP_")}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("sanic")), "app:create_app", "--factory",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                cwd=ROOT, env={**base, **env}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10, **kwargs)

    def wait_serving(self, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"app exited:\n{self.log.read_text()[-3000:]}")
            try:
                self.get("/no-such-page")
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"app did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_process_group(self.proc)
        self.log.unlink(missing_ok=True)


@pytest.fixture
def outage_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().init()  # its own: this test stops and starts it
    server.start()
    yield server
    server.destroy()


@pytest.mark.slow
async def test_app_starts_without_database_and_reconnects(
        outage_postgres: PostgresServer, redis_server: Any) -> None:
    url = outage_postgres.create_database("outage")
    await migrate.upgrade(url)
    outage_postgres.psql("INSERT INTO users (email, name, picture, google_scopes, created_at, "
                         "updated_at) VALUES ('o@example.com', 'O', '', '', now(), now())",
                         database="outage")
    env = {**VALID_ENV, "DATABASE_URL": url, "REDIS_URL": redis_server.url(),
           "RATE_LIMIT_MAX_REQUESTS": "100000", "HEALTH_CHECK_INTERVAL": "600000"}
    settings = load_settings(env, env_file=None)
    headers = {"Authorization": f"Bearer {create_access_token(1, settings)}"}

    outage_postgres.stop()
    app = AppProcess(env)
    try:
        app.wait_serving()  # started although PostgreSQL is down
        response = await asyncio.to_thread(app.get, "/api/me", headers=headers)
        assert response.status_code == 503
        assert response.json()["code"] == "database_unavailable"
        assert response.headers["retry-after"]

        outage_postgres.start()
        statuses = await asyncio.to_thread(_statuses_until_ok, app, headers)
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}

        # A restart under a live pool: stale connections are replaced, never a 500.
        outage_postgres.stop()
        response = await asyncio.to_thread(app.get, "/api/me", headers=headers)
        assert response.status_code == 503
        outage_postgres.start()
        statuses = await asyncio.to_thread(_statuses_until_ok, app, headers)
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}
        assert (await asyncio.to_thread(app.get, "/api/me", headers=headers)).json()["email"] \
            == "o@example.com"
    finally:
        app.stop()


def _statuses_until_ok(app: AppProcess, headers: dict[str, str],
                       timeout: float = 20) -> list[int]:
    statuses: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses.append(app.get("/api/me", headers=headers).status_code)
        if statuses[-1] == 200:
            break
        time.sleep(0.2)
    return statuses
