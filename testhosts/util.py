"""Small helpers: running commands, locking, logging to stderr."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path


class TestHostsError(Exception):
    """A failure with a message meant for the person running the tool."""

    __test__ = False  # not a pytest test class, despite the name


def log(message: str) -> None:
    # stdout is reserved for machine-readable output (--json).
    print(f"testhosts: {message}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str], *, check: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(cmd), capture_output=True, text=True, input=input_text, check=False
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise TestHostsError(f"{' '.join(cmd)} failed ({result.returncode}): {detail}")
    return result


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise a critical section across processes (several runs may share the tool)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Command -> Debian package providing it (the tool's own dependencies on this machine).
REQUIRED_COMMANDS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nft": "nftables",
}


def ensure_host_packages() -> None:
    """apt-get install what the tool needs, only if a command is missing."""
    missing = sorted({pkg for cmd, pkg in REQUIRED_COMMANDS.items() if shutil.which(cmd) is None})
    if not missing:
        return
    log(f"installing {' '.join(missing)}")
    run(["apt-get", "install", "-y", "--no-install-recommends", *missing])
