"""The release lifecycle, driven through the playbooks as an operator runs them.

The tests run in file order and build on each other. After converge v1 is live (nothing to
roll back to). v2 (one more migration) and v3 (another one, whose downgrade leaves a
timestamp) are deployed; rollbacks switch first and downgrade second, refuse what they must
(a target failing its gate, a newer target, an unnamed second rollback) and never restore a
dump; a failed downgrade leaves schema and data. restore.yml refuses without confirmation and
then restores v2's pre-migration dump into a fresh database. Maintenance mode answers 503
JSON/HTML with health probes still served. Last: a release that never becomes ready, a held
lock and a bad config are refused before anything changes; the same code with other config
is a release of its own, a rollback brings the old config back, and a host of the older
layout (one shared/app.env) gets a copy per release.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

PROJECT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(PROJECT))
from tests.release_sources import build_artifact, migration  # noqa: E402

EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
ADDRESS = "10.213.0.41"
SITE = f"https://{ADDRESS}"
APP_ROOT = "/opt/assistantapp"
PROBE_TABLE = "release_probe"
PROBE_MIGRATION = "90_20991231000000_release_probe"
WITNESS_TABLE = "release_probe3"
WITNESS_MIGRATION = "91_20991231000001_release_probe3"

testinfra_hosts = ["release1"]


def ansible(playbook: str, *extra: str, timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(EPHEMERAL / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(  # noqa: S603 - our own playbooks, fixed arguments
        [str(PROJECT / ".venv/bin/ansible-playbook"), "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         str(PROJECT / "playbooks" / playbook), *extra],
        env=env, capture_output=True, text=True, timeout=timeout, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    """stdout + stderr with YAML's line folding and quote doubling undone."""
    return " ".join((result.stdout + result.stderr).split()).replace("''", "'")


def build(name: str, patch) -> str:
    """An artifact from a copy of the project's app sources, changed by patch(src)."""
    return build_artifact(EPHEMERAL, name, patch)


add_probe_migration = migration(
    90, "release_probe", f'CREATE TABLE "{PROBE_TABLE}" ("id" SERIAL PRIMARY KEY, "note" TEXT);',
    f'DROP TABLE IF EXISTS "{PROBE_TABLE}";', stem=PROBE_MIGRATION)

# A downgrade that writes the database's clock into a side table (release_witness) before
# dropping its table: when the downgrade ran, seen from PostgreSQL.
_witness_only = migration(
    91, "release_probe3", f'CREATE TABLE "{WITNESS_TABLE}" ("id" SERIAL PRIMARY KEY);',
    'CREATE TABLE IF NOT EXISTS "release_witness" ("at" TIMESTAMPTZ NOT NULL);\n'
    'INSERT INTO "release_witness" VALUES (clock_timestamp());\n'
    f'DROP TABLE IF EXISTS "{WITNESS_TABLE}";', stem=WITNESS_MIGRATION)


def add_witness_migration(src: Path) -> None:
    """v2's migration plus the witness one."""
    add_probe_migration(src)
    _witness_only(src)


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


def head(host) -> str:
    """The database's migration head as aerich records it."""
    return psql(host, "SELECT regexp_replace(version, '[.]py$', '') FROM aerich "
                      "ORDER BY id DESC LIMIT 1")


def after_rollback_hooks(host) -> list[dict]:
    """What the scenario's after_rollback hook was told, one entry per call."""
    lines = host.file("/var/log/assistantapp-hooks.jsonl").content_string.splitlines()
    calls = [json.loads(line) for line in lines]
    assert {c["step"] for c in calls} == {"after_rollback"}
    return [{k: c[k] for k in ("release", "previous", "downgrade_ok")} for c in calls]


def release_log(host) -> list[dict]:
    return [json.loads(line) for line in
            host.file(f"{APP_ROOT}/releases.log").content_string.splitlines() if line.strip()]


def mtime(host, path: str) -> float:
    """Modification time of path itself (a symlink's own time, not its target's)."""
    return float(host.check_output("stat -c %%.9Y %s", path))


