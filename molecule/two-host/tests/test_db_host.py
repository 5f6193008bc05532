"""The db host: PostgreSQL and Redis listen on loopback + the private address
only, and pg_hba names the app host alone."""

from __future__ import annotations

from twohost_scenario import APP_ADDRESS, DB_ADDRESS, DB_HOST, listening_addresses

testinfra_hosts = [DB_HOST]


def test_services_running_and_enabled(host):
    assert host.service("postgresql").is_enabled
    assert host.service("redis-server").is_enabled
    assert host.service("redis-server").is_running
    # pg_lsclusters: "15 main 5432 online postgres ..."; the unit carries the version.
    version, _name, _port, status, *_ = host.run("pg_lsclusters --no-header").stdout.split()
    assert status == "online"
    assert host.service(f"postgresql@{version}-main").is_running


def test_postgresql_listens_on_loopback_and_private_address_only(host):
    addresses = listening_addresses(host, 5432)
    assert {"127.0.0.1", DB_ADDRESS} <= addresses
    assert addresses <= {"127.0.0.1", "::1", DB_ADDRESS}, addresses


def test_redis_listens_on_loopback_and_private_address_only(host):
    addresses = listening_addresses(host, 6379)
    assert {"127.0.0.1", DB_ADDRESS} <= addresses
    assert addresses <= {"127.0.0.1", "::1", DB_ADDRESS}, addresses


def test_pg_hba_allows_the_app_host_alone(host):
    result = host.run(
        "cd / && runuser -u postgres -- psql -XAtq -c %s",
        "select address || '/' || netmask from pg_hba_file_rules "
        "where type = 'host' and auth_method = 'scram-sha-256'",
    )
    assert result.rc == 0, result.stderr
    assert result.stdout.split() == [f"{APP_ADDRESS}/255.255.255.255"]
