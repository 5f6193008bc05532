"""A deploy of the three-app-host fleet under load through nginx: the canary switches
first and is watched for app_canary_seconds, then the other batches; 0 failed requests;
the database migrates once, before any host starts the new release. Then a rollback of
the whole fleet under load. Around them, the rollbacks that must be refused: with nothing to
roll back to, a second unnamed one, one to a newer release. Wall times and request counts
are printed."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from fleet_scenario import (
    APP_HOSTS,
    CANARY,
    CANARY_SECONDS,
    DATA_HOST,
    PROJECT_DIR,
    SITE_URL,
    build,
    ca_file,
    fleet,
    head,
    migration,
    output,
    playbook,
    playbook_command,
    remote,
    state,
    table_exists,
    unit_timestamp,
)

testinfra_hosts = [DATA_HOST]

V2_MIGRATION = migration(80, "fleet_probe", 'CREATE TABLE "fleet_probe" ("id" SERIAL PRIMARY KEY);',
                         'DROP TABLE IF EXISTS "fleet_probe";')


def under_load(tmp_path, *command: str) -> tuple[dict, float, str]:
    """Runs the playbook command under bounded HTTPS load through nginx. Clients open a new
    connection per request: each batch's switch reloads nginx, and a graceful reload closes
    a client's keep-alive connection right after a response, so a keep-alive client that
    sends its next request at that instant sees the connection close (issue 12: a switch
    without an nginx reload). What this measures is the deploy's own behaviour: no request
    nginx accepted fails. The requests are /health/live (answered by the app's workers, like
    any route): /health/ready is the deploy's gate and answers 503 for a moment when its
    cached database check times out on this loaded CI machine."""
    report = tmp_path / "load.json"
    log = tmp_path / "command.log"
    started = time.monotonic()
    measured = subprocess.run(  # noqa: S603 - our own script and arguments
        [sys.executable, str(PROJECT_DIR / "bench" / "zero_downtime.py"), "--url", SITE_URL,
         "--cacert", ca_file(), "--run", " ".join(command), "--command-log", str(log),
         "--json", str(report), "--max-seconds", "900", "--warmup", "1", "--cooldown", "1",
         "--concurrency", "4", "--no-keepalive", "--paths", "/health/live"],
        capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    print(measured.stdout)
    text = log.read_text()
    assert measured.returncode == 0, measured.stdout + measured.stderr + text[-4000:]
    return json.loads(report.read_text())["windows"][0], wall, text


def test_a_rollback_of_the_first_release_says_there_is_nothing_to_roll_back_to():
    before = fleet()
    result = playbook("rollback.yml")
    assert result.returncode != 0
    assert f"Nothing to roll back to: {before[CANARY][0]} is the first release deployed" \
        in output(result)
    assert fleet() == before


def test_a_deploy_switches_the_canary_first_with_no_failed_request(tmp_path):
    before = fleet()
    start_head = head()
    artifact = build("v2", V2_MIGRATION)
    started = time.time()
    deploy = playbook_command("deploy.yml", "-e", f"app_artifact={artifact}")
    load, wall, _ = under_load(tmp_path, *deploy)
    print(f"fleet deploy under load: {wall:.1f} s wall, {load['requests']} requests, "
          f"{load['failed']} failed, {load['non_2xx']} non-2xx")
    assert load["requests"] > 0
    assert load["failed"] == 0 and load["non_2xx"] == 0, load

    after = fleet()
    releases = {after[name][0] for name in APP_HOSTS}
    assert len(releases) == 1 and releases != {before[CANARY][0]}, after
    for name in APP_HOSTS:
        assert after[name][1] == [p for p in (8001, 8002) if p not in before[name][1]], after
    assert table_exists("fleet_probe") and head() != start_head
    # Migrated once: one pre-migration dump for the release.
    release = releases.pop()
    dumps = remote(DATA_HOST).run(f"ls /var/backups/postgresql/predeploy/{release}.dump")
    assert dumps.rc == 0, dumps.stderr

    # Batch by batch: each host's new instance became active after the previous batch's,
    # and the second batch waited for the canary's bake.
    activated = [unit_timestamp(name, f"assistantapp@{after[name][1][0]}", "ActiveEnterTimestamp")
                 for name in APP_HOSTS]
    assert all(t is not None and t > started for t in activated), activated
    assert activated[0] + CANARY_SECONDS <= activated[1] <= activated[2], activated
    print("new instance active after start: " + ", ".join(
        f"{name} {t - started:.1f} s" for name, t in zip(APP_HOSTS, activated, strict=True)))


def test_a_rollback_returns_the_whole_fleet_and_then_the_database(tmp_path):
    live = {name: state(name) for name in APP_HOSTS}
    load, wall, _ = under_load(tmp_path, *playbook_command("rollback.yml"))
    print(f"fleet rollback under load: {wall:.1f} s wall, {load['requests']} requests, "
          f"{load['failed']} failed, {load['non_2xx']} non-2xx")
    assert load["failed"] == 0 and load["non_2xx"] == 0, load
    for name in APP_HOSTS:
        now = state(name)
        assert now["release"] == live[name]["previous_release"], (name, now)
    assert not table_exists("fleet_probe")
    assert head() == state(CANARY)["migration_head"]


def test_a_second_rollback_must_be_named_and_never_goes_to_a_newer_release():
    before = fleet()
    live = state(CANARY)
    again = playbook("rollback.yml")
    assert again.returncode != 0
    assert f"{live['release']} is live because of a rollback" in output(again)
    assert "name the target with -e app_rollback_to=<release id>" in output(again)
    # The release just rolled away from is still installed, and newer than the live one
    # (release ids start with their UTC deploy time).
    newer = max(release for release in before[CANARY][2] if release > live["release"])
    refused = playbook("rollback.yml", "-e", f"app_rollback_to={newer}")
    assert refused.returncode != 0
    assert f"Refusing to roll back to {newer}: it is newer than the live release " \
           f"{live['release']}" in output(refused)
    assert fleet() == before