def users(host, email: str) -> str:
    return psql(host, f"SELECT count(*) FROM users WHERE email = '{email}'")  # noqa: S608


def rows(host, table: str) -> str:
    return psql(host, f"SELECT count(*) FROM {table}")  # noqa: S608


def add_user(host, email: str) -> None:
    # Tortoise's defaults live in Python, so every NOT NULL column is given here.
    psql(host, "INSERT INTO users (email, name, picture, google_scopes, created_at, updated_at) "  # noqa: S608
               f"VALUES ('{email}', 'Test', '', '', now(), now()) ON CONFLICT DO NOTHING")


def client() -> httpx.Client:
    return httpx.Client(verify=str(EPHEMERAL / "pki" / "ca.crt"), timeout=10, trust_env=False)


RELEASES: dict[str, dict] = {}


@pytest.fixture(scope="module")
def v1(host) -> dict:
    live = state(host)
    assert live["migration_head"] != "base"
    RELEASES.setdefault("v1", live)
    return RELEASES["v1"]


def test_v1_is_live_and_data_is_written(host, v1):
    assert ready_through_nginx() == 200
    add_user(host, "keep-me@example.test")
    assert users(host, "keep-me@example.test") == "1"


def test_capacity_follows_the_worker_count(host, v1):
    # app_workers: 1 (molecule.yml); pool 5; both instances during a switch; headroom 20
    # (the floor is lowered to 20 here so the derived number shows).
    assert psql(host, "SHOW max_connections") == str(1 * 5 * 2 + 20)
    memory_max = host.check_output("systemctl show -P MemoryMax assistantapp@%s",
                                   str(v1["live_port"]))
    assert int(memory_max) == (256 + 256 * 1) * 1024 * 1024
    env = host.file(f"{APP_ROOT}/current/app.env").content_string
    assert "maxsize=5" in env and "WORKERS='1'" in env


def test_a_fleet_that_does_not_fit_max_connections_is_refused(host, v1):
    result = ansible("deploy.yml", "-e", "app_force_deploy=true",
                     "-e", "app_db_connection_reserve=1000")
    assert result.returncode != 0
    assert "PostgreSQL max_connections is 30, but the app fleet may open 1010" in output(result)
    assert state(host) == v1
    assert ready_through_nginx() == 200


def test_rollback_with_nothing_to_roll_back_to_says_so(host, v1):
    result = ansible("rollback.yml")
    assert result.returncode != 0
    assert f"Nothing to roll back to: {v1['release']} is the first release deployed" \
        in " ".join(output(result).split())
    assert state(host) == v1
    assert not host.file(f"{APP_ROOT}/deploy.lock").exists


def test_v2_with_a_migration_goes_live(host, v1):
    artifact = build("v2", add_probe_migration)
    result = ansible("deploy.yml", "-e", f"app_artifact={artifact}")
    assert result.returncode == 0, result.stdout[-3000:]
    live = state(host)
    RELEASES["v2"] = live
    assert live["release"] != v1["release"]
    assert live["migration_head"] == PROBE_MIGRATION
    assert live["live_port"] != v1["live_port"]
    assert psql(host, f"SELECT to_regclass('{PROBE_TABLE}') IS NOT NULL") == "t"
    assert ready_through_nginx() == 200
    # The old instance was stopped after the switch; a pre-migration dump was kept.
    assert not host.service(f"assistantapp@{v1['live_port']}").is_running
    assert host.file(f"/var/backups/postgresql/predeploy/{live['release']}.dump").exists
    # Data written after the deploy: no rollback may lose it.
    add_user(host, "after-v2@example.test")
    psql(host, f"INSERT INTO {PROBE_TABLE} (note) VALUES ('written under v2')")  # noqa: S608


