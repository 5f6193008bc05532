"""After a reboot (runs last): firewall loaded at boot, journal kept the previous boot."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest


def wait_for_new_boot(host: Any, marker: str, timeout: float = 90.0) -> None:
    # /run is a fresh tmpfs on every boot: the marker disappears once the host is back.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # SSH refuses while the host reboots
            back = host.run(f"test -e {marker}").rc == 1
            if back and host.run("systemctl is-system-running --wait").rc in (0, 1):
                return
        time.sleep(2)
    pytest.fail(f"{host.backend.get_hostname()} did not come back within {timeout:.0f}s")


def test_firewall_and_journal_survive_reboot(host: Any) -> None:
    marker = "/run/common-test-before-reboot"
    boots_before = len(host.check_output("journalctl --list-boots --no-pager -q").splitlines())
    host.run(f"touch {marker}")
    host.run("systemd-run --on-active=1 systemctl reboot")
    time.sleep(3)
    wait_for_new_boot(host, marker)
    boots_after = len(host.check_output("journalctl --list-boots --no-pager -q").splitlines())
    assert boots_after == boots_before + 1  # the earlier boot's journal is still on disk
    ruleset = host.check_output("nft list ruleset")
    assert "hook input priority filter; policy drop;" in ruleset
    assert host.service("ssh.service").is_running
    # Debian 13 re-creates /etc/default/locale -> ../locale.conf at boot: the locale must survive.
    assert "LANG=en_US.UTF-8" in host.file("/etc/default/locale").content_string
