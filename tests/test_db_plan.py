"""`python -m app db plan` (what an upgrade would do, and whether it is destructive) and
`python -m app db smoke` (does this code's ORM still work on the database's schema)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.db import APP_LABEL, MIGRATIONS_DIR, migrate, smoke
from tests.conftest import VALID_ENV
from tests.servers import PostgresServer, free_port
from tests.test_db import cli, run_cli

VERSIONS = migrate.available_versions()
HEAD = VERSIONS[-1]
AddMigration = Callable[[str, str], str]


@pytest.fixture
def in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env from the developer's checkout
    return tmp_path


def _db(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def _plan(monkeypatch: pytest.MonkeyPatch, database_url: str,
                capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = await cli(["plan"], monkeypatch, database_url, capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 1 and err == ""  # the deployment parses the one line
    result: dict[str, Any] = json.loads(out)
    assert list(result) == ["current", "target", "pending", "destructive", "unknown_head"]
    return result


# --- the destructive-SQL classifier --------------------------------------------------------

@pytest.mark.parametrize(("sql", "expected"), [
    ('ALTER TABLE "user" DROP COLUMN "x"', ['ALTER TABLE "user" DROP COLUMN "x"']),
    ("alter table users drop column if exists x;", ["alter table users drop column if exists x"]),
    ('ALTER TABLE "users" DROP "x"', ['ALTER TABLE "users" DROP "x"']),  # COLUMN is optional
    ('DROP TABLE IF EXISTS "draft_proposals" CASCADE;',
     ['DROP TABLE IF EXISTS "draft_proposals" CASCADE']),
    ("drop table messages", ["drop table messages"]),
    ('ALTER TABLE "users" RENAME COLUMN "name" TO "full_name"',
     ['ALTER TABLE "users" RENAME COLUMN "name" TO "full_name"']),
    ('ALTER TABLE "users" RENAME "name" TO "full_name"',
     ['ALTER TABLE "users" RENAME "name" TO "full_name"']),
    ('ALTER TABLE "conversations" RENAME TO "chats"',
     ['ALTER TABLE "conversations" RENAME TO "chats"']),
    ('ALTER TABLE "messages" ALTER COLUMN "agent" TYPE VARCHAR(32)',
     ['ALTER TABLE "messages" ALTER COLUMN "agent" TYPE VARCHAR(32)']),
    ('alter table only messages alter agent set data type text',
     ["alter table only messages alter agent set data type text"]),
    # One destructive action among additive ones still counts.
    ('ALTER TABLE "users" ADD "a" INT, DROP COLUMN "b"',
     ['ALTER TABLE "users" ADD "a" INT, DROP COLUMN "b"']),
    # Statements are reported with comments stripped and whitespace collapsed.
    ('-- remove the old flag\nALTER TABLE "users"\n    DROP COLUMN "flag"; /* done */',
     ['ALTER TABLE "users" DROP COLUMN "flag"']),
    ('DO $$ BEGIN IF true THEN ALTER TABLE "users" DROP COLUMN "x"; END IF; END $$',
     ['DO $$ BEGIN IF true THEN ALTER TABLE "users" DROP COLUMN "x"; END IF; END $$']),
    # Not destructive:
    ('ALTER TABLE "users" ADD "last_login_at" TIMESTAMPTZ', []),
    ('CREATE INDEX IF NOT EXISTS "idx" ON "messages" ("conversation_id", "created_at")', []),
    ('CREATE TABLE IF NOT EXISTS "t" ("id" SERIAL NOT NULL PRIMARY KEY)', []),
    ('ALTER TABLE "users" DROP CONSTRAINT IF EXISTS "fk_users_x"', []),
    ('ALTER TABLE "users" RENAME CONSTRAINT "a" TO "b"', []),
    ('DROP INDEX IF EXISTS "idx_conversations_user_recent"', []),
    ('ALTER TABLE "users" ALTER COLUMN "name" DROP NOT NULL', []),
    ('ALTER TABLE "users" ALTER COLUMN "name" SET DEFAULT \'\'', []),
    ('ALTER TABLE "users" ALTER COLUMN "name" DROP DEFAULT', []),
    ('ALTER INDEX "idx_a" RENAME TO "idx_b"', []),
    ('ALTER TABLE "users" ADD "amount" NUMERIC(10, 2) DEFAULT 0', []),
    # Inside comments, string literals and quoted names nothing matches.
    ("-- DROP TABLE users\nCREATE INDEX a ON b (c)", []),
    ("/* ALTER TABLE users DROP COLUMN x; /* nested */ */ SELECT 1", []),
    ("COMMENT ON COLUMN \"users\".\"name\" IS 'drop table users; rename to x'", []),
    ("COMMENT ON COLUMN \"a\".\"b\" IS E'it\\'s; DROP TABLE x'", []),
    ('ALTER TABLE "drop table" ADD "drop column" INT', []),
    ("DO $$ BEGIN RAISE NOTICE 'drop table x'; END $$", []),
    ("", []),
])
def test_destructive_statements(sql: str, expected: list[str]) -> None:
    assert migrate.destructive_statements(sql) == expected


def test_reasons_are_shortened_to_200_characters() -> None:
    sql = 'ALTER TABLE "users" DROP COLUMN "x", ' + ", ".join(f'ADD "c{i}" INT'
                                                           for i in range(60))
    [reason] = migrate.destructive_statements(sql)
    assert len(reason) == 200 and reason.startswith('ALTER TABLE "users" DROP COLUMN "x"')
    assert reason.endswith("...")


async def test_shipped_migrations_are_additive() -> None:
    for version in VERSIONS:
        sql = await migrate.upgrade_sql(version)
        assert "CREATE" in sql or "ALTER" in sql  # really the upgrade SQL
        assert migrate.destructive_statements(sql) == [], version


# --- db plan --------------------------------------------------------------------------------

async def test_plan_on_a_fresh_database(database_url: str, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str],
                                        in_tmp_cwd: Path) -> None:
    assert await _plan(monkeypatch, database_url, capsys) == {
        "current": "base", "target": HEAD,
        "pending": [{"name": v, "destructive": False, "reasons": []} for v in VERSIONS],
        "destructive": False, "unknown_head": False,
    }
    assert await migrate.current(database_url) == "base"  # the plan changed nothing


async def test_plan_after_upgrade(migrated_database_url: str, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], in_tmp_cwd: Path) -> None:
    assert await _plan(monkeypatch, migrated_database_url, capsys) == {
        "current": HEAD, "target": HEAD, "pending": [], "destructive": False,
        "unknown_head": False,
    }


def _migration(upgrade_body: str) -> str:
    return ("from tortoise import BaseDBAsyncClient\n\nRUN_IN_TRANSACTION = True\n\n\n"
            f"async def upgrade(db: BaseDBAsyncClient) -> str:\n{upgrade_body}\n\n\n"
            "async def downgrade(db: BaseDBAsyncClient) -> str:\n    return \"SELECT 1;\"\n")


@pytest.fixture
def extra_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                     ) -> Iterator[Callable[[str, str], str]]:
    """`add(name, upgrade_body)`: a copy of the shipped migrations plus new ones, used as
    this code's migrations."""
    location = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, location)
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", location)

    def add(name: str, upgrade_body: str) -> str:
        (location / APP_LABEL / f"{name}.py").write_text(_migration(upgrade_body))
        return name

    yield add
    migrate.available_versions()  # aerich's Migrate back on the real migrations


