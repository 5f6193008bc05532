"""A project host outside the app group (the load balancer): the firewall
lets it through, but pg_hba.conf rejects it even with the right password."""

from __future__ import annotations

from twohost_scenario import LB_HOST, PG_PASSWORD, psql

testinfra_hosts = [LB_HOST]


def test_postgresql_rejects_a_project_host_outside_the_app_group(host):
    result = psql(host, PG_PASSWORD)
    assert result.rc != 0
    assert "pg_hba.conf rejects connection" in result.stderr, result.stderr
