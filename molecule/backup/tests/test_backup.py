# ruff: noqa: S608 - SQL built from this file's own constants (PROBE_TABLE), no outside input
"""pgBackRest with a dedicated repository host, driven as an operator drives it.

The tests run in file order and build on each other (a backup, WAL, then restores that
change the cluster). Measured numbers go to <ephemeral dir>/measurements.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import testinfra
import yaml

PROJECT = Path(__file__).resolve().parents[3]
SCENARIO_DIR = Path(__file__).resolve().parents[1]
EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
SECRETS = yaml.safe_load((SCENARIO_DIR / "vars" / "secrets.yml").read_text())
PLATFORMS = {
    p["name"]: p for p in yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())["platforms"]
}

DB_HOST = "backup-db"
REPO_HOST = "backup-repo"
DB_ADDRESS = PLATFORMS[DB_HOST]["address"]
STANZA = "assistantapp"
DATABASE = "assistantapp"
REPO_PATH = "/var/lib/pgbackrest"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
ARCHIVE_TIMEOUT_S = 10  # converge.yml: pgbackrest_archive_timeout
PROBE_TABLE = "backup_probe"
SCHEMA_HEAD = "0_20261202000000_backup_probe"
# Labels of this run only, so a second `molecule verify` on the same hosts judges its own rows.
RUN = str(int(time.time()))

testinfra_hosts = [DB_HOST]


def record(name: str, value: float | str) -> None:
    """Keep a measured number for the report (and show it in the test output)."""
    path = EPHEMERAL / "measurements.json"
    numbers = json.loads(path.read_text()) if path.exists() else {}
    numbers[name] = value
    path.write_text(json.dumps(numbers, indent=2) + "\n")
    print(f"{name}: {value}")


def ansible(playbook: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_CONFIG=str(EPHEMERAL / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run(  # noqa: S603 - our own playbooks, fixed arguments
        [
            str(PROJECT / ".venv/bin/ansible-playbook"),
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            str(playbook),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def repo():
    return testinfra.get_host(
        f"ansible://{REPO_HOST}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
    )


def sql(host, statement: str, database: str = DATABASE) -> str:
    result = host.run(
        "cd / && runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d %s -c %s",
        database,
        statement,
    )
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def as_repo_user(repo, *words: str):
    return repo.run("cd / && runuser -u pgbackrest -- " + " ".join(["%s"] * len(words)), *words)


def repository_info(repo) -> dict:
    result = as_repo_user(repo, "pgbackrest", f"--stanza={STANZA}", "--output=json", "info")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)[0]


def wait_archived(host) -> None:
    """Switch the WAL segment and wait until the repository has it (pgbackrest check)."""
    result = host.run("cd / && runuser -u postgres -- pgbackrest --stanza=%s check", STANZA)
    assert result.rc == 0, result.stdout + result.stderr


def test_check_diff_prints_no_passphrase(tmp_path):
    """Runs first (before the restores change the cluster): converge.yml in --check --diff
    with a rotated encryption passphrase and database password: the configuration files that
    hold them change, and neither value, old or new, is printed, in clear or as a SHA-256."""
    rotated = {name: f"{value}-rotated-4b9d" for name, value in SECRETS.items()}
    rotated_file = tmp_path / "rotated.yml"
    rotated_file.write_text(yaml.safe_dump(rotated))
    result = ansible(SCENARIO_DIR / "converge.yml", "--check", "--diff", "-e", f"@{rotated_file}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    config_task = output[output.index("TASK [pgbackrest : Write the pgBackRest configuration]") :]
    config_task = config_task[: config_task.find("\nTASK [", 1)]
    assert f"changed: [{REPO_HOST}]" in config_task, config_task
    for value in [*SECRETS.values(), *rotated.values()]:
        for form in (value, hashlib.sha256(value.encode()).hexdigest()):
            assert form not in output, f"--check --diff printed {form[:12]}..."


def test_stanza_created_and_check_passes(host, repo):
    assert repository_info(repo)["status"]["code"] == 0
    result = as_repo_user(repo, "pgbackrest", f"--stanza={STANZA}", "check")
    assert result.rc == 0, result.stdout + result.stderr
    settings = sql(
        host,
        "SELECT name || '=' || setting FROM pg_settings "
        "WHERE name IN ('archive_mode', 'archive_timeout', 'archive_command') ORDER BY name",
    )
    assert settings.splitlines() == [
        f"archive_command=pgbackrest --stanza={STANZA} archive-push %p",
        "archive_mode=on",
        f"archive_timeout={ARCHIVE_TIMEOUT_S}",
    ]


def test_backup_timers_scheduled_on_the_repository_host(repo):
    for kind in ("full", "diff"):
        timer = repo.service(f"pgbackrest-backup-{kind}.timer")
        assert timer.is_enabled and timer.is_running


def test_full_backup_through_the_timers_service(host, repo):
    sql(
        host,
        f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (id serial PRIMARY KEY, label text NOT NULL, "
        "written_at timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    # ~50 MB of rows, so the backup copies more than an empty cluster.
    sql(
        host,
        f"INSERT INTO {PROBE_TABLE} (label) SELECT 'bulk-' || g FROM generate_series(1, 500000) g",
    )
    # aerich's table as the app's migrations leave it: the restore and the drill read the head.
    sql(
        host,
        "CREATE TABLE IF NOT EXISTS aerich (id serial PRIMARY KEY, version varchar(255) NOT NULL, "
        "app varchar(100) NOT NULL, content jsonb NOT NULL)",
    )
    sql(
        host,
        f"INSERT INTO aerich (version, app, content) SELECT '{SCHEMA_HEAD}', 'models', '{{}}' "
        f"WHERE NOT EXISTS (SELECT 1 FROM aerich WHERE version = '{SCHEMA_HEAD}')",
    )
    fulls_before = [b for b in repository_info(repo)["backup"] if b["type"] == "full"]
    started = time.monotonic()
    result = repo.run("systemctl start pgbackrest-backup@full.service")
    elapsed = time.monotonic() - started
    assert result.rc == 0, repo.run(
        "journalctl -u pgbackrest-backup@full.service -n 30 --no-pager"
    ).stdout
    fulls = [b for b in repository_info(repo)["backup"] if b["type"] == "full"]
    assert len(fulls) == len(fulls_before) + 1
    newest = fulls[-1]
    record("full_backup_service_seconds", round(elapsed, 1))
    record("full_backup_database_bytes", newest["info"]["size"])


def test_metrics_file_has_a_fresh_successful_backup(repo):
    metrics = repo.file(f"{TEXTFILE_DIR}/pgbackrest.prom")
    assert metrics.exists and metrics.mode == 0o644
    text = metrics.content_string
    stamp = re.search(
        r"pgbackrest_backup_last_success_timestamp_seconds"
        r'\{stanza="assistantapp",type="full"\} (\d+)',
        text,
    )
    assert stamp, text
    age = time.time() - int(stamp.group(1))
    assert -60 < age < 600, age
    assert 'pgbackrest_backup_last_run_success{stanza="assistantapp",type="full"} 1' in text
    assert 'pgbackrest_up{stanza="assistantapp"} 1' in text


def test_wal_reaches_the_repository_within_the_archive_timeout(host, repo):
    """The recovery point: a commit to its WAL segment in the repository (no forced switch)."""
    sql(host, f"INSERT INTO {PROBE_TABLE} (label) VALUES ('rpo-probe')")
    segment = sql(host, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    committed = time.monotonic()
    deadline = committed + ARCHIVE_TIMEOUT_S + 30
    while time.monotonic() < deadline:
        if (
            repo.run("ls %s/archive/%s/*/*/%s-* >/dev/null 2>&1", REPO_PATH, STANZA, segment).rc
            == 0
        ):
            break
        time.sleep(0.5)
    else:
        pytest.fail(
            f"WAL segment {segment} not in the repository"
            f" {ARCHIVE_TIMEOUT_S + 30} s after the commit"
        )
    seconds = time.monotonic() - committed
    record("recovery_point_seconds_commit_to_repository", round(seconds, 1))
    assert seconds <= ARCHIVE_TIMEOUT_S + 10


def test_repository_is_encrypted(host, repo):
    secret_text = "plain-text-that-must-not-be-readable-in-the-repository"  # noqa: S105
    sql(host, f"INSERT INTO {PROBE_TABLE} (label) VALUES ('{secret_text}')")
    wait_archived(host)
    assert repo.run("grep -rqa %s %s", secret_text, REPO_PATH).rc == 1
    # Every file pgBackRest wrote is OpenSSL-style aes-256-cbc output ("Salted__" header),
    # so not even decompression reveals anything without the passphrase.
    files = repo.run(
        "find %s/archive %s/backup -type f -size +0", REPO_PATH, REPO_PATH
    ).stdout.split()
    assert files
    for path in files[:40]:
        head = repo.run("head -c 8 %s", path).stdout
        assert head == "Salted__", path
    passphrase_files = repo.run(
        "grep -rl %s /etc /var/lib/pgbackrest", SECRETS["pgbackrest_cipher_pass"]
    )
    assert passphrase_files.stdout.split() == ["/etc/pgbackrest/pgbackrest.conf"]
    assert host.run("grep -rq %s /etc", SECRETS["pgbackrest_cipher_pass"]).rc == 1, (
        "passphrase on the db host"
    )


def restore(**extra_vars: str) -> subprocess.CompletedProcess[str]:
    """restore-pitr.yml with these extra vars (as JSON: a time has a space in it)."""
    return ansible(PROJECT / "playbooks" / "restore-pitr.yml", "-e", json.dumps(extra_vars))


def test_a_rebuilt_db_host_gets_its_data_back_from_the_repository(host, repo):
    """Issue 11, case 3 (destroys the db host; the tests after it run on the rebuilt one,
    set up again by converge). While rows go in every half
    second, PostgreSQL dies at once (SIGKILL, no shutdown checkpoint, no last archiving) and
    the db host is destroyed and created again empty. converge (site.yml's plays) refuses to
    archive or back up the new, empty cluster into the stanza and says how to get the data
    back; restore-pitr.yml -e restore_latest=true does; converge passes again and archiving
    goes on. The rows lost are at most what the archive timeout allows."""
    # Every row the earlier tests wrote (by label and time) plus the count of the bulk rows:
    # all of it was archived long before the host is lost.
    untouched = (
        "SELECT coalesce(string_agg(label || ' ' || written_at, E'\\n' ORDER BY id), '') || "
        f"E'\\nbulk rows: ' || (SELECT count(*) FROM {PROBE_TABLE} WHERE label LIKE 'bulk-%') "
        f"FROM {PROBE_TABLE} WHERE label NOT LIKE 'tick-%' AND label NOT LIKE 'bulk-%'"
    )
    expected_before = sql(host, untouched).splitlines()
    info_before = repository_info(repo)
    ticks = (
        "DO $$ BEGIN FOR i IN 1..80 LOOP "
        f"INSERT INTO {PROBE_TABLE} (label) VALUES ('tick-{RUN}-' || i); COMMIT; "
        "PERFORM pg_sleep(0.5); END LOOP; END $$"
    )
    started = host.run(
        "cd / && setsid -f runuser -u postgres -- psql -XAtq -d %s -c %s >/dev/null 2>&1",
        DATABASE,
        ticks,
    )
    assert started.rc == 0, started.stderr
    time.sleep(ARCHIVE_TIMEOUT_S + 12)  # past one forced WAL switch, rows still going in
    assert int(sql(host, f"SELECT count(*) FROM {PROBE_TABLE} WHERE label LIKE 'tick-{RUN}-%'"))
    # What archiving had done when the host is lost (shown if the restore misses rows).
    state_at_loss = sql(
        host,
        "SELECT pg_walfile_name(pg_current_wal_lsn()) || ' current, ' || "
        "coalesce(last_archived_wal, '-') || ' archived at ' || "
        "coalesce(last_archived_time::text, '-') "
        "FROM pg_stat_archiver",
        database="postgres",
    )
    lost_at = time.time()
    host.run("pkill -KILL -u postgres")
    hostctl = str(PROJECT / "testhosts" / "hostctl")
    for command in (
        [hostctl, "destroy", DB_HOST],
        [hostctl, "up", f"{DB_HOST}:{DB_ADDRESS}:{PLATFORMS[DB_HOST]['distro']}"],
    ):
        result = subprocess.run(  # noqa: S603 - the project's own tool, fixed arguments
            command, capture_output=True, text=True, timeout=600, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
    # The controller's SSH master connection went with the old host.
    for socket in (EPHEMERAL / "cp").glob(f"{DB_ADDRESS}-*"):
        socket.unlink()
    assert host.run("test -e /var/lib/postgresql").rc != 0, "the new db host is not empty"

    refused = ansible(SCENARIO_DIR / "converge.yml")
    output = plain(refused.stdout + refused.stderr)
    assert refused.returncode != 0, output[-3000:]
    assert "Refuse a db cluster the stanza does not belong to" in output
    assert "restore_latest=true" in output and "system identifier" in output, output[-3000:]
    info_refused = repository_info(repo)
    assert info_refused["db"] == info_before["db"]
    assert info_refused["backup"] == info_before["backup"]

    started = time.monotonic()
    result = restore(restore_latest=True, confirm_restore="assistantapp")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    record("rebuilt_db_host_restore_playbook_seconds", round(time.monotonic() - started, 1))
    assert sql(host, untouched).splitlines() == expected_before, state_at_loss
    newest_tick = float(
        sql(
            host,
            f"SELECT extract(epoch FROM max(written_at)) FROM {PROBE_TABLE} "
            f"WHERE label LIKE 'tick-{RUN}-%'",
        )
    )
    loss = lost_at - newest_tick
    record("rebuilt_db_host_data_loss_seconds", round(loss, 1))
    # Bounded by archive_timeout (plus the push itself on a busy machine).
    assert loss <= 2 * ARCHIVE_TIMEOUT_S, (loss, state_at_loss)

    converged = ansible(SCENARIO_DIR / "converge.yml")
    assert converged.returncode == 0, converged.stdout[-4000:]
    wait_archived(host)


def test_restore_refused_without_confirmation(host):
    started_at = sql(host, "SELECT pg_postmaster_start_time()")
    result = restore(restore_time="2000-01-01 00:00:00+00")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Nothing changed" in out and "pgbackrest restore --delta" in out, out
    assert "confirm_restore=assistantapp" in out
    assert sql(host, "SELECT pg_postmaster_start_time()") == started_at
    wrong = restore(restore_time="2000-01-01 00:00:00+00", confirm_restore="otherdb")
    assert wrong.returncode != 0 and "Nothing changed" in wrong.stdout + wrong.stderr
    # A time without its clock and zone (what a shell-split -e gives) is refused before
    # PostgreSQL stops, even confirmed.
    bare_date = restore(restore_time="2026-12-02", confirm_restore="assistantapp")
    assert bare_date.returncode != 0
    assert "Nothing changed" in bare_date.stdout + bare_date.stderr
    assert sql(host, "SELECT pg_postmaster_start_time()") == started_at


def test_point_in_time_restore_keeps_rows_before_the_time_only(host):
    sql(host, f"INSERT INTO {PROBE_TABLE} (label) VALUES ('pitr-A-{RUN}')")
    time.sleep(1.5)
    target = sql(
        host,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )
    time.sleep(1.5)
    sql(host, f"INSERT INTO {PROBE_TABLE} (label) VALUES ('pitr-B-{RUN}')")
    wait_archived(host)
    started = time.monotonic()
    result = restore(restore_time=target, confirm_restore="assistantapp")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    record("pitr_restore_playbook_seconds", round(time.monotonic() - started, 1))
    assert re.search(rf"schema\s+head\s+'{SCHEMA_HEAD}'", result.stdout), result.stdout[-3000:]
    labels = sql(
        host, f"SELECT label FROM {PROBE_TABLE} WHERE label LIKE '%-{RUN}' ORDER BY id"
    ).split()
    assert labels == [f"pitr-A-{RUN}"]
    assert sql(host, "SELECT pg_is_in_recovery()") == "f"


def test_restore_to_a_named_restore_point(host):
    sql(host, f"INSERT INTO {PROBE_TABLE} (label) VALUES ('point-C-{RUN}')")
    point = f"pre-migrate-test-{int(time.time())}"
    created = ansible(SCENARIO_DIR / "restore-point.yml", "-e", f"restore_point_name={point}")
    assert created.returncode == 0, created.stdout[-3000:]
    assert point in created.stdout
    sql(host, f"INSERT INTO {PROBE_TABLE} (label) VALUES ('point-D-{RUN}')")
    wait_archived(host)
    result = restore(restore_point=point, confirm_restore="assistantapp")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    labels = sql(
        host,
        f"SELECT label FROM {PROBE_TABLE} WHERE label LIKE '%-{RUN}' ORDER BY id",
    ).split()
    assert labels == [f"pitr-A-{RUN}", f"point-C-{RUN}"]
    # Archiving goes on on the new timeline.
    wait_archived(host)


def test_restore_drill_passes_and_cleans_up(host):
    expected = int(sql(host, f"SELECT count(*) FROM {PROBE_TABLE}"))
    wait_archived(host)
    started = time.monotonic()
    result = ansible(PROJECT / "playbooks" / "restore-drill.yml")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    record("drill_playbook_seconds", round(time.monotonic() - started, 1))
    match = re.search(r'"?restore_seconds"?:\s*([0-9.]+)', result.stdout)
    assert match, result.stdout[-3000:]
    record("drill_restore_seconds", float(match.group(1)))
    # The report (debug var: YAML or JSON, depending on the callback).
    assert re.search(rf'"?schema_head"?:\s*"?{SCHEMA_HEAD}', result.stdout), result.stdout[-3000:]
    assert re.search(rf"\"?{PROBE_TABLE}\"?:\s*{expected}\b", result.stdout), result.stdout[-3000:]
    assert host.run("find /var/lib/postgresql/pgbackrest-drill -mindepth 1").stdout == ""
    assert not host.socket("tcp://127.0.0.1:5499").is_listening
    assert host.run("test -S /var/run/postgresql/.s.PGSQL.5499").rc != 0
    metrics = host.file(f"{TEXTFILE_DIR}/pgbackrest_drill.prom").content_string
    assert 'pgbackrest_drill_last_run_success{stanza="assistantapp"} 1' in metrics
    # The recovery point it reports: the newest restored data is minutes old, not epoch 0.
    age = re.search(r'"?data_age_at_drill_start_seconds"?:\s*(-?[0-9]+)', result.stdout)
    assert age and 0 <= int(age.group(1)) < 900, result.stdout[-3000:]
    record("drill_recovery_point_seconds", int(age.group(1)))
    assert f'pgbackrest_drill_data_age_seconds{{stanza="assistantapp"}} {age.group(1)}' in metrics


def test_repository_host_takes_ssh_only_from_the_db_host_and_the_controller(host, repo):
    rules = repo.run("nft list chain inet filter input").stdout
    ssh_rules = [line.strip() for line in rules.splitlines() if "dport 22" in line]
    assert sorted(ssh_rules) == sorted(
        [
            f"ip saddr {DB_ADDRESS} tcp dport 22 accept",
            "ip saddr 10.213.0.1 tcp dport 22 accept",
        ]
    ), rules
    # The key pair works in both directions the way pgBackRest uses it.
    to_repo = host.run(
        "cd / && runuser -u postgres -- ssh -o BatchMode=yes pgbackrest@%s true",
        PLATFORMS[REPO_HOST]["address"],
    )
    assert to_repo.rc == 0, to_repo.stderr
    to_db = repo.run(
        "cd / && runuser -u pgbackrest -- ssh -o BatchMode=yes postgres@%s true", DB_ADDRESS
    )
    assert to_db.rc == 0, to_db.stderr
    # Only public keys left their hosts: the private key of the db host is not on the repo host.
    db_key = host.file("/var/lib/postgresql/.ssh/id_ed25519")
    assert db_key.mode == 0o600 and db_key.user == "postgres"


def exposure(host, unit: str) -> float:
    """The "Overall exposure level" of `systemd-analyze security` (0 safe .. 10 unsafe)."""
    result = host.run("systemd-analyze security --no-pager %s", unit)
    lines = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert lines, result.stdout + result.stderr
    return float(lines[-1].split(":")[1].split()[0])


def test_the_backup_and_drill_jobs_are_sandboxed(host, repo):
    assert exposure(repo, "pgbackrest-backup@full.service") <= 3.0
    assert exposure(host, "pgbackrest-drill.service") <= 3.0


def test_the_weekly_drill_passes_in_its_sandbox(host):
    """The timer's service (the sandboxed unit, not the playbook's direct run) restores,
    checks and cleans up like the playbook's drill."""
    metrics_file = f"{TEXTFILE_DIR}/pgbackrest_drill.prom"
    before = host.file(metrics_file).mtime
    wait_archived(host)
    result = host.run("systemctl start pgbackrest-drill.service")
    journal = host.run("journalctl -u pgbackrest-drill.service -n 30 --no-pager").stdout
    assert result.rc == 0, journal
    assert f'"schema_head": "{SCHEMA_HEAD}"' in journal, journal
    assert host.file(metrics_file).mtime > before
    metrics = host.file(metrics_file).content_string
    assert 'pgbackrest_drill_last_run_success{stanza="assistantapp"} 1' in metrics
    assert host.run("find /var/lib/postgresql/pgbackrest-drill -mindepth 1").stdout == ""