ADDITIVE = '''    return """
        -- a new optional column and an index for it
        ALTER TABLE "users" ADD "locale" VARCHAR(16);
        CREATE INDEX IF NOT EXISTS "idx_users_locale" ON "users" ("locale");
        ALTER TABLE "users" DROP CONSTRAINT IF EXISTS "old_check";
        DROP INDEX IF EXISTS "idx_old";"""'''
DESTRUCTIVE = '''    return """
        /* the old flag is gone */
        alter table "user" drop column "x";
        CREATE INDEX IF NOT EXISTS "idx_y" ON "users" ("email");"""'''


async def test_plan_flags_a_pending_destructive_migration(
        migrated_database_url: str, extra_migrations: AddMigration,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], in_tmp_cwd: Path) -> None:
    additive = extra_migrations("3_20991230000000_add_locale", ADDITIVE)
    destructive = extra_migrations("4_20991231000000_drop_x", DESTRUCTIVE)
    assert await _plan(monkeypatch, migrated_database_url, capsys) == {
        "current": HEAD, "target": destructive,
        "pending": [{"name": additive, "destructive": False, "reasons": []},
                    {"name": destructive, "destructive": True,
                     "reasons": ['alter table "user" drop column "x"']}],
        "destructive": True, "unknown_head": False,
    }
    assert await migrate.current(migrated_database_url) == HEAD  # nothing was applied


async def test_plan_with_only_additive_migrations_pending(
        migrated_database_url: str, extra_migrations: AddMigration,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], in_tmp_cwd: Path) -> None:
    additive = extra_migrations("3_20991230000000_add_locale", ADDITIVE)
    plan = await _plan(monkeypatch, migrated_database_url, capsys)
    assert plan["pending"] == [{"name": additive, "destructive": False, "reasons": []}]
    assert (plan["target"], plan["destructive"]) == (additive, False)


async def test_plan_treats_an_unreadable_migration_as_destructive(
        migrated_database_url: str, extra_migrations: AddMigration,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], in_tmp_cwd: Path) -> None:
    """upgrade() gets no connection; one that needs it cannot be judged, so it is refused
    like a destructive one (unless the operator allows it)."""
    name = extra_migrations("3_20991230000000_needs_db",
                            "    return await db.execute_query('SELECT 1')")
    plan: dict[str, Any] = await _plan(monkeypatch, migrated_database_url, capsys)
    [pending] = plan["pending"]
    assert pending["name"] == name and pending["destructive"] is True
    assert pending["reasons"][0].startswith(f"cannot read the upgrade SQL of {name}: "
                                            "AttributeError")


