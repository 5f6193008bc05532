"""testhosts: host specs, mirror discovery, NAT rules, the reboot-restart loop (without root,
but for one veth pair).

The real boot path (debootstrap, nspawn, bridge) is exercised by every Molecule scenario.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
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
    monkeypatch.setattr(settings, "STATE_DIR", tmp_path)
    hosts.host_dir("web-1").mkdir(parents=True)
    # A stale pid file pointing at an unrelated live process (this test runner).
    (hosts.host_dir("web-1") / "supervisor.pid").write_text(f"{os.getpid()}\n")
    assert hosts.supervisor_pid("web-1") is None
    hosts.stop("web-1")  # must not kill us


def _deb(path: Path, content: bytes = b"!<arch>\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_apt_cache_takes_only_complete_debs_and_seeds_new_hosts_by_hard_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "CACHE_DIR", tmp_path / "cache")
    spec = hosts.HostSpec("web-1", "10.213.0.42")
    archives = tmp_path / "old-host" / hosts.ARCHIVES_IN_HOST
    good = _deb(archives / "hello_2.10-3_amd64.deb")
    _deb(archives / "partial" / "less_590-2_amd64.deb")  # still downloading
    _deb(archives / "empty_1_amd64.deb", b"")
    (archives / "link_1_amd64.deb").symlink_to("/etc/passwd")  # never followed
    _deb(archives / "lock", b"")

    assert hosts.harvest_apt_archives(spec, tmp_path / "old-host") == 1
    cache = settings.apt_archives_dir("bookworm")
    assert sorted(p.name for p in cache.iterdir()) == ["hello_2.10-3_amd64.deb"]
    # Harvesting again (another host with the same file) adds nothing.
    assert hosts.harvest_apt_archives(spec, tmp_path / "old-host") == 0
    # A newer version a host had to download replaces the cached one of that package/arch.
    _deb(cache / "hello-traditional_1_amd64.deb")  # another package, same prefix
    newer = tmp_path / "newer-host"
    _deb(newer / hosts.ARCHIVES_IN_HOST / "hello_2.10-4_amd64.deb")
    assert hosts.harvest_apt_archives(spec, newer) == 1
    assert sorted(p.name for p in cache.iterdir()) == [
        "hello-traditional_1_amd64.deb",
        "hello_2.10-4_amd64.deb",
    ]
    (cache / "hello_2.10-4_amd64.deb").unlink()
    (cache / "hello-traditional_1_amd64.deb").unlink()
    hosts.harvest_apt_archives(spec, tmp_path / "old-host")

    new_root = tmp_path / "new-host"
    assert hosts.seed_apt_archives(spec, new_root) == 1
    seeded = new_root / hosts.ARCHIVES_IN_HOST / good.name
    assert seeded.read_bytes() == good.read_bytes()
    assert seeded.stat().st_ino == (cache / good.name).stat().st_ino  # a link, not a copy
    # A trixie host gets nothing from the bookworm cache.
    trixie = hosts.HostSpec("web-2", "10.213.0.43", "trixie")
    assert hosts.seed_apt_archives(trixie, tmp_path / "trixie-host") == 0


def test_hosts_keep_downloaded_debs_for_the_cache() -> None:
    assert 'APT::Keep-Downloaded-Packages "true";' in settings.HOST_APT_CONF
    # The `apt` binary deletes them by default unless told per binary.
    assert 'Binary::apt::APT::Keep-Downloaded-Packages "true";' in settings.HOST_APT_CONF


RUN_ALL = settings.PROJECT_ROOT / "molecule" / "run-all"


def _run_all_sandbox(tmp_path: Path, durations: dict[str, float]) -> Path:
    """A project copy with run-all, fake scenarios, a fake molecule and a fake hostctl."""
    (tmp_path / "molecule").mkdir()
    (tmp_path / "molecule" / "run-all").write_text(RUN_ALL.read_text())
    (tmp_path / "molecule" / "run-all").chmod(0o755)
    for scenario in durations:
        (tmp_path / "molecule" / scenario).mkdir()
        (tmp_path / "molecule" / scenario / "molecule.yml").write_text(
            f"platforms:\n  - name: fake-{scenario}\n"
        )
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    # A failing scenario prints a failed task far above the tail of its log, as Ansible does.
    failing = (
        "printf 'TASK [r : Fine] ***\\nok: [h]\\nTASK [r : Breaks] ***\\n"
        "fatal: [h]: FAILED! => boom\\n'; seq -f 'filler %g' 100; exit 3"
    )
    cases = "".join(
        f"  {name}) sleep {seconds}; {failing if name.startswith('bad') else 'true'};;\n"
        for name, seconds in durations.items()
    )
    fake_molecule = bin_dir / "molecule"
    fake_molecule.write_text(
        f'#!/bin/bash\necho "start $3 $EPOCHREALTIME" >> {tmp_path}/events\n'
        f'case $3 in\n{cases}esac\nstatus=$?\necho "end $3" >> {tmp_path}/events\nexit $status\n'
    )
    fake_molecule.chmod(0o755)
    (tmp_path / "testhosts").mkdir()
    hostctl = tmp_path / "testhosts" / "hostctl"
    hostctl.write_text(
        f'#!/bin/bash\necho "hostctl $*" >> {tmp_path}/events\n'
        "[[ $1 == status ]] && echo '{\"hosts\": []}'\nexit 0\n"
    )
    hostctl.chmod(0o755)
    return tmp_path


def _run(sandbox: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean_env = {k: v for k, v in os.environ.items() if k not in ("CI", "MOLECULE_JOBS")}
    return subprocess.run(
        [str(sandbox / "molecule" / "run-all"), *args],
        capture_output=True,
        text=True,
        env={**clean_env, "MOLECULE_RUN_DIR": str(sandbox / "run"), **env},
        timeout=60,
        check=False,
    )


def test_run_all_runs_scenarios_side_by_side_and_ends_with_the_summary(tmp_path: Path) -> None:
    sandbox = _run_all_sandbox(tmp_path, {"slow": 2, "bad": 0.2, "quick": 0.5})
    result = _run(sandbox, "-j", "2", "slow", "bad", "quick")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "2 passed, 1 failed"
    assert any(line.startswith("FAIL  bad  ") and "exit 3" in line for line in lines)
    assert any(line.startswith("PASS  slow  ") for line in lines)
    events = (sandbox / "events").read_text().splitlines()
    # quick started while slow was still running (two at a time), before the cleanup.
    start_quick = next(i for i, line in enumerate(events) if line.startswith("start quick "))
    assert start_quick < events.index("end slow")
    assert events[-3:] == [
        "hostctl destroy fake-slow fake-bad fake-quick",
        "hostctl status --json",
        "hostctl net-down",
    ]
    assert (sandbox / "run" / "bad.log").is_file()
    # CI keeps only what is printed: the failed task itself, then the log's tail.
    shown = result.stdout[result.stdout.index("--- first failed task") :].splitlines()
    assert shown[1:3] == ["TASK [r : Breaks] ***", "fatal: [h]: FAILED! => boom"]
    assert "filler 100" in result.stdout
    assert (sandbox / "run" / "durations").read_text().count("\n") == 3


def test_run_all_two_at_a_time_by_default_one_on_request(tmp_path: Path) -> None:
    sandbox = _run_all_sandbox(tmp_path, {"one": 0.3, "two": 0.3, "three": 0.3})
    default = _run(sandbox, CI="1")
    assert default.stdout.strip().splitlines()[-1] == "3 passed, 0 failed"
    assert "2 at a time" in default.stdout
    assert "hostctl down --force" in (sandbox / "events").read_text()
    sequential = _run(sandbox, MOLECULE_JOBS="1")
    assert "1 at a time" in sequential.stdout
    # Never more slots than scenarios (a lone scenario's log is shown live).
    assert "1 at a time" in _run(sandbox, "-j", "4", "one").stdout


def test_run_all_starts_the_longest_scenarios_first(tmp_path: Path) -> None:
    sandbox = _run_all_sandbox(tmp_path, {"alpha": 0.1, "beta": 0.1, "gamma": 0.1})
    (sandbox / "molecule" / "shared").mkdir()
    # Shipped estimates, used until this run dir has measured wall times.
    (sandbox / "molecule" / "shared" / "durations").write_text("beta 900\nalpha 20\n")
    _run(sandbox, MOLECULE_JOBS="1")
    started = [
        e.split()[1]
        for e in (sandbox / "events").read_text().splitlines()
        if e.startswith("start ")
    ]
    assert started == ["gamma", "beta", "alpha"]  # unknown ones count as longest
    rejected = _run(sandbox, MOLECULE_JOBS="zero")
    assert rejected.returncode == 2
    assert "jobs must be a positive number" in rejected.stderr


def test_create_writes_apt_settings_seeds_the_cache_and_serialises_same_name_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(settings, "STATE_DIR", tmp_path / "state")
    monkeypatch.setattr(settings, "CACHE_DIR", tmp_path / "cache")
    base = tmp_path / "base"
    for directory in (
        "etc/apt/apt.conf.d",
        "etc/dpkg/dpkg.cfg.d",
        "etc/systemd/network",
        "etc/ssh",
        "root/.ssh",
    ):
        (base / directory).mkdir(parents=True)
    monkeypatch.setattr(rootfs, "build", lambda _distro: base)
    _deb(settings.apt_archives_dir("bookworm") / "hello_2.10-3_amd64.deb")
    spec = hosts.HostSpec("web-1", "10.213.0.42")

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [pool.submit(hosts.create, spec) for _ in range(2)]
    assert [r.exception() for r in results] == [None, None]
    root = hosts.host_dir("web-1") / "rootfs"
    assert hosts.all_names() == ["web-1"]
    assert (root / "etc/apt/apt.conf.d/00testhosts-keep-debs").read_text() == (
        settings.HOST_APT_CONF
    )
    assert "force-unsafe-io" in (root / "etc/dpkg/dpkg.cfg.d/00testhosts-unsafe-io").read_text()
    assert (root / hosts.ARCHIVES_IN_HOST / "hello_2.10-3_amd64.deb").is_file()

    # What the host downloaded goes into the cache when it is destroyed.
    _deb(root / hosts.ARCHIVES_IN_HOST / "less_590-2_amd64.deb")
    hosts.destroy("web-1")
    assert not hosts.host_dir("web-1").exists()
    assert (settings.apt_archives_dir("bookworm") / "less_590-2_amd64.deb").is_file()


def test_stop_waits_for_the_kernel_to_remove_the_hosts_network_link() -> None:
    """A host booted again right after a destroy (the backup scenario rebuilds its db host)
    failed with "Failed to add new veth interfaces ... File exists": the kernel removes a
    dead namespace's veth after nspawn has exited. A real veth pair stands in."""
    name = f"aatest{os.getpid() % 100000}"
    subprocess.run(
        ["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"], check=True
    )
    try:
        index = int(Path(f"/sys/class/net/{name}/ifindex").read_text())
        assert hosts._wait_link_gone(index, timeout=0.3) is False
        remover = threading.Timer(0.5, subprocess.run, (["ip", "link", "delete", name],))
        remover.start()
        assert hosts._wait_link_gone(index, timeout=10) is True
        remover.join()
    finally:
        subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)
