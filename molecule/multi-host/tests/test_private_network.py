"""The app hosts use PostgreSQL and Redis on the db/cache host over the private network;
the db/cache host's firewall lets the app hosts in and drops the load balancer."""

from __future__ import annotations

import pytest
from multihost_scenario import (
    APP_ADDRESSES,
    APP_HOSTS,
    APP_ROOT,
    DATA_ADDRESS,
    DATA_HOST,
    LB_HOST,
    live_port,
    remote,
    tcp_connects,
    wait_for,
)

testinfra_hosts = [DATA_HOST]

DATA_PORTS = [5432, 6379]


def peers(host, port: int) -> set[str]:
    """Remote addresses of the established connections to a local port."""
    lines = host.run("ss -tnH state established %s", f"( sport = :{port} )").stdout.splitlines()
    return {line.split()[-1].rsplit(":", 1)[0].strip("[]") for line in lines if line.strip()}


@pytest.mark.parametrize("name", APP_HOSTS)
def test_the_app_host_is_configured_for_the_data_host(name):
    env = remote(name).file(f"{APP_ROOT}/current/app.env").content_string
    assert f"@{DATA_ADDRESS}:5432/" in env
    assert f"@{DATA_ADDRESS}:6379/" in env


@pytest.mark.parametrize("name", APP_HOSTS)
def test_the_live_instance_is_ready_with_database_and_redis(name):
    app_host = remote(name)
    url = f"http://{APP_ADDRESSES[name]}:{live_port(app_host)}/health/ready"
    result = app_host.run(
        "python3 -c %s %s",
        "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).status)",
        url)
    assert result.stdout.strip() == "200", result.stderr


def test_both_app_hosts_hold_connections_to_postgresql_and_redis(host):
    for name in APP_HOSTS:  # make each instance touch both stores once more
        test_the_live_instance_is_ready_with_database_and_redis(name)
    expected = set(APP_ADDRESSES.values())
    for port in DATA_PORTS:
        seen = wait_for(lambda port=port: expected <= peers(host, port), timeout_s=10)
        assert seen, (port, peers(host, port))


@pytest.mark.parametrize("port", DATA_PORTS)
@pytest.mark.parametrize("name", APP_HOSTS)
def test_the_firewall_lets_the_app_hosts_in(name, port):
    assert tcp_connects(remote(name), DATA_ADDRESS, port)


@pytest.mark.parametrize("port", DATA_PORTS)
def test_the_firewall_drops_the_load_balancer(port):
    lb = remote(LB_HOST)
    assert not tcp_connects(lb, DATA_ADDRESS, port)
    # ...while the host itself is up for it (SSH is open): the refusal is the firewall's.
    assert tcp_connects(lb, DATA_ADDRESS, 22)