def archiver(host) -> dict:
    return json.loads(
        sql(
            host,
            "SELECT json_build_object('failed_count', failed_count, "
            "'last_failed_wal', last_failed_wal, 'last_archived_wal', last_archived_wal) "
            "FROM pg_stat_archiver",
            database="postgres",
        )
    )


def plain(text: str) -> str:
    """Playbook output as one line of words: no colours, no wrapping of long messages."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def preflight(*extra: str) -> subprocess.CompletedProcess[str]:
    """The operator's preflight against this inventory (db + backup groups only), with a
    waiting limit of seconds instead of minutes."""
    return ansible(
        PROJECT / "playbooks" / "preflight.yml",
        "-e",
        "preflight_results_check=false",
        "-e",
        "pgbackrest_max_archive_delay_seconds=5",
        *extra,
    )


def test_repository_outage_queues_wal_and_archiving_catches_up(host, repo):
    """Issue 11, case 4. The repository host stops answering the db host (every packet
    between them rejected on the repository host): PostgreSQL keeps taking writes, the WAL
    waits on the db host, preflight names the problem, a backup fails and says so in the
    metrics; when the host answers again, archiving catches up by itself (no forced switch)."""
    healthy = preflight()
    assert healthy.returncode == 0, healthy.stdout[-3000:]
    assert f"{DB_HOST}: ✓ WAL archiving:" in plain(healthy.stdout)
    assert re.search(rf"{DB_HOST}: ✓ backups: newest [0-9.]+ h old", plain(healthy.stdout))
    # The same backup is too old for a limit of a fraction of a second.
    too_old = preflight("-e", "pgbackrest_max_backup_age_hours=0.0001")
    assert too_old.returncode != 0
    assert re.search(rf"{DB_HOST}: ✗ backups: newest [0-9.]+ h old", plain(too_old.stdout))

    metrics_file = f"{TEXTFILE_DIR}/pgbackrest.prom"
    diff_success = (
        'pgbackrest_backup_last_success_timestamp_seconds{stanza="assistantapp",type="diff"}'
    )
    before = {
        line
        for line in repo.file(metrics_file).content_string.splitlines()
        if line.startswith(diff_success)
    }
    table = "inet backup_outage_test"
    outage = (
        f"nft add table {table} && "
        f"nft add chain {table} input '{{ type filter hook input priority -10; }}' && "
        f"nft add chain {table} output '{{ type filter hook output priority -10; }}' && "
        # Connections either way fail at once (a reset), as with a host that is down but
        # whose network answers; the resets the input rule sends pass the output rule.
        f"nft add rule {table} input ip saddr {DB_ADDRESS} meta l4proto tcp "
        "reject with tcp reset && "
        f"nft add rule {table} input ip saddr {DB_ADDRESS} drop && "
        f"nft add rule {table} output ip daddr {DB_ADDRESS} 'tcp flags & (syn | ack) == syn' "
        "reject with tcp reset"
    )
    assert repo.run(outage).rc == 0
    try:
        failures_before = archiver(host)["failed_count"]
        sql(host, f"INSERT INTO {PROBE_TABLE} (label) VALUES ('outage-{RUN}')")
        segment = sql(host, "SELECT pg_walfile_name(pg_current_wal_lsn())")
        sql(host, "SELECT pg_switch_wal()")
        deadline = time.monotonic() + 60
        while archiver(host)["failed_count"] == failures_before:
            assert time.monotonic() < deadline, "archive-push never failed during the outage"
            time.sleep(1)
        # The database does not wait for its repository.
        sql(host, f"INSERT INTO {PROBE_TABLE} (label) VALUES ('during-outage-{RUN}')")
        data_directory = sql(host, "SHOW data_directory")
        assert host.file(f"{data_directory}/pg_wal/archive_status/{segment}.ready").exists
        time.sleep(6)  # past the 5 s limit given to preflight
        reported = preflight()
        assert reported.returncode != 0, reported.stdout[-3000:]
        assert re.search(
            rf"{DB_HOST}: ✗ WAL archiving: \d+ segment\(s\) not in the repository, the oldest for"
            rf" \d+ s .*is {REPO_HOST} reachable\?",
            plain(reported.stdout),
        ), reported.stdout[-3000:]
        # A scheduled backup fails, and the metrics say so (alerts read them).
        backup = repo.run("systemctl start pgbackrest-backup@diff.service")
        assert backup.rc != 0
        metrics = repo.file(metrics_file).content_string
        assert 'pgbackrest_backup_last_run_success{stanza="assistantapp",type="diff"} 0' in metrics
        assert {line for line in metrics.splitlines() if line.startswith(diff_success)} == before
    finally:
        repo.run(f"nft delete table {table}")

    restored = time.monotonic()
    deadline = restored + 120
    while repo.run("ls %s/archive/%s/*/*/%s-* >/dev/null 2>&1", REPO_PATH, STANZA, segment).rc:
        assert time.monotonic() < deadline, f"{segment} not archived 120 s after the outage ended"
        time.sleep(1)
    record("archive_catch_up_seconds_after_outage", round(time.monotonic() - restored, 1))
    recovered = preflight()
    assert recovered.returncode == 0, recovered.stdout[-3000:]
    assert f"{DB_HOST}: ✓ WAL archiving:" in plain(recovered.stdout)
