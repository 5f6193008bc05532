"""What the fleet tests share: hosts and addresses from molecule.yml, the playbooks as an
operator runs them, artifacts built from changed copies of the app, and readings of every
app host and of the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import testinfra
import yaml

SCENARIO_DIR = Path(__file__).parent.parent
PROJECT_DIR = SCENARIO_DIR.parent.parent
sys.path.insert(0, str(PROJECT_DIR))
from tests.release_sources import build_artifact, migration  # noqa: E402, F401 - migration: for the tests

EPHEMERAL = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"))
MOLECULE_YML = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
PLATFORMS = {platform["name"]: platform for platform in MOLECULE_YML["platforms"]}

LB_HOST = "fl-lb"
APP_HOSTS = ["fl-app1", "fl-app2", "fl-app3"]
CANARY = APP_HOSTS[0]
DATA_HOST = "fl-data"
SITE_URL = f"https://{PLATFORMS[LB_HOST]['address']}"
APP_ROOT = "/opt/assistantapp"
BLUE_GREEN_PORTS = (8001, 8002)
CANARY_SECONDS = MOLECULE_YML["provisioner"]["inventory"]["group_vars"]["all"]["app_canary_seconds"]


def ca_file() -> str:
    return str(EPHEMERAL / "pki" / "ca.crt")


def remote(name: str):
    return testinfra.get_host(f"ansible://{name}",
                              ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def playbook_command(name: str, *args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("ansible-playbook")), "-i",
            os.environ["MOLECULE_INVENTORY_FILE"], str(PROJECT_DIR / "playbooks" / name), *args]


def ansible_env() -> dict[str, str]:
    return dict(os.environ, ANSIBLE_CONFIG=str(EPHEMERAL / "ansible.cfg"), ANSIBLE_NOCOLOR="1")


def playbook(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs playbooks/<name> as an operator would, against the scenario's inventory."""
    return subprocess.run(playbook_command(name, *args),  # noqa: S603 - our own playbooks
                          env=ansible_env(), cwd=PROJECT_DIR, capture_output=True, text=True,
                          timeout=1200, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    """stdout + stderr with YAML's line folding and quote doubling undone."""
    return " ".join((result.stdout + result.stderr).split()).replace("''", "'")


def build(name: str, *patches) -> str:
    """An artifact from a copy of the project's app sources, changed by each patch(src)."""
    return build_artifact(EPHEMERAL, name, *patches)


def never_ready_on(hostname: str):
    """A patch: the server refuses to start on one host (check-config still passes)."""
    def patch(src: Path) -> None:
        with (src / "app/__init__.py").open("a") as fh:
            fh.write("\nimport os as _os\nimport socket as _socket\n\n"
                     f"if _os.environ.get('PORT') and _socket.gethostname() == {hostname!r}:\n"
                     "    raise SystemExit('fleet test: this build never becomes ready here')\n")
    return patch


def psql(sql: str) -> str:
    result = remote(DATA_HOST).run("runuser -u postgres -- psql -d assistantapp -tAc %s", sql)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def head() -> str:
    """The database's migration head as aerich records it."""
    return psql("SELECT regexp_replace(version, '[.]py$', '') FROM aerich ORDER BY id DESC LIMIT 1")


def table_exists(table: str) -> bool:
    return psql(f"SELECT to_regclass('public.{table}') IS NOT NULL") == "t"


def state(name: str) -> dict:
    return json.loads(remote(name).file(f"{APP_ROOT}/state.json").content_string)


def active_ports(name: str) -> list[int]:
    host = remote(name)
    return [port for port in BLUE_GREEN_PORTS
            if host.run(f"systemctl is-active --quiet assistantapp@{port}").rc == 0]


def fleet() -> dict[str, tuple[str, list[int], list[str]]]:
    """Per app host: its recorded release, the ports systemd runs, its release directories."""
    return {name: (state(name)["release"], active_ports(name),
                   sorted(remote(name).file(f"{APP_ROOT}/releases").listdir()))
            for name in APP_HOSTS}


def unit_timestamp(name: str, unit: str, prop: str) -> float | None:
    """A systemd timestamp of a running unit on a host, as Unix time (None when never).
    A stopped instance of a template unit is unloaded and forgets its timestamps: use
    unit_events() for those."""
    value = remote(name).check_output(
        f"systemctl show --timestamp=unix -p {prop} --value {unit}").strip()
    return float(value.lstrip("@")) if value.startswith("@") else None


def unit_events(name: str, unit: str, since: float) -> dict[str, list[float]]:
    """When systemd started and stopped `unit` on a host since `since` (Unix time), from
    its journal: {"started": [...], "stopped": [...]}."""
    out = remote(name).check_output(
        f"journalctl -u {unit} --since @{int(since)} -o json --output-fields=MESSAGE "
        "--no-pager")
    events: dict[str, list[float]] = {"started": [], "stopped": []}
    for line in out.splitlines():
        entry = json.loads(line)
        message = str(entry.get("MESSAGE", ""))
        at = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        if message.startswith("Started "):
            events["started"].append(at)
        elif message.startswith("Stopped "):
            events["stopped"].append(at)
    return events


def ready_through_nginx() -> int:
    with httpx.Client(verify=ca_file(), timeout=10, trust_env=False) as client:
        return client.get(f"{SITE_URL}/health/ready").status_code
