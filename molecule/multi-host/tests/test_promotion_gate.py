"""The production promotion gate (roles/app/tasks/verify_promotion.yml) reading a real
release log over SSH, as a production inventory reads staging's: mh-app1 plays the
staging app host (its log records the deploys of this scenario, which runs as staging)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from multihost_scenario import APP_ADDRESSES, APP_ROOT, PROJECT_DIR, remote

testinfra_hosts = ["mh-app1"]

STAGING_HOST = "mh-app1"
GATE_TASKS = PROJECT_DIR / "roles" / "app" / "tasks" / "verify_promotion.yml"


def inventory_host(name: str) -> dict:
    result = subprocess.run(  # noqa: S603 - the scenario's own inventory
        ["ansible-inventory", "-i", os.environ["MOLECULE_INVENTORY_FILE"],  # noqa: S607
         "--host", name], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(result.stdout)


def run_gate(tmp_path: Path, commit: str, source: str) -> subprocess.CompletedProcess[str]:
    """verify_promotion.yml on the controller, for a production deploy of `commit`."""
    connection = inventory_host(STAGING_HOST)
    playbook = tmp_path / "gate.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Promotion gate",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [{
            "name": "Check it",
            "ansible.builtin.include_tasks": str(GATE_TASKS),
        }],
    }]))
    extra = {
        # The controller's own Python, as the implicit localhost of an inventory gets it.
        "ansible_python_interpreter": sys.executable,
        "app_env_name": "production",
        "app_manifest": {"commit": commit},
        "app_promotion_source": source,
        "app_promotion_release_log": f"{APP_ROOT}/releases.log",
        # The scenario's throwaway key; a real inventory sets its own ssh arguments.
        "app_promotion_ssh_args": [
            "-i", connection["ansible_private_key_file"],
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        ],
    }
    return subprocess.run(  # noqa: S603 - our own task file, fixed arguments
        ["ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook),  # noqa: S607
         "-e", json.dumps(extra)],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=300, check=False)


def deployed_commit() -> str:
    log = remote(STAGING_HOST).file(f"{APP_ROOT}/releases.log").content_string
    deploys = [entry for entry in map(json.loads, log.splitlines()) if entry["event"] == "deploy"]
    assert deploys, log
    return deploys[-1]["commit"]


def test_a_commit_staging_deployed_passes(host, tmp_path):
    result = run_gate(tmp_path, deployed_commit(), f"root@{APP_ADDRESSES[STAGING_HOST]}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "✓ commit" in output and "deployed to staging first" in output, output[-3000:]


@pytest.mark.parametrize(("user", "reason"), [
    ("root", "staging has no successful deploy of it in"),
    ("nobody-here", "cannot read staging release log from"),
])
def test_a_commit_staging_never_deployed_is_refused(host, tmp_path, user, reason):
    source = f"{user}@{APP_ADDRESSES[STAGING_HOST]}"
    result = run_gate(tmp_path, "0123456789ab", source)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Refusing to deploy commit 0123456789ab to production" in output, output[-3000:]
    assert f"{reason} {source}" in output, output[-3000:]
    if user != "root":  # says why it could not read the log, in ssh's words
        assert "Permission denied" in output, output[-3000:]
