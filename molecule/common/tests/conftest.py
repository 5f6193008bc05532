"""Helpers shared by the common scenario's tests: addresses, probes, other hosts."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import testinfra

ADDRESSES = {"common-bookworm": "10.213.0.10", "common-trixie": "10.213.0.11"}
LB_HOSTS = {"common-bookworm"}
# Internal ports (common_firewall_internal_services): PostgreSQL is for the app hosts
# (never the load balancer), the app instances are for the load balancer.
POSTGRESQL_PORT = 5432
APP_INSTANCE_PORT = 8001
CLOSED_PORT = 9999  # in no list: must be dropped from everywhere


def name_of(host: Any) -> str:
    return str(host.backend.get_hostname())


def other_host(host: Any) -> Any:
    """The scenario's other host, as a testinfra host (a project host for the firewall)."""
    (other,) = [name for name in ADDRESSES if name != name_of(host)]
    return testinfra.get_host(
        f"ansible://{other}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
    )


def reachable_from_here(address: str, port: int, timeout: float = 2.0) -> bool:
    """TCP connect from this machine (10.213.0.1 on the bridge: not a project host)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def reachable_from(remote: Any, address: str, port: int) -> bool:
    script = f"import socket; socket.create_connection(('{address}', {port}), timeout=2)"
    return bool(remote.run(f'python3 -c "{script}"').rc == 0)


@pytest.fixture
def listeners(host: Any) -> Iterator[list[int]]:
    """Throwaway TCP listeners on the host under test, on public, internal and closed ports."""
    ports = [80, POSTGRESQL_PORT, APP_INSTANCE_PORT, CLOSED_PORT]
    for port in ports:
        host.run(f"systemctl stop fwprobe-{port}.service")
        server = f"python3 -m http.server --bind 0.0.0.0 {port}"
        started = host.run(f"systemd-run --unit=fwprobe-{port} --collect {server}")
        assert started.rc == 0, started.stderr
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(host.socket(f"tcp://0.0.0.0:{port}").is_listening for port in ports):
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"probe listeners did not come up: {host.run('ss -ltn').stdout}")
    yield ports
    for port in ports:
        host.run(f"systemctl stop fwprobe-{port}.service")