def test_a_target_failing_its_gate_changes_nothing(host, v1):
    before = state(host)
    init = host.check_output("ls %s/releases/%s/venv/lib/python3*/site-packages/app/__init__.py",
                             APP_ROOT, v1["release"])
    host.check_output("cp -p %s %s.orig", init, init)
    host.check_output("printf '%%s\\n' \"import os\" \"if os.environ.get('PORT'): "
                      "raise SystemExit('release test: v1 broken')\" >> %s", init)
    try:
        result = ansible("rollback.yml", "-e", "app_health_timeout=10")
    finally:
        host.check_output("mv %s.orig %s", init, init)
    assert result.returncode != 0
    assert f"The live release {before['release']} kept serving and the database was not touched" \
        in output(result)
    assert state(host) == before
    assert host.file(f"{APP_ROOT}/current").linked_to.endswith(before["release"])
    assert head(host) == PROBE_MIGRATION
    assert rows(host, PROBE_TABLE) == "1"
    assert not host.service(f"assistantapp@{v1['live_port']}").is_running
    assert ready_through_nginx() == 200
    assert not host.file(f"{APP_ROOT}/deploy.lock").exists


def test_v3_with_a_second_migration_goes_live(host):
    artifact = build("v3", add_witness_migration)
    result = ansible("deploy.yml", "-e", f"app_artifact={artifact}")
    assert result.returncode == 0, result.stdout[-3000:]
    live = state(host)
    RELEASES["v3"] = live
    assert live["migration_head"] == WITNESS_MIGRATION
    assert live["previous_release"] == RELEASES["v2"]["release"]


def test_rollback_switches_first_then_downgrades_with_the_newer_code(host, v1):
    v2, v3 = RELEASES["v2"], RELEASES["v3"]
    started = time.monotonic()
    result = ansible("rollback.yml")
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:]
    print(f"rollback wall time: {wall:.1f} s")
    assert f"Rolled back to {v2['release']}. Database: downgrade to {PROBE_MIGRATION} done" \
        in output(result)
    live = state(host)
    assert live["release"] == v2["release"]
    assert live["migration_head"] == PROBE_MIGRATION
    assert host.file(f"{APP_ROOT}/current").linked_to.endswith(v2["release"])
    # v3's code downgraded (its migration's downgrade ran), v2's schema stays.
    assert head(host) == PROBE_MIGRATION
    assert psql(host, f"SELECT to_regclass('{WITNESS_TABLE}') IS NULL") == "t"
    assert rows(host, PROBE_TABLE) == "1"
    # Order: nginx and `current` were switched BEFORE the downgrade ran (PostgreSQL's clock
    # in the witness row vs the files' times, one host, one clock).
    downgraded_at = float(psql(host, "SELECT extract(epoch FROM max(at)) FROM release_witness"))
    assert mtime(host, f"{APP_ROOT}/current") < downgraded_at
    assert mtime(host, "/etc/nginx/assistantapp/upstream.conf") < downgraded_at
    log = release_log(host)
    assert [e["event"] for e in log[-2:]] == ["rollback", "downgrade"]
    assert log[-2]["release"] == v2["release"] and log[-2]["from_release"] == v3["release"]
    assert log[-1]["ok"] is True and log[-1]["migration_head"] == PROBE_MIGRATION
    assert log[-2]["when"] <= log[-1]["when"]
    # The after_rollback hook (molecule.yml) ran once, after the downgrade.
    assert after_rollback_hooks(host)[-1] == {"release": v2["release"],
                                              "previous": v3["release"], "downgrade_ok": True}
    # Nothing restored: every row written since v2 went live is still there.
    assert users(host, "keep-me@example.test") == "1"
    assert users(host, "after-v2@example.test") == "1"
    assert ready_through_nginx() == 200
    assert not host.service(f"assistantapp@{v3['live_port']}").is_running
    assert not host.file(f"{APP_ROOT}/deploy.lock").exists


def test_a_second_unnamed_rollback_is_refused(host, v1):
    before = state(host)
    result = ansible("rollback.yml")
    assert result.returncode != 0
    assert f"{before['release']} is live because of a rollback" in output(result)
    assert "name the target with -e app_rollback_to=<release id>" in output(result)
    assert v1["release"] in output(result)  # offered as a candidate
    assert state(host) == before
    assert head(host) == PROBE_MIGRATION


def test_rollback_to_a_newer_release_is_refused(host):
    before = state(host)
    result = ansible("rollback.yml", "-e", f"app_rollback_to={RELEASES['v3']['release']}")
    assert result.returncode != 0
    assert f"Refusing to roll back to {RELEASES['v3']['release']}: it is newer than the live " \
           f"release {before['release']}" in " ".join(output(result).split())
    assert state(host) == before