async def test_plan_reports_a_head_this_code_does_not_ship(
        postgres: PostgresServer, migrated_database_url: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        in_tmp_cwd: Path) -> None:
    future = "9_20991231000000_from_a_newer_release"
    postgres.psql(f"INSERT INTO aerich (version, app, content) VALUES ('{future}.py', "
                  f"'{APP_LABEL}', '{{}}')", database=_db(migrated_database_url))
    assert await _plan(monkeypatch, migrated_database_url, capsys) == {
        "current": future, "target": HEAD, "pending": [], "destructive": False,
        "unknown_head": True,
    }


async def test_plan_with_the_database_down(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           in_tmp_cwd: Path) -> None:
    port = free_port()
    url = f"postgres://assistantapp:s3cret-pass@127.0.0.1:{port}/assistantapp"
    code, out, err = await cli(["plan"], monkeypatch, url, capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"Error: Cannot connect to the database 127.0.0.1:{port}/assistantapp")
    assert "s3cret" not in err and "Traceback" not in err


def test_plan_through_python_m_app(migrated_database_url: str, tmp_path: Path) -> None:
    result = run_cli(["db", "plan"], {**VALID_ENV, "DATABASE_URL": migrated_database_url},
                     tmp_path, module="app")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["current"] == HEAD


# --- db smoke -------------------------------------------------------------------------------

def _row_counts(postgres: PostgresServer, db: str) -> dict[str, int]:
    tables = postgres.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                           database=db).split()
    return {t: int(postgres.psql(f'SELECT count(*) FROM "{t}"', database=db)) for t in tables}


def test_smoke_covers_every_model() -> None:
    assert smoke.app_models()
    assert smoke.covered_models() == smoke.app_models()


def test_smoke_passes_and_leaves_nothing_behind(postgres: PostgresServer,
                                               migrated_database_url: str,
                                               tmp_path: Path) -> None:
    db = _db(migrated_database_url)
    postgres.psql("INSERT INTO users (email, name, picture, google_scopes, created_at, "
                  "updated_at) VALUES ('live@example.com', 'Live', '', '', now(), now())",
                  database=db)
    before = _row_counts(postgres, db)
    assert {"users", "conversations", "messages", "refresh_tokens", "draft_proposals",
            "aerich"} <= set(before)
    result = run_cli(["db", "smoke"], {**VALID_ENV, "DATABASE_URL": migrated_database_url},
                     tmp_path, module="app")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (f"Schema smoke test passed: {len(smoke.app_models())} models "
                             "written and read\n")
    assert _row_counts(postgres, db) == before
    # Twice in a row: nothing it wrote (unique emails, token hashes) is in the way.
    assert run_cli(["db", "smoke"], {**VALID_ENV, "DATABASE_URL": migrated_database_url},
                   tmp_path, module="app").returncode == 0


@pytest.mark.parametrize(("change", "model", "detail"), [
    ('ALTER TABLE "messages" DROP COLUMN "agent"', "Message", '"agent"'),
    ('ALTER TABLE "users" DROP COLUMN "last_login_at"', "User", '"last_login_at"'),
    ('ALTER TABLE "draft_proposals" DROP COLUMN "gmail_draft_id"', "DraftProposal",
     '"gmail_draft_id"'),
    ('ALTER TABLE "conversations" RENAME COLUMN "title" TO "subject"', "Conversation",
     '"title"'),
    ('ALTER TABLE "refresh_tokens" ALTER COLUMN "family_id" TYPE INT USING 0',
     "RefreshToken", "invalid input"),  # a UUID no longer fits
], ids=["dropped-column", "dropped-new-column", "dropped-nullable-column", "renamed-column",
        "retyped-column"])
async def test_smoke_fails_when_the_schema_lost_what_the_models_use(
        change: str, model: str, detail: str, postgres: PostgresServer,
        migrated_database_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], in_tmp_cwd: Path) -> None:
    db = _db(migrated_database_url)
    postgres.psql(change, database=db)
    before = _row_counts(postgres, db)
    code, out, err = await cli(["smoke"], monkeypatch, migrated_database_url, capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"Error: schema smoke test failed: {model}: "), err
    assert detail in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert _row_counts(postgres, db) == before  # the models before it were rolled back too


async def test_smoke_on_a_database_without_tables(database_url: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str],
                                                  in_tmp_cwd: Path) -> None:
    code, _, err = await cli(["smoke"], monkeypatch, database_url, capsys)
    assert code == 2
    assert err.startswith("Error: schema smoke test failed: User: ") and '"users"' in err


def test_smoke_with_the_database_down(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    url = f"postgres://assistantapp:s3cret-pass@127.0.0.1:{port}/assistantapp"
    result = run_cli(["db", "smoke"], {**VALID_ENV, "DATABASE_URL": url}, tmp_path,
                     module="app")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(
        f"Error: Cannot connect to the database 127.0.0.1:{port}/assistantapp"), result.stderr
    assert "Traceback" not in result.stderr and "s3cret-pass" not in result.stderr
