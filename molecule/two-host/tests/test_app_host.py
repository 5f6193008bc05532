"""From the app host: PostgreSQL and Redis on the db host answer with the
credentials and refuse without them."""

from __future__ import annotations

from twohost_scenario import APP_HOST, APP_USER, PG_PASSWORD, WRONG_PASSWORD, psql, redis_cli

testinfra_hosts = [APP_HOST]


def test_postgresql_accepts_the_app_with_its_password(host):
    result = psql(host, PG_PASSWORD)
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == APP_USER


def test_postgresql_refuses_a_wrong_password(host):
    result = psql(host, "not-the-password")
    assert result.rc != 0
    assert "password authentication failed" in result.stderr


def test_redis_accepts_the_app_with_its_password(host):
    assert redis_cli(host, "SET", "two-host:probe", "1", "EX", "60").stdout.strip() == "OK"
    assert redis_cli(host, "GET", "two-host:probe").stdout.strip() == "1"


def test_redis_refuses_a_wrong_password(host):
    result = redis_cli(host, "PING", password=WRONG_PASSWORD)
    assert "WRONGPASS" in result.stdout + result.stderr


def test_redis_refuses_an_unauthenticated_client(host):
    result = redis_cli(host, "GET", "two-host:probe", password=None)
    assert "NOAUTH" in result.stdout + result.stderr