def test_a_named_rollback_whose_downgrade_fails_keeps_schema_and_data(host, v1):
    v2 = RELEASES["v2"]
    # A view of another role depends on v2's table: its downgrade (DROP TABLE) fails. (Taking
    # the table's ownership away is not enough: the app's role owns the database and so, on
    # PostgreSQL 15, the public schema, whose owner may drop any table in it.)
    psql(host, f"CREATE VIEW {PROBE_TABLE}_pinned AS SELECT * FROM {PROBE_TABLE}")  # noqa: S608
    result = ansible("rollback.yml", "-e", f"app_rollback_to={v1['release']}")
    assert result.returncode != 0
    text = " ".join(output(result).split())
    assert f"{v1['release']} is live on every app host, but the database downgrade to " \
           f"{v1['migration_head']} with {v2['release']}'s code failed" in text
    assert "other objects depend on it" in text
    assert f"The schema was left as it is (head {PROBE_MIGRATION})" in text
    assert "No dump was restored" in text
    # Switched (the target passed its gate), schema and every later write left in place.
    live = state(host)
    assert live["release"] == v1["release"]
    assert live["migration_head"] == PROBE_MIGRATION
    assert head(host) == PROBE_MIGRATION
    assert rows(host, PROBE_TABLE) == "1"
    assert users(host, "after-v2@example.test") == "1"
    log = release_log(host)
    assert [e["event"] for e in log[-2:]] == ["rollback", "downgrade"]
    assert log[-1]["ok"] is False
    # The after_rollback hook ran too, and was told the downgrade failed.
    assert after_rollback_hooks(host)[-1] == {"release": v1["release"],
                                              "previous": v2["release"], "downgrade_ok": False}
    assert ready_through_nginx() == 200
    assert not host.file(f"{APP_ROOT}/deploy.lock").exists


@pytest.mark.parametrize("confirm", [None, "wrong-name"])
def test_restore_without_the_confirmation_is_refused(host, confirm):
    dump = f"{RELEASES['v2']['release']}.dump"
    extra = ["-e", f"restore_dump={dump}"]
    if confirm:
        extra += ["-e", f"confirm_restore={confirm}"]
    result = ansible("restore.yml", *extra)
    assert result.returncode != 0
    text = " ".join(output(result).split())
    assert "Refusing to restore without confirmation: add -e confirm_restore=assistantapp" in text
    assert f"It would: Restore /var/backups/postgresql/predeploy/{dump}" in text
    assert "a safety dump of the current database" in text
    assert not host.file("/etc/nginx/assistantapp/maintenance.on").exists
    assert head(host) == PROBE_MIGRATION
    assert host.service(f"assistantapp@{state(host)['live_port']}").is_running


def test_restore_with_the_confirmation_replaces_the_database(host, v1):
    before = state(host)
    dump = f"{RELEASES['v2']['release']}.dump"  # taken before v2 migrated: v1's schema
    safety_before = set(host.run("ls /var/backups/postgresql/safety").stdout.split())
    result = ansible("restore.yml", "-e", f"restore_dump={dump}",
                     "-e", "confirm_restore=assistantapp")
    assert result.returncode == 0, result.stdout[-3000:]
    # A fresh safety dump that holds the writes made after the dump being restored.
    safety = set(host.run("ls /var/backups/postgresql/safety").stdout.split()) - safety_before
    assert len(safety) == 1
    assert "after-v2@example.test" in host.check_output(
        "runuser -u postgres -- pg_restore --data-only -f - /var/backups/postgresql/safety/%s",
        safety.pop())
    # The dump's content and schema, and nothing of the newer migrations.
    assert head(host) == v1["migration_head"]
    assert psql(host, f"SELECT to_regclass('{PROBE_TABLE}') IS NULL") == "t"
    assert psql(host, "SELECT to_regclass('release_witness') IS NULL") == "t"
    assert users(host, "keep-me@example.test") == "1"
    assert users(host, "after-v2@example.test") == "0"
    assert psql(host, "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database "
                      "WHERE datname LIKE 'assistantapp%'") == "assistantapp"
    # v1 runs that schema and stays live; the release log says what happened.
    live = state(host)
    assert live["release"] == v1["release"] == before["release"]
    assert live["migration_head"] == v1["migration_head"]
    entry = release_log(host)[-1]
    assert entry["event"] == "restore" and entry["release"] == v1["release"]
    assert dump in entry["detail"] and "safety dump" in entry["detail"]
    assert not host.file("/etc/nginx/assistantapp/maintenance.on").exists
    assert ready_through_nginx() == 200
    assert not host.file(f"{APP_ROOT}/deploy.lock").exists


