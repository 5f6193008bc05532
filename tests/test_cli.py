"""`python -m app ...` commands and the server refusing to start with a bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import app.__main__ as cli
from app.config import SETTINGS
from app.db import migrate
from tests.conftest import VALID_ENV

ROOT = Path(__file__).resolve().parent.parent
SANIC = str(Path(sys.executable).with_name("sanic"))


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment without any app variable, plus `extra`."""
    names = {s.env for s in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=cwd, env=clean_env(**env),
                          capture_output=True, text=True, timeout=60)


def test_check_config_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    env_file = tmp_path / "bad.env"
    env_file.write_text("APP_ENV=production\nPORT=abc\nRATE_LIMIT_WINDOW_MS=-5\n"
                        "GOOGLE_CLIENT_ID=short\nJWT_SECRET=your_jwt_secret_key_here\n"
                        "LOG_LEVEL=debug\n")
    result = run_cli("check-config", "--env-file", str(env_file), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    for message in ("PORT: 'abc' is not an integer",
                    "RATE_LIMIT_WINDOW_MS: must be a positive number, got -5",
                    "GOOGLE_CLIENT_ID appears to be invalid (too short)",
                    "Required environment variable GOOGLE_CLIENT_SECRET is not set",
                    "Required environment variable OPENAI_API_KEY is not set",
                    "JWT_SECRET must be changed from the placeholder value",
                    "LOG_LEVEL must not be debug in production",
                    "CORS_ORIGIN must not be http://localhost:3000 in production",
                    "Required environment variable DATABASE_URL is not set"):
        assert f"  - {message}" in result.stderr, result.stderr


def test_check_config_ok_is_one_line_and_exit_0(tmp_path: Path) -> None:
    env_file = tmp_path / "good.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in VALID_ENV.items()))
    result = run_cli("check-config", "--env-file", str(env_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        f"Configuration OK (APP_ENV=test, {len(SETTINGS)} variables checked)"]


def test_check_config_environment_wins_over_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "good.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in VALID_ENV.items()))
    result = run_cli("check-config", "--env-file", str(env_file), cwd=tmp_path, PORT="x1")
    assert result.returncode == 1
    assert "PORT: 'x1' is not an integer" in result.stderr


def test_check_config_reads_dot_env_of_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in VALID_ENV.items()))
    assert run_cli("check-config", cwd=tmp_path).returncode == 0


def test_check_config_missing_env_file(tmp_path: Path) -> None:
    result = run_cli("check-config", "--env-file", str(tmp_path / "nope.env"), cwd=tmp_path)
    assert result.returncode == 1
    assert f"Env file {tmp_path / 'nope.env'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["check-config"]) == 1
    assert "Required environment variable JWT_SECRET is not set" in capsys.readouterr().err
    for name, value in VALID_ENV.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith("Configuration OK")


def test_config_table_and_env_example_commands(tmp_path: Path) -> None:
    table = run_cli("config-table", cwd=tmp_path)
    assert table.returncode == 0
    assert table.stdout == cli.config_table()
    example = run_cli("env-example", cwd=tmp_path)
    assert example.returncode == 0
    assert example.stdout == cli.env_example()


def test_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("frobnicate", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_db_commands_are_dispatched_to_app_db_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    fake = types.ModuleType("app.db.cli")

    def fake_main(argv: list[str]) -> int:
        calls.append(argv)
        return 3

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "app.db.cli", fake)
    assert cli.main(["db", "downgrade", "--to", "1_20260101"]) == 3
    assert calls == [["downgrade", "--to", "1_20260101"]]


def test_db_commands_without_database_cli(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    def missing(name: str) -> None:
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    assert cli.main(["db", "current"]) == 2
    assert "app.db.cli missing" in capsys.readouterr().err


def test_server_refuses_to_start_with_the_same_list(tmp_path: Path) -> None:
    """`sanic app:create_app --factory` with a bad environment: the list, no traceback."""
    env = clean_env(APP_ENV="production", PORT="abc", JWT_SECRET="too-short")
    result = subprocess.run(
        [SANIC, "app:create_app", "--factory", "--host", "127.0.0.1", "--port", "0",
         "--single-process"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Invalid configuration:" in result.stderr
    for message in ("PORT: 'abc' is not an integer",
                    "JWT_SECRET must be at least 32 characters long",
                    "Required environment variable GOOGLE_CLIENT_ID is not set",
                    "Required environment variable OPENAI_API_KEY is not set"):
        assert f"  - {message}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_generators_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config-table"]) == 0
    assert capsys.readouterr().out == cli.config_table()
    assert cli.main(["env-example"]) == 0
    assert capsys.readouterr().out == cli.env_example()


# --- python -m app db downgrade --steps N ----------------------------------------------------

def run_db(*args: str, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("db", *args, cwd=cwd, **{**VALID_ENV, "DATABASE_URL": database_url})


def test_db_downgrade_steps_undoes_the_newest_n(migrated_database_url: str,
                                                tmp_path: Path) -> None:
    versions = migrate.available_versions()
    assert len(versions) >= 2
    result = run_db("downgrade", "--steps", "1", database_url=migrated_database_url,
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"Reverted {versions[-1]}",
                                          f"Database is at {versions[-2]}"]
    # N larger than what is applied: refused, nothing touched.
    applied = len(versions) - 1
    result = run_db("downgrade", "--steps", str(applied + 1),
                    database_url=migrated_database_url, cwd=tmp_path)
    assert result.returncode == 1
    assert f"only {applied} " in result.stderr and "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    current = run_db("current", database_url=migrated_database_url, cwd=tmp_path)
    assert current.stdout.strip() == versions[-2]
    # Exactly what is applied: back to base.
    result = run_db("downgrade", "--steps", str(applied), database_url=migrated_database_url,
                    cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"Database is at {migrate.BASE_VERSION}"


@pytest.mark.parametrize("steps", ["0", "-1", "two", "1.5", ""])
def test_db_downgrade_bad_steps_is_a_clear_error(steps: str, tmp_path: Path) -> None:
    # Checked before the database is even asked (this URL has no server behind it).
    result = run_db("downgrade", "--steps", steps, database_url="postgres://u:p@127.0.0.1:9/x",
                    cwd=tmp_path)
    assert result.returncode == 1
    assert "--steps needs a whole number" in result.stderr and "Traceback" not in result.stderr


def test_db_downgrade_needs_exactly_one_of_to_and_steps(tmp_path: Path) -> None:
    for args in (["downgrade"], ["downgrade", "--to", "base", "--steps", "1"]):
        result = run_db(*args, database_url="postgres://u:p@127.0.0.1:9/x", cwd=tmp_path)
        assert result.returncode != 0
        assert "--to" in result.stderr and "--steps" in result.stderr
