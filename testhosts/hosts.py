"""Named hosts: a copy of a cached rootfs booted by systemd-nspawn under a small supervisor."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from testhosts import network, rootfs, settings
from testhosts.util import TestHostsError, locked, log, run

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str
    distro: str = settings.DEFAULT_DISTRO

    @classmethod
    def parse(cls, text: str) -> HostSpec:
        """NAME:ADDRESS[:DISTRO], e.g. common-trixie:10.213.0.11:trixie."""
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise TestHostsError(f"host spec {text!r} must be NAME:ADDRESS[:DISTRO]")
        spec = cls(*parts)
        spec.validate()
        return spec

    def validate(self) -> None:
        if not NAME_RE.match(self.name):
            raise TestHostsError(f"host name {self.name!r}: use lowercase letters, digits and '-'")
        if self.distro not in settings.DISTROS:
            raise TestHostsError(
                f"{self.name}: distro {self.distro!r} not one of {', '.join(settings.DISTROS)}"
            )
        try:
            address = ipaddress.ip_address(self.address)
        except ValueError as exc:
            raise TestHostsError(f"{self.name}: {exc}") from exc
        subnet = ipaddress.ip_network(settings.SUBNET)
        if (
            address not in subnet
            or address in (subnet.network_address, subnet.broadcast_address)
            or str(address) == settings.GATEWAY
        ):
            raise TestHostsError(
                f"{self.name}: address {self.address} must be a host address in {settings.SUBNET}"
            )


def host_dir(name: str) -> Path:
    return settings.hosts_dir() / name


def _spec_file(name: str) -> Path:
    return host_dir(name) / "host.json"


def load_spec(name: str) -> HostSpec:
    if not _spec_file(name).is_file():
        raise TestHostsError(f"no host named {name!r} (see `status`)")
    return HostSpec(**json.loads(_spec_file(name).read_text()))


def all_names() -> list[str]:
    if not settings.hosts_dir().is_dir():
        return []
    return sorted(p.name for p in settings.hosts_dir().iterdir() if (p / "host.json").is_file())


# ---------------------------------------------------------------- SSH key


def ensure_ssh_key() -> Path:
    """A throwaway keypair for this project checkout, authorised for root on every host."""
    key = settings.ssh_key_path()
    with locked(settings.STATE_DIR / "ssh.lock"):
        if key.exists():
            return key
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "assistantapp-testhosts",
                "-f",
                str(key),
            ]
        )
    return key


# ---------------------------------------------------------------- shared apt download cache

ARCHIVES_IN_HOST = Path("var/cache/apt/archives")


def _complete_debs(directory: Path) -> list[Path]:
    """Regular *.deb files directly in directory (apt moves a download there only once
    it is complete and verified; partial/ and symlinks are never taken)."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if path.suffix != ".deb":
            continue
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_size > 0:
            found.append(path)
    return found