def test_maintenance_mode_answers_503_but_keeps_health_probes(host):
    result = ansible("maintenance.yml", "-e", "state=sideways")
    assert result.returncode != 0
    assert "Nothing was changed" in output(result) or "must be one of" in output(result)
    assert not host.file("/etc/nginx/assistantapp/maintenance.on").exists

    result = ansible("maintenance.yml", "-e", "state=on")
    assert result.returncode == 0, result.stdout[-3000:]
    try:
        with client() as c:
            for path in ("/api/me", "/auth/refresh"):
                response = c.get(f"{SITE}{path}")
                assert response.status_code == 503, path
                assert response.headers["content-type"].startswith("application/json")
                assert response.json()["code"] == "maintenance"
                assert response.json()["error"]
            page = c.get(f"{SITE}/", headers={"Accept": "text/html"})
            assert page.status_code == 503
            assert page.headers["content-type"].startswith("text/html")
            assert "maintenance" in page.text.lower()
            assert c.get(f"{SITE}/health/ready").status_code == 200
            assert c.get(f"{SITE}/health/live").status_code == 200
    finally:
        result = ansible("maintenance.yml", "-e", "state=off")
    assert result.returncode == 0, result.stdout[-3000:]
    with client() as c:
        me = c.get(f"{SITE}/api/me")
        assert me.status_code == 401
        assert me.json()["code"] != "maintenance"
        assert c.get(f"{SITE}/health/ready").status_code == 200


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
    env_before = host.file(f"{APP_ROOT}/current/app.env").content_string
    releases_before = releases(host)
    result = ansible("deploy.yml", "-e", "app_jwt_secret=too-short")
    assert result.returncode != 0
    assert "JWT_SECRET must be at least 32 characters long" in output(result)
    assert host.file(f"{APP_ROOT}/current/app.env").content_string == env_before
    assert state(host) == before
    assert releases(host) == releases_before  # the refused release's directory is gone
    assert ready_through_nginx() == 200


def instance_environment(host, port: int) -> str:
    """The environment the instance's main process really runs with."""
    pid = host.check_output("systemctl show -P MainPID assistantapp@%s", str(port))
    return host.check_output("tr '\\0' '\\n' < /proc/%s/environ", pid)


