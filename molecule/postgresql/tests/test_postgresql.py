"""PostgreSQL on one host (the app is co-located): Debian's version, listening
only on loopback, SCRAM enforced, pg_hba without trust/md5, memory from RAM."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

SCENARIO_VARS = yaml.safe_load(
    (Path(__file__).parent.parent / "vars" / "credentials.yml").read_text()
)
PASSWORD = SCENARIO_VARS["postgresql_app_password"]
APP_USER = "assistantapp"
APP_DB = "assistantapp"
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - deliberately wrong
EXPECTED_VERSION = {"12": "15", "13": "17"}


@pytest.fixture()
def pg_version(host) -> str:
    debian_major = host.file("/etc/debian_version").content_string.strip().split(".")[0]
    if not debian_major.isdigit():  # testing/sid say e.g. "trixie/sid"
        debian_major = {"trixie": "13", "bookworm": "12"}[debian_major.split("/")[0]]
    return EXPECTED_VERSION[debian_major]


def psql_admin(host, sql: str) -> str:
    """Run SQL as the postgres OS user over the local socket (peer auth)."""
    result = host.run("runuser -u postgres -- psql -XAtq -c %s", sql)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def psql_tcp(host, address: str, password: str, user: str = APP_USER, database: str = APP_DB):
    return host.run(
        "PGPASSWORD=%s PGCONNECT_TIMEOUT=5 psql -XAtq -h %s -U %s -d %s -c 'select current_user'",
        password,
        address,
        user,
        database,
    )


def test_debian_version_of_postgresql_is_installed_with_client_tools(host, pg_version):
    assert host.package(f"postgresql-{pg_version}").is_installed
    assert host.package(f"postgresql-client-{pg_version}").is_installed
    assert host.exists("pg_dump")
    assert psql_admin(host, "show server_version").startswith(pg_version + ".")


def test_service_enabled_and_cluster_running(host, pg_version):
    assert host.service("postgresql").is_enabled
    assert host.service(f"postgresql@{pg_version}-main").is_running


def listening_addresses(host, port: int) -> set[str]:
    lines = host.run("ss -ltnH 'sport = :%s'", str(port)).stdout.splitlines()
    return {line.split()[3].rsplit(":", 1)[0].strip("[]") for line in lines if line.strip()}


def test_listens_on_loopback_only(host):
    addresses = listening_addresses(host, 5432)
    assert "127.0.0.1" in addresses
    assert addresses <= {"127.0.0.1", "::1"}, addresses


def test_passwords_use_scram_and_app_role_has_a_scram_verifier(host):
    assert psql_admin(host, "show password_encryption") == "scram-sha-256"
    stored = psql_admin(host, "select rolpassword from pg_authid where rolname = 'assistantapp'")
    assert stored.startswith("SCRAM-SHA-256$")


def test_pg_hba_has_no_trust_md5_or_password_and_no_errors(host):
    methods = psql_admin(
        host, "select string_agg(distinct auth_method, ',') from pg_hba_file_rules"
    )
    assert not set(methods.split(",")) & {"trust", "md5", "password", "ident"}, methods
    assert psql_admin(host, "select count(*) from pg_hba_file_rules where error is not null") == "0"


def test_app_connects_with_its_password(host):
    for address in listening_addresses(host, 5432):
        result = psql_tcp(host, address, PASSWORD)
        assert result.rc == 0, result.stderr
        assert result.stdout.strip() == APP_USER


def test_wrong_password_is_refused(host):
    result = psql_tcp(host, "127.0.0.1", WRONG_PASSWORD)
    assert result.rc != 0
    assert "password authentication failed" in result.stderr


def test_only_the_app_database_and_role_are_reachable_over_tcp(host):
    other_db = psql_tcp(host, "127.0.0.1", PASSWORD, database="postgres")
    assert other_db.rc != 0
    assert "pg_hba.conf rejects connection" in other_db.stderr
    superuser = psql_tcp(host, "127.0.0.1", PASSWORD, user="postgres", database="postgres")
    assert superuser.rc != 0
    assert "pg_hba.conf rejects connection" in superuser.stderr


def test_app_owns_its_database_and_can_create_tables(host):
    result = host.run(
        "PGPASSWORD=%s psql -XAtq -h 127.0.0.1 -U %s -d %s "
        "-c 'create table if not exists molecule_probe (id int); drop table molecule_probe'",
        PASSWORD,
        APP_USER,
        APP_DB,
    )
    assert result.rc == 0, result.stderr


def test_memory_settings_follow_the_hosts_ram(host):
    meminfo = host.file("/proc/meminfo").content_string
    mem_total_mb = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo)[1]) // 1024
    shared_buffers_mb = int(
        psql_admin(host, "select pg_size_bytes(current_setting('shared_buffers')) >> 20")
    )
    cache_mb = int(
        psql_admin(host, "select pg_size_bytes(current_setting('effective_cache_size')) >> 20")
    )
    assert abs(shared_buffers_mb - mem_total_mb * 0.25) <= mem_total_mb * 0.02
    assert abs(cache_mb - mem_total_mb * 0.75) <= mem_total_mb * 0.02
    work_mem_mb = int(psql_admin(host, "select pg_size_bytes(current_setting('work_mem')) >> 20"))
    assert 4 <= work_mem_mb <= 64
    assert psql_admin(host, "select count(*) from pg_settings where pending_restart") == "0"


def test_backup_dir_is_private_to_postgres(host):
    backup_dir = host.file("/var/backups/postgresql")
    assert backup_dir.is_directory
    assert backup_dir.user == "postgres"
    assert backup_dir.mode == 0o700
    dump = host.run(
        "runuser -u postgres -- pg_dump -Fc -f /var/backups/postgresql/probe.dump %s && "
        "rm /var/backups/postgresql/probe.dump",
        APP_DB,
    )
    assert dump.rc == 0, dump.stderr


def exposure(host, unit: str) -> float:
    """The "Overall exposure level" of `systemd-analyze security` (0 safe .. 10 unsafe)."""
    result = host.run("systemd-analyze security --no-pager %s", unit)
    lines = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert lines, result.stdout + result.stderr
    return float(lines[-1].split(":")[1].split()[0])


def test_the_cluster_is_sandboxed(host, pg_version):
    assert exposure(host, f"postgresql@{pg_version}-main.service") <= 3.0
    # The running server, not only the unit file: no capabilities, no new privileges.
    pid = host.check_output("systemctl show -P MainPID postgresql@%s-main", pg_version)
    status = host.file(f"/proc/{pid}/status").content_string
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    assert re.search(r"^CapBnd:\s+0+$", status, re.M), status
    paths = host.check_output("systemctl show -P ReadWritePaths postgresql@%s-main", pg_version)
    for path in ("/var/spool/pgbackrest", "/var/lib/pgbackrest", "/var/log/pgbackrest"):
        assert path in paths


def test_the_sandboxed_cluster_writes_data_and_wal_after_a_restart(host, pg_version):
    assert host.run("systemctl restart postgresql@%s-main", pg_version).rc == 0
    lsn_before = psql_admin(host, "select pg_current_wal_lsn()")
    psql_admin(host, "create table if not exists sandbox_probe (n int)")
    psql_admin(host, "insert into sandbox_probe select generate_series(1, 1000)")
    psql_admin(host, "checkpoint")
    psql_admin(host, "select pg_switch_wal()")
    assert int(psql_admin(host, "select count(*) from sandbox_probe")) >= 1000
    assert psql_admin(
        host, f"select pg_current_wal_lsn() > '{lsn_before}'::pg_lsn") == "t"
    psql_admin(host, "drop table sandbox_probe")
    # The server may not write outside its paths (ProtectSystem=strict), not even into a
    # directory postgres owns: the sandbox is real.
    write = host.run(
        "runuser -u postgres -- psql -XAtq -c %s",
        "copy (select 1) to '/var/backups/postgresql/sandbox-probe'")
    assert write.rc != 0 and "Read-only file system" in write.stderr, write.stderr
