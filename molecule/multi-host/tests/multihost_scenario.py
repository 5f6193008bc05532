"""What the multi-host tests share: addresses from molecule.yml and the project CA."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import testinfra
import yaml

SCENARIO_DIR = Path(__file__).parent.parent
PROJECT_DIR = SCENARIO_DIR.parent.parent
MOLECULE_YML = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
PLATFORMS = {platform["name"]: platform for platform in MOLECULE_YML["platforms"]}
SCENARIO_VARS = MOLECULE_YML["provisioner"]["inventory"]["group_vars"]["all"]

LB_HOST = "mh-lb"
APP_HOSTS = ["mh-app1", "mh-app2"]
DATA_HOST = "mh-data"
LB_ADDRESS = PLATFORMS[LB_HOST]["address"]
DATA_ADDRESS = PLATFORMS[DATA_HOST]["address"]
APP_ADDRESSES = {name: PLATFORMS[name]["address"] for name in APP_HOSTS}

APP_ROOT = "/opt/assistantapp"
APP_LOG = f"{APP_ROOT}/shared/logs/app.log"
SITE_URL = f"https://{LB_ADDRESS}"


def ca_file() -> str:
    """The project CA the nginx role generated on the controller (nginx_pki_dir)."""
    return str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki" / "ca.crt")


def remote(name: str):
    """A testinfra host for any platform of the scenario (the molecule inventory)."""
    return testinfra.get_host(f"ansible://{name}",
                              ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def live_port(host) -> int:
    """Port of the instance the app host runs live (the app role's state file)."""
    state = json.loads(host.file(f"{APP_ROOT}/state.json").content_string)
    return int(state["live_port"])


def wait_for(predicate, timeout_s: float, interval_s: float = 0.5):
    """Poll until predicate() is truthy; return its last value."""
    deadline = time.monotonic() + timeout_s
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = predicate()
    return value


def playbook(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs playbooks/<name> as an operator would, against the scenario's inventory."""
    return subprocess.run(  # noqa: S603 - our own playbook, the scenario's inventory
        ["ansible-playbook", "-i",  # noqa: S607 - the venv's, first on PATH
         os.environ["MOLECULE_INVENTORY_FILE"], str(PROJECT_DIR / "playbooks" / name), *args],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=900, check=False)


BLUE_GREEN_PORTS = (8001, 8002)


def other_port(port: int) -> int:
    """The blue/green port that is not `port` (where the next deploy starts)."""
    return sum(BLUE_GREEN_PORTS) - port


def active_ports(name: str) -> list[int]:
    """The blue/green ports whose instance systemd runs on app host `name`."""
    host = remote(name)
    return [port for port in BLUE_GREEN_PORTS
            if host.run(f"systemctl is-active --quiet assistantapp@{port}").rc == 0]


def tcp_connects(host, address: str, port: int) -> bool:
    """Whether `host` opens a TCP connection to address:port (bash's /dev/tcp: no client
    package needed; a dropped SYN ends with timeout's 124)."""
    return host.run("timeout 3 bash -c %s", f"</dev/tcp/{address}/{port}").rc == 0