def test_config_is_part_of_the_release_and_a_rollback_brings_it_back(host):
    before = state(host)
    old_env = host.file(f"{APP_ROOT}/releases/{before['release']}/app.env").content_string
    assert "LOG_LEVEL='info'" in old_env
    # --check --diff of a config change says so and prints no secret, old or new.
    old_secret = "jwt-release-secret-0123456789abcdef0123456789"  # noqa: S105 - molecule.yml
    new_secret = "jwt-release-secret-rotated-5c1e-0123456789abcdef"  # noqa: S105
    assert f"JWT_SECRET='{old_secret}'" in old_env
    checked = ansible("deploy.yml", "--check", "--diff", "-e", f"app_jwt_secret={new_secret}")
    assert checked.returncode == 0, output(checked)[-3000:]
    assert "why: config changed" in output(checked)
    for secret in (old_secret, new_secret):
        for form in (secret, hashlib.sha256(secret.encode()).hexdigest()):
            assert form not in output(checked)
    assert state(host) == before
    changed = ansible("deploy.yml", "-e", "app_log_level=debug")
    assert changed.returncode == 0, output(changed)[-3000:]
    live = state(host)
    # The same code with other config is a release of its own; the old one keeps its file.
    assert live["release"] != before["release"]
    assert live["source_digest"] == before["source_digest"]
    new_env = host.file(f"{APP_ROOT}/current/app.env")
    assert "LOG_LEVEL='debug'" in new_env.content_string
    assert new_env.user == "assistantapp" and new_env.mode == 0o600
    assert host.file(f"{APP_ROOT}/releases/{before['release']}/app.env").content_string == old_env
    assert "LOG_LEVEL=debug" in instance_environment(host, live["live_port"]).splitlines()
    # The same config again: nothing to deploy.
    again = ansible("deploy.yml", "-e", "app_log_level=debug")
    assert again.returncode == 0, output(again)[-3000:]
    assert state(host) == live
    # A rollback brings the old config back with the old release.
    back = ansible("rollback.yml")
    assert back.returncode == 0, output(back)[-3000:]
    rolled = state(host)
    assert rolled["release"] == before["release"]
    assert host.file(f"{APP_ROOT}/current/app.env").content_string == old_env
    assert "LOG_LEVEL=info" in instance_environment(host, rolled["live_port"]).splitlines()
    assert ready_through_nginx() == 200


def test_a_host_of_the_older_layout_gets_a_config_copy_per_release(host):
    # Before config was part of the release, one shared/app.env served every release.
    before = state(host)
    live_env = host.file(f"{APP_ROOT}/current/app.env").content_string
    older = host.run(f"cp -p {APP_ROOT}/current/app.env {APP_ROOT}/shared/app.env"
                     f" && rm {APP_ROOT}/releases/*/app.env")
    assert older.rc == 0, older.stderr
    # Its releases have no config of their own yet: a rollback is refused, nothing changes.
    refused = ansible("rollback.yml")
    assert refused.returncode != 0
    assert "still have one shared/app.env for every release" in output(refused)
    assert state(host) == before
    result = ansible("deploy.yml")
    assert result.returncode == 0, output(result)[-3000:]
    assert state(host) == before  # same code, same config: nothing to deploy
    assert not host.file(f"{APP_ROOT}/shared/app.env").exists
    for release in releases(host):
        copy = host.file(f"{APP_ROOT}/releases/{release}/app.env")
        assert copy.content_string == live_env, release
        assert copy.user == "assistantapp" and copy.mode == 0o600, release
    assert ready_through_nginx() == 200


def a_comment(src: Path) -> None:
    with (src / "app/__init__.py").open("a") as fh:
        fh.write("\n# release test: new code, no recorded test results\n")


def test_an_artifact_without_passing_results_is_refused_unless_overridden(host):
    # The gate staging and production inventories turn on (app_require_checks): this
    # artifact's manifest has no recorded `make test`/`make lint` results.
    artifact = build("unchecked", a_comment)
    before = state(host)
    refused = ansible("deploy.yml", "-e", f"app_artifact={artifact}",
                      "-e", "app_require_checks=true")
    assert refused.returncode != 0
    text = output(refused)
    # The host-side checklist ran first and passed; then the artifact's checklist refused.
    assert "pre-deployment checks passed" in text
    assert "Refusing to deploy" in text
    assert "✗ results recorded for commit" in text and "✗ tests passed" in text
    assert "Deploy anyway only with -e" in text and "app_override_checks=" in text
    assert state(host) == before
    assert not host.file(f"{APP_ROOT}/deploy.lock").exists

    allowed = ansible("deploy.yml", "-e", f"app_artifact={artifact}",
                      "-e", "app_require_checks=true",
                      # As the message says: the value quoted, so its spaces survive.
                      "-e", 'app_override_checks="release test: no CI results here"')
    assert allowed.returncode == 0, allowed.stdout[-3000:]
    live = state(host)
    assert live["release"] != before["release"]
    entry = release_log(host)[-1]
    assert entry["event"] == "deploy" and entry["release"] == live["release"]
    assert entry["override"]["reason"] == "release test: no CI results here"
    assert "tests passed" in entry["override"]["failed"]
    assert ready_through_nginx() == 200
