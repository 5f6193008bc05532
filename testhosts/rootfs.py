"""Build and cache one debootstrap'd Debian rootfs per distribution."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from testhosts import settings
from testhosts.util import TestHostsError, locked, log, run

SOURCES_LIST = Path("/etc/apt/sources.list")
SOURCES_DIR = Path("/etc/apt/sources.list.d")


def _configured_uris() -> list[str]:
    """Every apt URI this machine is configured with (one-line and deb822 formats)."""
    uris: list[str] = []
    files = [SOURCES_LIST]
    if SOURCES_DIR.is_dir():
        files += sorted(p for p in SOURCES_DIR.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            one_line = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
            deb822 = re.match(r"^URIs:\s*(.+)$", line, re.IGNORECASE)
            if one_line:
                uris.append(one_line.group(1))
            elif deb822:
                uris.extend(deb822.group(1).split())
    return uris


def mirrors() -> tuple[str, str]:
    """The Debian mirror and security mirror configured on this machine (env overrides)."""
    uris = [u.rstrip("/") for u in _configured_uris()]
    main = os.environ.get("TESTHOSTS_MIRROR") or next(
        (u for u in uris if u.endswith("/debian")), ""
    )
    security = os.environ.get("TESTHOSTS_SECURITY_MIRROR") or next(
        (u for u in uris if u.endswith("/debian-security")), ""
    )
    if not main:
        raise TestHostsError("no Debian mirror in /etc/apt/sources.list(.d); set TESTHOSTS_MIRROR")
    return main, security or main.removesuffix("/debian") + "/debian-security"


def rootfs_path(distro: str) -> Path:
    return settings.CACHE_DIR / "rootfs" / distro


def _stamp_path(distro: str) -> Path:
    return settings.CACHE_DIR / "rootfs" / f"{distro}.json"


def _wanted_stamp(distro: str) -> dict[str, object]:
    return {
        "format": settings.ROOTFS_FORMAT,
        "distro": distro,
        "packages": list(settings.BASE_PACKAGES),
    }


def is_cached(distro: str) -> bool:
    stamp = _stamp_path(distro)
    if not rootfs_path(distro).is_dir() or not stamp.is_file():
        return False
    recorded = json.loads(stamp.read_text())
    return all(recorded.get(key) == value for key, value in _wanted_stamp(distro).items())


def _sources_list(distro: str, main: str, security: str) -> str:
    return (
        f"deb {main} {distro} main\n"
        f"deb {main} {distro}-updates main\n"
        f"deb {security} {distro}-security main\n"
    )


def _prepare_for_hosts(root: Path, distro: str) -> None:
    """Turn a fresh debootstrap into a base every host copy starts from."""
    main, security = mirrors()
    (root / "etc/apt/sources.list").write_text(_sources_list(distro, main, security))
    # Per-host identity is generated on each copy (see hosts.create), never shared.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
        dbus_id.symlink_to("/etc/machine-id")
    (root / "etc/hostname").unlink(missing_ok=True)
    # Static addressing on host0 is written per host; networkd applies it at boot.
    run(["systemctl", f"--root={root}", "enable", "systemd-networkd.service"])
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    run(["chroot", str(root), "apt-get", "clean"])


def build(distro: str, *, force: bool = False) -> Path:
    """Return the cached rootfs for distro, building it first if needed (~1 min)."""
    if distro not in settings.DISTROS:
        raise TestHostsError(
            f"unknown distro {distro!r}; choose one of {', '.join(settings.DISTROS)}"
        )
    final = rootfs_path(distro)
    with locked(settings.CACHE_DIR / f"build-{distro}.lock"):
        if is_cached(distro) and not force:
            return final
        main, _ = mirrors()
        staging = final.with_name(f"{distro}.building")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        log(f"building {distro} rootfs from {main} (about a minute)")
        started = time.monotonic()
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(settings.BASE_PACKAGES)}",
            distro,
            str(staging),
            main,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise TestHostsError(f"debootstrap {distro} failed:\n{tail}")
        _prepare_for_hosts(staging, distro)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        _stamp_path(distro).write_text(json.dumps(_wanted_stamp(distro)))
        log(f"{distro} rootfs ready in {time.monotonic() - started:.0f}s: {final}")
        return final
