"""Role common on Debian 12 + 13: account, packages, locale, journal, upgrades, sshd, firewall."""

# ruff: noqa: S603, S607 - the tests run the system's ssh client with fixed arguments.

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from conftest import (
    ADDRESSES,
    APP_INSTANCE_PORT,
    CLOSED_PORT,
    LB_HOSTS,
    POSTGRESQL_PORT,
    name_of,
    other_host,
    reachable_from,
    reachable_from_here,
)

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
IDENTITY = (
    Path(os.environ.get("TESTHOSTS_STATE_DIR", PROJECT / ".tmp/testhosts")) / "ssh/id_ed25519"
)


def test_app_system_user_and_group(host: Any) -> None:
    group = host.group("assistantapp")
    user = host.user("assistantapp")
    assert group.exists and group.gid < 1000
    assert user.exists and user.uid < 1000
    assert user.group == "assistantapp"
    assert user.shell == "/usr/sbin/nologin"
    assert user.home == "/opt/assistantapp"
    # No usable password: the hash field is a lock marker.
    assert user.password in ("!", "*", "!*")


def test_base_packages_installed(host: Any) -> None:
    for package in (
        "acl",
        "ca-certificates",
        "curl",
        "locales",
        "nftables",
        "tzdata",
        "unattended-upgrades",
    ):
        assert host.package(package).is_installed, package


def test_locale_and_timezone(host: Any) -> None:
    assert "LANG=en_US.UTF-8" in host.file("/etc/default/locale").content_string
    assert "en_US.utf8" in host.check_output("locale -a").split()
    assert host.check_output("readlink /etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert host.check_output("date +%Z") == "UTC"


def test_journal_is_persistent(host: Any) -> None:
    machine_id = host.file("/etc/machine-id").content_string.strip()
    config = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "Storage=persistent" in config
    host.run("journalctl --flush")
    assert host.file(f"/var/log/journal/{machine_id}/system.journal").is_file


def test_unattended_security_upgrades(host: Any) -> None:
    config = host.check_output("apt-config dump")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    origins = [
        line
        for line in config.splitlines()
        if line.startswith("Unattended-Upgrade::Origins-Pattern::")
    ]
    # Only Debian's security archive (Debian's own default list is cleared).
    assert len(origins) == 1 and "-security,label=Debian-Security" in origins[0]
    assert host.service("apt-daily-upgrade.timer").is_enabled
    dry_run = host.run("unattended-upgrade --dry-run -v 2>&1 | head -20")
    assert dry_run.rc == 0
    assert "Allowed origins are: origin=Debian,codename=" in dry_run.stdout
    assert "-security,label=Debian-Security" in dry_run.stdout


def test_sshd_effective_config(host: Any) -> None:
    effective = dict(
        line.split(" ", 1) for line in host.check_output("sshd -T").splitlines() if " " in line
    )
    assert effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert (
        effective["permitrootlogin"] == "without-password"
    )  # sshd -T's name for prohibit-password
    assert effective["pubkeyauthentication"] == "yes"
    assert effective["maxauthtries"] == "3"


def test_running_sshd_offers_only_public_keys(host: Any) -> None:
    address = ADDRESSES[name_of(host)]
    refused = subprocess.run(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ControlPath=none",
            "-o",
            "ConnectTimeout=5",
            f"root@{address}",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 255
    # The server lists the methods it accepts: password / keyboard-interactive are absent.
    assert "Permission denied (publickey)" in refused.stderr
    accepted = subprocess.run(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-i",
            str(IDENTITY),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ControlPath=none",
            "-o",
            "ConnectTimeout=5",
            f"root@{address}",
            "id -un",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert accepted.stdout.strip() == "root", accepted.stderr


def test_services_enabled_and_running(host: Any) -> None:
    for unit in ("ssh.service", "nftables.service", "dbus.socket", "unattended-upgrades.service"):
        service = host.service(unit)
        assert service.is_enabled, unit
        assert (
            service.is_running or host.run(f"systemctl is-active {unit}").stdout.strip() == "active"
        ), unit
    assert host.service("systemd-journald.service").is_running
    assert host.run("busctl --system list").rc == 0  # the bus answers


def test_firewall_ruleset_loaded(host: Any) -> None:
    ruleset = host.check_output("nft list ruleset")
    assert "hook input priority filter; policy drop;" in ruleset
    assert "hook forward priority filter; policy drop;" in ruleset
    for address in ADDRESSES.values():
        assert address in ruleset  # each host is a source of some internal service
    has_public = "tcp dport { 80, 443 } accept" in ruleset
    assert has_public == (name_of(host) in LB_HOSTS)


def test_firewall_enforced(host: Any, listeners: list[int]) -> None:
    address = ADDRESSES[name_of(host)]
    peer = other_host(host)
    # SSH: from anywhere.
    assert reachable_from_here(address, 22)
    # 80: only on the load balancer.
    assert reachable_from_here(address, 80) == (name_of(host) in LB_HOSTS)
    # Internal ports: each from the hosts of its groups only, never from the bridge.
    if name_of(host) in LB_HOSTS:  # the peer is the app host: PostgreSQL yes, instances no
        allowed, dropped = POSTGRESQL_PORT, APP_INSTANCE_PORT
    else:  # the peer is the load balancer: the app instances yes, PostgreSQL never
        allowed, dropped = APP_INSTANCE_PORT, POSTGRESQL_PORT
    assert reachable_from(peer, address, allowed)
    assert not reachable_from(peer, address, dropped)
    assert not reachable_from_here(address, allowed)
    # A port in no list: dropped for everyone, though a process listens on it.
    assert not reachable_from(peer, address, CLOSED_PORT)
    assert not reachable_from_here(address, CLOSED_PORT)
    # ...and the listener itself is fine: it answers on loopback.
    assert reachable_from(host, "127.0.0.1", CLOSED_PORT)
