"""playbooks/site.yml run again from the controller against the converged hosts,
the way operators run it: a `--check --diff` run with rotated secrets prints no
secret (nor its SHA-256), and `--tags <role or concern>` runs touch only what
they name and change nothing."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from twohost_scenario import DB_HOST, LB_HOST, SCENARIO_DIR, SCENARIO_VARS

# These tests run ansible-playbook on the controller; one host keeps them to one pass.
testinfra_hosts = [DB_HOST]

PROJECT_DIR = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
CREDENTIALS = SCENARIO_DIR / "vars" / "credentials.yml"
RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE
)
# Roles whose tasks ran; each role's argument check is tagged `always` by Ansible itself.
TASK_ROLE = re.compile(
    r"^TASK \[(\w+) : (?!Validating arguments against arg)", re.MULTILINE
)


def site(*args: str) -> str:
    """Runs playbooks/site.yml with the scenario's inventory and credentials; returns its output."""
    command = [
        "ansible-playbook",
        "-i",
        os.environ["MOLECULE_INVENTORY_FILE"],
        str(PROJECT_DIR / "playbooks" / "site.yml"),
        "-e",
        f"@{CREDENTIALS}",
        *args,
    ]
    result = subprocess.run(  # noqa: S603 - our own playbook and inventory
        command, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=900, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def recap(output: str) -> dict[str, tuple[int, int, int]]:
    """host -> (changed, unreachable, failed) from the PLAY RECAP."""
    return {
        name: (int(changed), int(unreachable), int(failed))
        for name, changed, unreachable, failed in RECAP.findall(output)
    }


def task_output(output: str, title: str) -> str:
    """The lines a task printed, from its TASK header to the next header."""
    start = output.index(f"TASK [{title}]")
    end = output.find("\nTASK [", start + 1)
    return output[start : end if end != -1 else len(output)]


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_check_diff_prints_no_secret(host, tmp_path):
    rotated = {name: f"{value}-rotated-7e2f" for name, value in SCENARIO_VARS.items()}
    rotated_file = tmp_path / "rotated.yml"
    rotated_file.write_text(yaml.safe_dump(rotated))
    output = site("--check", "--diff", "-e", f"@{rotated_file}")

    # The rotation is a real change, so every diff that could leak was produced...
    redis_task = task_output(output, "redis : Write the redis configuration and ACL users")
    assert f"changed: [{DB_HOST}]" in redis_task, redis_task
    # ...and none of them shows a secret, old or new, in clear or as a SHA-256.
    for value in [*SCENARIO_VARS.values(), *rotated.values()]:
        for form in (value, sha256(value)):
            assert form not in output, f"--check --diff printed {form[:12]}..."
    # Nor the load balancer's private key (generated on the controller).
    key_pem = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki" / f"{LB_HOST}.key"
    key_lines = [line for line in key_pem.read_text().splitlines() if "-----" not in line]
    assert key_lines
    assert not any(line in output for line in key_lines)


@pytest.mark.parametrize(
    ("tag", "roles", "expected_task"),
    [
        ("firewall", {"common"}, "common : Write the nftables ruleset"),
        ("nginx", {"nginx"}, "nginx : Configure the site"),
        # app_deploy is off here: the host side only (config is part of a release: the
        # release scenario checks that --check --diff of a config change prints no secret).
        ("app", {"app"}, "app : Install the systemd template unit"),
    ],
)
def test_tagged_run_touches_only_its_part_and_changes_nothing(host, tag, roles, expected_task):
    output = site("--tags", tag)
    assert set(TASK_ROLE.findall(output)) == roles, TASK_ROLE.findall(output)
    assert f"TASK [{expected_task}]" in output
    results = recap(output)
    assert len(results) == 4, output[-3000:]
    assert all(result == (0, 0, 0) for result in results.values()), results
