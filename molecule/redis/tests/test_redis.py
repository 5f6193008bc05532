"""redis-server on one host: loopback only, default user disabled, the app's
ACL user with its password, AOF on, maxmemory + policy, data kept on restart."""

from __future__ import annotations

from pathlib import Path

import yaml

SCENARIO_VARS = yaml.safe_load(
    (Path(__file__).parent.parent / "vars" / "credentials.yml").read_text()
)
PASSWORD = SCENARIO_VARS["redis_app_password"]
APP_USER = "assistantapp"
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - deliberately wrong


def redis_cli(host, *args: str, password: str | None = PASSWORD, address: str = "127.0.0.1"):
    """redis-cli as the app user (or unauthenticated when password is None)."""
    auth = ["--user", APP_USER, "--pass", password, "--no-auth-warning"] if password else []
    words = ["redis-cli", "-h", address, *auth, *args]
    return host.run(" ".join(["%s"] * len(words)), *words)


def listening_addresses(host, port: int) -> set[str]:
    lines = host.run("ss -ltnH 'sport = :%s'", str(port)).stdout.splitlines()
    return {line.split()[3].rsplit(":", 1)[0].strip("[]") for line in lines if line.strip()}


def test_service_running_and_enabled(host):
    service = host.service("redis-server")
    assert service.is_running
    assert service.is_enabled


def test_listens_on_loopback_only(host):
    addresses = listening_addresses(host, 6379)
    assert "127.0.0.1" in addresses
    assert addresses <= {"127.0.0.1", "::1"}, addresses


def test_app_user_authenticates_with_its_password(host):
    result = redis_cli(host, "PING")
    assert result.stdout.strip() == "PONG", result.stdout + result.stderr


def test_wrong_password_is_refused(host):
    result = redis_cli(host, "PING", password=WRONG_PASSWORD)
    assert "WRONGPASS" in result.stdout + result.stderr


def test_unauthenticated_client_can_do_nothing(host):
    for command in (("PING",), ("GET", "anything"), ("CONFIG", "GET", "bind")):
        result = redis_cli(host, *command, password=None)
        assert "NOAUTH" in result.stdout + result.stderr, (command, result.stdout)


def test_app_user_cannot_run_admin_commands(host):
    for command in (
        ("CONFIG", "GET", "requirepass"),
        ("ACL", "LIST"),
        ("FLUSHALL",),
        ("SHUTDOWN",),
    ):
        result = redis_cli(host, *command)
        assert "NOPERM" in result.stdout + result.stderr, (command, result.stdout)
    assert host.service("redis-server").is_running


def test_aof_on_and_memory_cap_with_policy(host):
    persistence = redis_cli(host, "INFO", "persistence").stdout
    assert "aof_enabled:1" in persistence
    memory = redis_cli(host, "INFO", "memory").stdout
    assert f"maxmemory:{256 * 1024 * 1024}" in memory
    assert "maxmemory_policy:volatile-lru" in memory


def test_config_holds_no_cleartext_password_and_is_private(host):
    config = host.file("/etc/redis/redis.conf")
    assert PASSWORD not in config.content_string
    assert config.mode == 0o640
    assert config.user == "redis"


def test_writes_survive_a_restart(host):
    assert redis_cli(host, "SET", "molecule:probe", "kept").stdout.strip() == "OK"
    assert host.run("systemctl restart redis-server").rc == 0
    for _attempt in range(50):
        if redis_cli(host, "PING").stdout.strip() == "PONG":
            break
        host.run("sleep 0.1")
    assert redis_cli(host, "GET", "molecule:probe").stdout.strip() == "kept"
    redis_cli(host, "DEL", "molecule:probe")


def test_the_service_is_sandboxed(host):
    """Debian's redis-server.service is sandboxed already (the role adds no drop-in); keep
    it that way on both releases: systemd-analyze security <= 3.0."""
    result = host.run("systemd-analyze security --no-pager redis-server.service")
    lines = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert lines, result.stdout + result.stderr
    assert float(lines[-1].split(":")[1].split()[0]) <= 3.0, lines[-1]
