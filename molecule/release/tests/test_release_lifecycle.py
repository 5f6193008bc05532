"""The release lifecycle, driven through the playbooks as an operator runs them.

The tests run in file order and build on each other: v1 is live after converge; v2 (a
copy of the source with one more migration) is deployed and rolled back; v3 never becomes
ready; a held lock and a bad config are refused before anything changes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

PROJECT = Path(__file__).resolve().parents[3]
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
ADDRESS = "10.213.0.41"
SITE = f"https://{ADDRESS}"
APP_ROOT = "/opt/assistantapp"
PROBE_TABLE = "release_probe"
PROBE_MIGRATION = "90_20991231000000_release_probe"

testinfra_hosts = ["release1"]


def ansible(playbook: str, *extra: str, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(EPHEMERAL / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(  # noqa: S603 - our own playbooks, fixed arguments
        [str(PROJECT / ".venv/bin/ansible-playbook"), "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         str(PROJECT / "playbooks" / playbook), *extra],
        env=env, capture_output=True, text=True, timeout=timeout, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def build(name: str, patch) -> str:
    """An artifact from a copy of the project's app sources, changed by patch(src)."""
    src = EPHEMERAL / "sources" / name
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for item in ("app", "pyproject.toml", "requirements.lock", "README.md"):
        if (PROJECT / item).is_dir():
            shutil.copytree(PROJECT / item, src / item,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (PROJECT / item).exists():
            shutil.copy(PROJECT / item, src / item)
    patch(src)
    result = subprocess.run([str(PROJECT / "scripts/build-artifact"),  # noqa: S603
                             "--source", str(src),
                             "--output", str(EPHEMERAL / "artifacts")],
                            capture_output=True, text=True, check=True, timeout=600)
    return result.stdout.strip().splitlines()[-1]


def add_probe_migration(src: Path) -> None:
    migrations = src / "app/db/migrations/models"
    template = sorted(migrations.glob("1_*.py"))[0].read_text()
    state = template[template.index("MODELS_STATE"):]
    (migrations / f"{PROBE_MIGRATION}.py").write_text(
        "from tortoise import BaseDBAsyncClient\n\nRUN_IN_TRANSACTION = True\n\n\n"
        "async def upgrade(db: BaseDBAsyncClient) -> str:\n"
        f'    return """CREATE TABLE "{PROBE_TABLE}" '
        '("id" SERIAL PRIMARY KEY, "note" TEXT);"""\n\n\n'
        "async def downgrade(db: BaseDBAsyncClient) -> str:\n"
        f'    return """DROP TABLE IF EXISTS "{PROBE_TABLE}";"""\n\n\n' + state)


def never_ready(src: Path) -> None:
    # The server refuses to start (systemd sets PORT for instances); check-config still passes.
    with (src / "app/__init__.py").open("a") as fh:
        fh.write("\nimport os as _os\n\nif _os.environ.get('PORT'):\n"
                 "    raise SystemExit('release test: this build never becomes ready')\n")


def psql(host, sql: str) -> str:
    result = host.run("runuser -u postgres -- psql -d assistantapp -tAc %s", sql)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def state(host) -> dict:
    return json.loads(host.file(f"{APP_ROOT}/state.json").content_string)


def releases(host) -> list[str]:
    return sorted(host.run("ls %s/releases", APP_ROOT).stdout.split())


def ready_through_nginx() -> int:
    with httpx.Client(verify=str(EPHEMERAL / "pki" / "ca.crt"), timeout=10, trust_env=False) as c:
        return c.get(f"{SITE}/health/ready").status_code


@pytest.fixture(scope="module")
def v1(host) -> dict:
    live = state(host)
    assert live["migration_head"] != "base"
    return live


def test_v1_is_live_and_data_is_written(host, v1):
    assert ready_through_nginx() == 200
    # Tortoise's defaults live in Python, so every NOT NULL column is given here.
    psql(host, "INSERT INTO users (email, name, picture, google_scopes, created_at, updated_at) "
               "VALUES ('keep-me@example.test', 'Keep Me', '', '', now(), now()) "
               "ON CONFLICT DO NOTHING")
    assert psql(host, "SELECT count(*) FROM users WHERE email = 'keep-me@example.test'") == "1"


def test_v2_with_a_migration_goes_live(host, v1):
    artifact = build("v2", add_probe_migration)
    result = ansible("deploy.yml", "-e", f"app_artifact={artifact}")
    assert result.returncode == 0, result.stdout[-3000:]
    live = state(host)
    assert live["release"] != v1["release"]
    assert live["migration_head"] == PROBE_MIGRATION
    assert live["live_port"] != v1["live_port"]
    assert psql(host, f"SELECT to_regclass('{PROBE_TABLE}') IS NOT NULL") == "t"
    assert ready_through_nginx() == 200
    # The old instance was stopped after the switch; a pre-migration dump was kept.
    assert not host.service(f"assistantapp@{v1['live_port']}").is_running
    assert host.file(f"/var/backups/postgresql/predeploy/{live['release']}.dump").exists


def test_rollback_downgrades_with_v2_code_then_switches_to_v1(host, v1):
    result = ansible("rollback.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"Database: downgrade to " + re.escape(v1["migration_head"]), output(result))
    live = state(host)
    assert live["release"] == v1["release"]
    assert host.file(f"{APP_ROOT}/current").linked_to.endswith(v1["release"])
    assert psql(host, f"SELECT to_regclass('{PROBE_TABLE}') IS NULL") == "t"
    assert psql(host, "SELECT count(*) FROM users WHERE email = 'keep-me@example.test'") == "1"
    assert ready_through_nginx() == 200
    log = [json.loads(line) for line in
           host.file(f"{APP_ROOT}/releases.log").content_string.splitlines()]
    assert log[-1]["event"] == "rollback" and log[-1]["release"] == v1["release"]
    assert "downgrade" in log[-1]["detail"]


def test_a_release_that_never_becomes_ready_never_goes_live(host):
    before = state(host)
    before_releases = releases(host)
    artifact = build("v3", never_ready)
    result = ansible("deploy.yml", "-e", f"app_artifact={artifact}")
    assert result.returncode != 0
    assert "Nothing was switched: the live release kept serving" in output(result)
    assert state(host) == before
    assert releases(host) == before_releases
    assert ready_through_nginx() == 200
    assert not host.file(f"{APP_ROOT}/deploy.lock").exists


def test_a_held_lock_refuses_a_deploy_at_once(host):
    before = state(host)
    host.run("mkdir %s/deploy.lock", APP_ROOT)
    host.run("echo '{\"owner\": \"alice@ops\", \"pid\": 4242}' > %s/deploy.lock/owner.json",
             APP_ROOT)
    try:
        result = ansible("deploy.yml", "-e", "app_force_deploy=true")
        assert result.returncode != 0
        assert "Another deploy holds the lock" in output(result)
        assert "alice@ops" in output(result)
        assert state(host) == before
        # The holder's lock is left alone.
        assert host.file(f"{APP_ROOT}/deploy.lock/owner.json").exists
    finally:
        host.run("rm -rf %s/deploy.lock", APP_ROOT)


def test_breaking_a_stale_lock_lets_the_deploy_through(host):
    host.run("mkdir -p %s/deploy.lock", APP_ROOT)
    before = state(host)
    result = ansible("deploy.yml", "-e", "app_break_lock=true", "-e", "app_force_deploy=true")
    assert result.returncode == 0, result.stdout[-3000:]
    after = state(host)
    assert after["release"] == before["release"]
    assert after["live_port"] != before["live_port"]
    assert not host.file(f"{APP_ROOT}/deploy.lock").exists


def test_a_bad_config_is_refused_before_anything_changes(host):
    before = state(host)
    env_before = host.file(f"{APP_ROOT}/shared/app.env").content_string
    result = ansible("deploy.yml", "-e", "app_jwt_secret=too-short")
    assert result.returncode != 0
    assert "JWT_SECRET must be at least 32 characters long" in output(result)
    assert host.file(f"{APP_ROOT}/shared/app.env").content_string == env_before
    assert state(host) == before
    assert ready_through_nginx() == 200
