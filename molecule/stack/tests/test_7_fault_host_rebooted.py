"""A host reboot: every service comes back enabled and running by itself, and the site
answers over HTTPS (verified with the project CA). testhosts starts the nspawn host again
when it exits for a reboot, so this is a real boot of the host's systemd."""

from __future__ import annotations

import contextlib
import time

import pytest
from stack_scenario import (
    POSTGRESQL_UNIT,
    REDIS_UNIT,
    STACK_ADDRESS,
    STACK_HOST,
    app_unit,
    client,
    status_of,
    wait_for,
)

testinfra_hosts = [STACK_HOST]

BOOT_TIMEOUT_S = 120


def boot_id(host) -> str | None:
    with contextlib.suppress(Exception):  # SSH refuses while the host reboots
        result = host.run("cat /proc/sys/kernel/random/boot_id")
        if result.rc == 0:
            return result.stdout.strip()
    return None


@pytest.fixture(scope="module")
def rebooted(host):
    before = boot_id(host)
    assert before
    # Reboot a second later, so this SSH command returns first.
    assert host.run("systemd-run --on-active=1 systemctl reboot").rc == 0
    started = time.monotonic()
    back = wait_for(lambda: boot_id(host) not in (None, before), timeout_s=BOOT_TIMEOUT_S,
                    interval_s=1)
    assert back, "the host did not come back with a new boot"
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    print(f"host back after {time.monotonic() - started:.1f} s, system {state}")
    return state


@pytest.mark.parametrize("unit", ["nginx.service", f"{POSTGRESQL_UNIT}.service",
                                  f"{REDIS_UNIT}.service", "nftables.service"])
def test_service_is_enabled_and_running_after_the_reboot(host, rebooted, unit):
    assert host.service(unit).is_enabled
    assert host.service(unit).is_running


def test_the_live_app_instance_is_enabled_and_running_after_the_reboot(host, rebooted):
    unit = app_unit(host)
    assert host.service(unit).is_enabled
    assert host.service(unit).is_running


def test_no_unit_failed_during_the_boot(host, rebooted):
    failed = host.run("systemctl list-units --failed --plain --no-legend").stdout.strip()
    assert failed == "", failed


def test_the_site_answers_over_https_after_the_reboot(rebooted):
    with client() as http:
        assert wait_for(lambda: status_of(http, "/health/ready") == 200, timeout_s=60)
        assert status_of(http, "/health/live") == 200
        assert http.get("http://" + STACK_ADDRESS + "/health/ready").status_code == 301