def _link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link source to target (atomic; a copy + rename across filesystems).
    False if target already exists. Nobody rewrites a .deb in place (apt downloads
    into partial/ and renames), so sharing the inode between hosts is safe."""
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError:
        if target.exists():
            return False
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    return True


def seed_apt_archives(spec: HostSpec, root: Path) -> int:
    """Put every cached .deb of the host's distro into its /var/cache/apt/archives, so apt
    finds them there (checked against the index hashes) instead of downloading them."""
    archives = root / ARCHIVES_IN_HOST
    archives.mkdir(parents=True, exist_ok=True)
    cached = _complete_debs(settings.apt_archives_dir(spec.distro))
    return sum(_link_or_copy(deb, archives / deb.name) for deb in cached)


def harvest_apt_archives(spec: HostSpec, root: Path) -> int:
    """Add the .debs the host downloaded to the shared cache (before it is deleted).
    Each host keeps its own archives dir: sharing one live dir between hosts would make
    concurrent apt runs fail on its lock ("Unable to lock the download directory")."""
    cache = settings.apt_archives_dir(spec.distro)
    debs = _complete_debs(root / ARCHIVES_IN_HOST)
    if not debs:
        return 0
    cache.mkdir(parents=True, exist_ok=True)
    added = [deb.name for deb in debs if _link_or_copy(deb, cache / deb.name)]
    _drop_superseded(cache, added)
    return len(added)


def _drop_superseded(cache: Path, added: list[str]) -> None:
    """Keep the cache from growing forever: a .deb a host just had to download is the
    mirror's current version, so other cached versions of that package/arch are old.
    (Hosts already seeded with them hold their own links.)"""
    for name in added:
        parts = name.removesuffix(".deb").split("_")
        if len(parts) != 3:
            continue
        package, _version, arch = parts
        for old in cache.glob(f"{package}_*_{arch}.deb"):
            if old.name != name and old.name.count("_") == 2:
                old.unlink(missing_ok=True)


# ---------------------------------------------------------------- create / destroy


def _network_file(spec: HostSpec) -> str:
    return (
        "# Written by testhosts: fixed address on the nspawn veth (sorts before\n"
        "# systemd's own 80-container-host0.network, which would win otherwise).\n"
        "[Match]\nName=host0\n\n"
        f"[Network]\nAddress={spec.address}/{settings.PREFIX_LEN}\nGateway={settings.GATEWAY}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    )


def _host_lock(name: str) -> Path:
    # Outside the host's dir, which destroy deletes.
    return settings.hosts_dir() / f".{name}.lock"


def create(spec: HostSpec) -> None:
    """Copy the cached rootfs and give the copy its own identity. No-op if it exists."""
    spec.validate()
    # Two runs creating the same host: the second waits, then finds it complete.
    with locked(_host_lock(spec.name)):
        _create_unlocked(spec)


def _create_unlocked(spec: HostSpec) -> None:
    if _spec_file(spec.name).is_file():
        existing = load_spec(spec.name)
        if existing != spec:
            raise TestHostsError(f"host {spec.name} exists as {existing}; destroy it first")
        return
    for other in all_names():
        if load_spec(other).address == spec.address:
            raise TestHostsError(f"address {spec.address} already used by host {other}")
    base = rootfs.build(spec.distro)
    key = ensure_ssh_key()
    directory = host_dir(spec.name)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    root = directory / "rootfs"
    run(["cp", "--reflink=auto", "-a", str(base), str(root)])
    (root / "etc/hostname").write_text(f"{spec.name}\n")
    (root / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{spec.name}\n::1\tlocalhost ip6-localhost\n"
    )
    (root / "etc/machine-id").write_text(f"{uuid.uuid4().hex}\n")
    (root / "etc/ssh").mkdir(exist_ok=True)
    run(["ssh-keygen", "-A", "-f", str(root)])
    authorized = root / "root/.ssh/authorized_keys"
    authorized.parent.mkdir(mode=0o700, exist_ok=True)
    authorized.write_text(key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    (root / "etc/systemd/network/10-testhosts-host0.network").write_text(_network_file(spec))
    (root / "etc/apt/apt.conf.d/00testhosts-keep-debs").write_text(settings.HOST_APT_CONF)
    (root / "etc/dpkg/dpkg.cfg.d/00testhosts-unsafe-io").write_text(settings.HOST_DPKG_CFG)
    seeded = seed_apt_archives(spec, root)
    # Written last: a host.json means the copy is complete.
    _spec_file(spec.name).write_text(json.dumps(asdict(spec)))
    log(f"created {spec.name} ({spec.distro}, {spec.address}, {seeded} cached .debs)")


def destroy(name: str) -> None:
    with locked(_host_lock(name)):
        _destroy_unlocked(name)


def _destroy_unlocked(name: str) -> None:
    if host_dir(name).exists():
        stop(name)
        if _spec_file(name).is_file():
            spec = load_spec(name)
            harvested = harvest_apt_archives(spec, host_dir(name) / "rootfs")
            if harvested:
                log(f"{name}: {harvested} new .debs into {settings.apt_archives_dir(spec.distro)}")
        shutil.rmtree(host_dir(name))
        log(f"destroyed {name}")


# ---------------------------------------------------------------- processes


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def supervisor_pid(name: str) -> int | None:
    """The recorded supervisor pid, only if that process is really our supervisor for name."""
    pid = _read_pid(host_dir(name) / "supervisor.pid")
    if pid is None:
        return None
    cmdline = _cmdline(pid)
    if ("_supervise", name) in itertools.pairwise(cmdline):
        return pid
    return None


def nspawn_pid(name: str) -> int | None:
    pid = _read_pid(host_dir(name) / "nspawn.pid")
    if pid is None:
        return None
    cmdline = _cmdline(pid)
    if (
        cmdline
        and cmdline[0].endswith("systemd-nspawn")
        and ("-M", name) in itertools.pairwise(cmdline)
    ):
        return pid
    return None


def leader_pid(name: str) -> int | None:
    """The container's PID 1: nspawn's child whose comm is systemd."""
    parent = nspawn_pid(name)
    if parent is None:
        return None
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                return int(child)
        except OSError:
            continue
    return None


def nspawn_command(spec: HostSpec) -> list[str]:
    return [
        "systemd-nspawn",
        "-q",
        # The machine running the tool has no systemd/dbus to register with.
        "--register=no",
        "--keep-unit",
        "-b",
        "-D",
        str(host_dir(spec.name) / "rootfs"),
        "-M",
        spec.name,
        f"--network-bridge={settings.BRIDGE}",
        "--console=read-only",
        # The host manages its own clock zone (the common role sets it).
        "--timezone=off",
        "--resolv-conf=copy-host",
        # Keep the journal inside the host; never link it into this machine's /var/log/journal.
        "--link-journal=no",
    ]


def supervise(name: str) -> int:
    """Run nspawn in the foreground, restarting it when the host reboots (exit 133)."""
    spec = load_spec(name)
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward_term(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # nspawn powers the host off cleanly

    signal.signal(signal.SIGTERM, forward_term)
    signal.signal(signal.SIGINT, forward_term)
    (host_dir(name) / "supervisor.pid").write_text(f"{os.getpid()}\n")
    while True:
        child = subprocess.Popen(nspawn_command(spec), stdin=subprocess.DEVNULL)
        (host_dir(name) / "nspawn.pid").write_text(f"{child.pid}\n")
        returncode = child.wait()
        print(f"testhosts: nspawn for {name} exited {returncode}", flush=True)
        if stopping or returncode != settings.NSPAWN_REBOOT_EXIT:
            break
        print(f"testhosts: {name} rebooted, starting it again", flush=True)
    (host_dir(name) / "nspawn.pid").unlink(missing_ok=True)
    (host_dir(name) / "supervisor.pid").unlink(missing_ok=True)
    return returncode


def _launch_supervisor(name: str) -> subprocess.Popen[bytes]:
    console = (host_dir(name) / "console.log").open("ab")
    env = dict(os.environ, PYTHONPATH=str(settings.PROJECT_ROOT))
    # Detached: new session, no inherited descriptors, so callers
    # (Ansible's command module) never wait on our pipes.
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "testhosts", "_supervise", name],
        stdin=subprocess.DEVNULL,
        stdout=console,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
        cwd=str(settings.PROJECT_ROOT),
        env=env,
    )
    console.close()
    (host_dir(name) / "supervisor.pid").write_text(f"{supervisor.pid}\n")
    return supervisor


def system_state(name: str) -> str | None:
    leader = leader_pid(name)
    if leader is None:
        return None
    result = run(
        ["nsenter", "-t", str(leader), "-a", "systemctl", "is-system-running"], check=False
    )
    return result.stdout.strip() or None


def _ssh_ready(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=1.0) as conn:
            return conn.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def wait_booted(
    name: str,
    supervisor: subprocess.Popen[bytes] | None = None,
    timeout: float = settings.BOOT_TIMEOUT_S,
) -> str:
    """Wait until systemd finished booting and sshd answers; returns the system state."""
    spec = load_spec(name)
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        exited = (
            supervisor.poll() is not None
            if supervisor is not None
            else supervisor_pid(name) is None
        )
        if exited:
            tail = (host_dir(name) / "console.log").read_text(errors="replace")[-2000:]
            raise TestHostsError(f"{name} stopped while booting; console tail:\n{tail}")
        leader = leader_pid(name)
        if leader is not None:
            # Fails when asked before the container's systemd is up: retry.
            result = subprocess.run(
                ["nsenter", "-t", str(leader), "-a", "systemctl", "is-system-running", "--wait"],
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
            state = result.stdout.strip()
            if state in ("running", "degraded") and _ssh_ready(spec.address):
                return state
        time.sleep(0.5)
    raise TestHostsError(
        f"{name} did not finish booting within {timeout:.0f}s (last state: {state})"
    )


def start(name: str) -> str:
    """Boot the host (no-op if running) and wait until it is usable."""
    load_spec(name)
    supervisor = None
    if supervisor_pid(name) is None:
        network.up()
        (host_dir(name) / "console.log").unlink(missing_ok=True)
        supervisor = _launch_supervisor(name)
    started = time.monotonic()
    state = wait_booted(name, supervisor)
    if state != "running":
        failed = run(
            ["nsenter", "-t", str(leader_pid(name)), "-a", "systemctl", "--failed", "--no-legend"],
            check=False,
        )
        log(f"{name} is {state}: {failed.stdout.strip()}")
    log(f"{name} up ({state}) in {time.monotonic() - started:.1f}s")
    return state


def _host_side_veth(name: str) -> int | None:
    """Interface index of the host's veth on the machine's side (the peer of its host0)."""
    leader = leader_pid(name)
    if leader is None:
        return None
    result = run(
        ["nsenter", "-t", str(leader), "-n", "ip", "-o", "link", "show", "host0"], check=False
    )
    match = re.search(r"host0@if(\d+):", result.stdout)
    return int(match.group(1)) if match else None


def _wait_link_gone(index: int, timeout: float) -> bool:
    """The kernel removes a dead namespace's veth pair in deferred work, after nspawn exited:
    booting a host of the same name before that fails ("Failed to add new veth interfaces
    ... File exists"), so a stop waits for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        links = run(["ip", "-o", "link", "show"], check=False).stdout
        if not re.search(rf"^{index}: ", links, re.MULTILINE):
            return True
        time.sleep(0.1)
    return False


def stop(name: str) -> None:
    """Power the host off (SIGTERM to nspawn via the supervisor); kill only if it hangs.
    Returns once the host's network link is gone too."""
    supervisor = supervisor_pid(name)
    if supervisor is None:
        return
    veth = _host_side_veth(name)
    os.kill(supervisor, signal.SIGTERM)
    deadline = time.monotonic() + settings.STOP_TIMEOUT_S
    while time.monotonic() < deadline and supervisor_pid(name) is not None:
        time.sleep(0.2)
    if supervisor_pid(name) is not None:
        log(f"{name} did not power off in {settings.STOP_TIMEOUT_S:.0f}s, killing it")
        # The container's own init first: SIGKILL to a PID namespace's PID 1 ends every
        # process in it, so no half-running host keeps its network link.
        leader = leader_pid(name)
        spawn = nspawn_pid(name)
        for pid in (leader, spawn):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        os.kill(supervisor, signal.SIGKILL)
        (host_dir(name) / "supervisor.pid").unlink(missing_ok=True)
        (host_dir(name) / "nspawn.pid").unlink(missing_ok=True)
    if veth is not None and not _wait_link_gone(veth, settings.STOP_TIMEOUT_S):
        log(
            f"{name}: its veth (index {veth}) still exists"
            f" {settings.STOP_TIMEOUT_S:.0f}s after power-off"
        )
    log(f"stopped {name}")


def status(name: str) -> dict[str, object]:
    spec = load_spec(name)
    running = supervisor_pid(name) is not None
    return {
        **asdict(spec),
        "running": running,
        "pid": leader_pid(name) if running else None,
        "system_state": system_state(name) if running else None,
        "user": "root",
        "port": 22,
        "identity_file": str(settings.ssh_key_path()),
    }
