"""testhosts without root: host specs, mirror discovery, NAT rules, the reboot-restart loop.

The real boot path (debootstrap, nspawn, bridge) is exercised by every Molecule scenario.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testhosts import hosts, network, rootfs, settings
from testhosts.util import TestHostsError


def test_host_spec_parses_name_address_and_distro() -> None:
    assert hosts.HostSpec.parse("web-1:10.213.0.42:trixie") == hosts.HostSpec(
        "web-1", "10.213.0.42", "trixie"
    )
    assert hosts.HostSpec.parse("web-1:10.213.0.42").distro == "bookworm"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("web-1", "NAME:ADDRESS"),
        ("Web_1:10.213.0.42", "host name"),
        ("web-1:10.213.0.42:buster", "distro"),
        ("web-1:10.213.1.42", "must be a host address in 10.213.0.0/24"),
        ("web-1:10.213.0.1", "must be a host address"),  # the bridge itself
        ("web-1:192.168.1.5", "must be a host address"),
        ("web-1:not-an-ip", "does not appear to be"),
    ],
)
def test_host_spec_rejects_bad_input_with_a_clear_message(text: str, complaint: str) -> None:
    with pytest.raises(TestHostsError, match=complaint):
        hosts.HostSpec.parse(text)


def test_mirrors_come_from_the_machines_apt_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources_dir = tmp_path / "sources.list.d"
    sources_dir.mkdir()
    (tmp_path / "sources.list").write_text("# deb http://commented.example/debian bookworm main\n")
    (sources_dir / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    # Disabled files are not apt sources.
    (sources_dir / "other.list.disabled").write_text(
        "deb http://off.example/debian bookworm main\n"
    )
    monkeypatch.setattr(rootfs, "SOURCES_LIST", tmp_path / "sources.list")
    monkeypatch.setattr(rootfs, "SOURCES_DIR", sources_dir)
    monkeypatch.delenv("TESTHOSTS_MIRROR", raising=False)
    monkeypatch.delenv("TESTHOSTS_SECURITY_MIRROR", raising=False)
    assert rootfs.mirrors() == (
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    )
    monkeypatch.setenv("TESTHOSTS_MIRROR", "http://override.example/debian")
    assert rootfs.mirrors()[0] == "http://override.example/debian"


def test_nat_rule_masquerades_only_the_test_subnet_in_our_own_table() -> None:
    ruleset = network._nft_ruleset("eth9")
    assert f"table inet {settings.NFT_TABLE}" in ruleset
    assert 'oifname "eth9" ip saddr 10.213.0.0/24 ip daddr != 10.213.0.0/24 masquerade' in ruleset
    assert "flush" not in ruleset  # never touches other tables


def test_nspawn_command_has_the_flags_this_machine_needs() -> None:
    command = hosts.nspawn_command(hosts.HostSpec("web-1", "10.213.0.42"))
    for flag in (
        "--register=no",
        "--keep-unit",
        "-b",
        "--network-bridge=aabr0",
        "--link-journal=no",
    ):
        assert flag in command
    assert command[command.index("-M") + 1] == "web-1"


def test_supervisor_restarts_nspawn_after_a_reboot_and_stops_on_poweroff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "STATE_DIR", tmp_path)
    spec = hosts.HostSpec("web-1", "10.213.0.42")
    hosts.host_dir(spec.name).mkdir(parents=True)
    (hosts.host_dir(spec.name) / "host.json").write_text(json.dumps(spec.__dict__))
    runs = tmp_path / "runs"
    # Stands in for nspawn: "reboots" (exit 133) twice, then powers off (exit 0).
    fake = tmp_path / "fake-nspawn"
    fake.write_text(
        f'#!/bin/sh\necho run >> {runs}\n[ "$(wc -l < {runs})" -lt 3 ] && exit 133\nexit 0\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(hosts, "nspawn_command", lambda _spec: [str(fake)])
    assert hosts.supervise(spec.name) == 0
    assert runs.read_text().count("run") == 3
    assert not (hosts.host_dir(spec.name) / "supervisor.pid").exists()


def test_stop_never_signals_a_process_that_is_not_our_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setattr(settings, "STATE_DIR", tmp_path)
    hosts.host_dir("web-1").mkdir(parents=True)
    # A stale pid file pointing at an unrelated live process (this test runner).
    (hosts.host_dir("web-1") / "supervisor.pid").write_text(f"{os.getpid()}\n")
    assert hosts.supervisor_pid("web-1") is None
    hosts.stop("web-1")  # must not kill us
