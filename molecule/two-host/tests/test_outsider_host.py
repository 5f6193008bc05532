"""A host outside the project: the db host's firewall drops it before
PostgreSQL or Redis see it, whatever credentials it has."""

from __future__ import annotations

from twohost_scenario import DB_ADDRESS, OUTSIDER_HOST, PG_PASSWORD, psql, redis_cli

testinfra_hosts = [OUTSIDER_HOST]


def test_postgresql_is_unreachable_from_outside_the_project(host):
    result = psql(host, PG_PASSWORD)
    assert result.rc != 0
    assert "timeout expired" in result.stderr, result.stderr


def test_redis_is_unreachable_from_outside_the_project(host):
    result = redis_cli(host, "PING", timeout_s=3)
    # `timeout` ends redis-cli, still waiting for the dropped connection.
    assert result.rc == 124, (result.rc, result.stdout, result.stderr)
    assert "PONG" not in result.stdout


def test_the_db_host_itself_is_up_for_the_outsider(host):
    # The refusals above are the firewall's doing, not a dead host: SSH is open.
    assert host.run(f"timeout 5 bash -c '</dev/tcp/{DB_ADDRESS}/22'").rc == 0
