"""PostgreSQL and Redis go away and come back: meanwhile /health/ready answers 503 and
what does not need them (/health/live, the page) keeps answering 200; afterwards the app
is ready again by itself, without a restart or a redeploy."""

from __future__ import annotations

import pytest
from stack_scenario import (
    POSTGRESQL_UNIT,
    REDIS_UNIT,
    STACK_HOST,
    app_unit,
    client,
    status_of,
    unit_property,
    wait_for,
)

testinfra_hosts = [STACK_HOST]

RECOVERY_TIMEOUT_S = 30


@pytest.fixture
def app_process(host):
    """The app's main PID and restart count, checked unchanged after the test."""
    unit = app_unit(host)
    with client() as http:
        assert wait_for(lambda: status_of(http, "/health/ready") == 200, timeout_s=30)
    before = (unit_property(host, unit, "MainPID"), unit_property(host, unit, "NRestarts"))
    yield unit
    after = (unit_property(host, unit, "MainPID"), unit_property(host, unit, "NRestarts"))
    assert after == before, "the app was restarted: it should have recovered by itself"


@pytest.mark.parametrize("unit", [POSTGRESQL_UNIT, REDIS_UNIT])
def test_outage_makes_the_app_unready_but_alive_and_it_recovers(host, app_process, unit):
    with client() as http:
        assert status_of(http, "/health/ready") == 200
        try:
            assert host.run("systemctl stop %s", unit).rc == 0
            assert wait_for(lambda: status_of(http, "/health/ready") == 503, timeout_s=15)
            body = http.get("/health/ready").json()
            assert body["status"] == "not ready"
            assert any(reason.startswith("database" if unit == POSTGRESQL_UNIT else "redis")
                       for reason in body["reasons"]), body
            for _ in range(5):
                assert status_of(http, "/health/live") == 200
                assert status_of(http, "/") == 200
        finally:
            assert host.run("systemctl start %s", unit).rc == 0
        assert wait_for(lambda: status_of(http, "/health/ready") == 200,
                        timeout_s=RECOVERY_TIMEOUT_S)


@pytest.mark.parametrize("unit", [POSTGRESQL_UNIT, REDIS_UNIT])
def test_plain_restart_is_recovered_from(host, app_process, unit):
    # The pooled connections the app holds die with the server; they must be replaced.
    with client() as http:
        assert host.run("systemctl restart %s", unit).rc == 0
        assert wait_for(lambda: status_of(http, "/health/ready") == 200,
                        timeout_s=RECOVERY_TIMEOUT_S)
        # ...and it stays ready (not just one lucky answer from a fresh connection).
        assert all(status_of(http, "/health/ready") == 200 for _ in range(10))
