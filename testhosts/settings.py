"""Where the tool keeps things and the fixed names of what it creates."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The rootfs cache survives between runs (debootstrap is the slow part).
CACHE_DIR = Path(os.environ.get("TESTHOSTS_CACHE_DIR", "/var/cache/assistantapp-testhosts"))
# Host copies, the SSH keypair and supervisor pids live in the project's temp dir.
STATE_DIR = Path(os.environ.get("TESTHOSTS_STATE_DIR", str(PROJECT_ROOT / ".tmp" / "testhosts")))

BRIDGE = "aabr0"
# Marks the bridge as ours, so `down` never deletes a bridge someone else made.
BRIDGE_ALIAS = "assistantapp-testhosts"
GATEWAY = "10.213.0.1"
SUBNET = "10.213.0.0/24"
PREFIX_LEN = 24
NFT_TABLE = "assistantapp_testhosts"

DISTROS = ("bookworm", "trixie")
DEFAULT_DISTRO = "bookworm"
# dbus: hostnamectl, systemd-run and the reboot module need it.
# python3-apt: Ansible's apt module would otherwise install it on every host.
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-apt",
    "sudo",
    "openssh-server",
    "iproute2",
    "ca-certificates",
)
# Bump when the way a base rootfs is built changes: cached ones are rebuilt.
ROOTFS_FORMAT = 1

BOOT_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
# systemd-nspawn's exit status when the container asked for a reboot.
NSPAWN_REBOOT_EXIT = 133


# Extra apt/dpkg settings written into every host copy (not the cached rootfs, so
# existing caches stay valid). Downloaded .debs are kept so `destroy` can harvest
# them into the shared cache (apt-get keeps them by default, the `apt` binary
# does not); no Translation-* indexes (package descriptions only: several MB
# per host per `apt-get update` that nothing reads); dpkg skips fsync - a
# throwaway host never needs crash safety, and fsync per unpacked file is what
# makes package installs slow on a loaded disk.
HOST_APT_CONF = (
    "// Written by testhosts: keep .debs for the shared download cache.\n"
    'APT::Keep-Downloaded-Packages "true";\n'
    'Binary::apt::APT::Keep-Downloaded-Packages "true";\n'
    "// Throwaway test host: no translated package descriptions.\n"
    'Acquire::Languages "none";\n'
    "// A stalled mirror connection must fail and be retried, not hang a CI run.\n"
    'Acquire::http::Timeout "30";\n'
    'Acquire::https::Timeout "30";\n'
    'Acquire::Retries "3";\n'
)
HOST_DPKG_CFG = "# Written by testhosts: throwaway host, no fsync per file.\nforce-unsafe-io\n"


def hosts_dir() -> Path:
    return STATE_DIR / "hosts"


def apt_archives_dir(distro: str) -> Path:
    """Shared .deb download cache for one distribution (filled by `destroy`)."""
    return CACHE_DIR / "apt-archives" / distro


def ssh_key_path() -> Path:
    return STATE_DIR / "ssh" / "id_ed25519"
