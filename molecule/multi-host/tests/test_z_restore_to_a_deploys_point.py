"""Issue 11, case 2: a deploy that migrates marks a restore point first; restore-pitr.yml to
that point brings back the schema and the rows of just before the migration, and the fleet
ends on the release that matches them (the one live before the deploy), with the maintenance
page on while it happens. Runs last (file name): it moves the fleet back one release."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import httpx
from multihost_scenario import (
    APP_HOSTS,
    APP_ROOT,
    DATA_HOST,
    PROJECT_DIR,
    SITE_URL,
    ca_file,
    playbook,
    remote,
)

sys.path.insert(0, str(PROJECT_DIR))
from tests.release_sources import build_artifact, migration

testinfra_hosts = [DATA_HOST]

MAINTENANCE_FLAG = "/etc/nginx/assistantapp/maintenance.on"  # roles/nginx nginx_maintenance_flag
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
RESTORE_PROBE = migration(
    90, "restore_probe", 'CREATE TABLE "restore_probe" ("id" SERIAL PRIMARY KEY);',
    'DROP TABLE IF EXISTS "restore_probe";')


def psql(host, sql: str) -> str:
    result = host.run("cd / && runuser -u postgres -- psql -XAtq -d assistantapp -c %s", sql)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def state(name: str) -> dict:
    return json.loads(remote(name).file(f"{APP_ROOT}/state.json").content_string)


def release_log(name: str) -> list[dict]:
    text = remote(name).file(f"{APP_ROOT}/releases.log").content_string
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def output(result) -> str:
    """stdout + stderr with YAML's line folding undone."""
    return " ".join((result.stdout + result.stderr).split())


def test_restoring_to_a_deploys_point_returns_the_fleet_to_the_release_before(host):
    before = {name: state(name) for name in APP_HOSTS}
    assert len({s["release"] for s in before.values()}) == 1, before
    old_release = before[APP_HOSTS[0]]["release"]
    old_head = before[APP_HOSTS[0]]["migration_head"]
    psql(host, "CREATE TABLE IF NOT EXISTS restore_witness (label text NOT NULL)")
    psql(host, "INSERT INTO restore_witness VALUES ('before-the-deploy')")

    # mh-app1 runs Debian 13 (Python 3.13), mh-app2 Debian 12 (3.11).
    artifact = build_artifact(EPHEMERAL, "restore-probe", RESTORE_PROBE, pythons=("3.13", "3.11"))
    deployed = playbook("deploy.yml", "-e", f"app_artifact={artifact}")
    assert deployed.returncode == 0, output(deployed)[-4000:]
    new_release = state(APP_HOSTS[0])["release"]
    assert new_release != old_release
    assert psql(host, "SELECT to_regclass('public.restore_probe') IS NOT NULL") == "t"
    deploy = next(e for e in reversed(release_log(APP_HOSTS[0]))
                  if e["event"] == "deploy" and e["release"] == new_release)
    point = deploy["restore_point"]["name"]
    assert point == f"pre-migrate-{new_release}", deploy
    psql(host, "INSERT INTO restore_witness VALUES ('after-the-deploy')")

    restored = playbook("restore-pitr.yml", "-e", f"restore_point={point}",
                        "-e", "confirm_restore=assistantapp")
    text = output(restored)
    assert restored.returncode == 0, text[-4000:]
    # The maintenance page went on before the app stopped, and off once it was ready.
    assert text.index("Restore - maintenance page on") < text.index("Restore - stop the app")
    assert "Restore - maintenance page off" in text
    assert re.search(r"TASK \[nginx : Turn maintenance mode on\] \** changed: \[mh-lb\]", text)
    assert not remote("mh-lb").file(MAINTENANCE_FLAG).exists

    # The schema and rows of just before the migration; the release that matches them.
    assert psql(host, "SELECT to_regclass('public.restore_probe') IS NULL") == "t"
    assert psql(host, "SELECT label FROM restore_witness ORDER BY label") == "before-the-deploy"
    for name in APP_HOSTS:
        after = state(name)
        assert after["release"] == old_release, (name, after)
        assert after["migration_head"] == old_head, (name, after)
        entry = release_log(name)[-1]
        assert entry["event"] == "restore" and entry["release"] == old_release, entry
        assert point in entry["detail"], entry
    with httpx.Client(verify=ca_file(), timeout=10, trust_env=False) as client:
        ready = client.get(f"{SITE_URL}/health/ready")
    assert ready.status_code == 200, ready.text
