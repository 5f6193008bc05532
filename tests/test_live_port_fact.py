"""The app role's local fact (ansible_local.assistantapp): the state file with live_port
taken from systemd, which nginx's upstream and every deploy and rollback follow. Run with a
`systemctl` on PATH that answers `is-active` for the ports in $ACTIVE_PORTS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "roles/app/templates/etc/ansible/facts.d/assistantapp.fact.j2"

FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl is-active --quiet assistantapp@PORT.service
unit=$3
port=${unit#assistantapp@}; port=${port%.service}
for active in $ACTIVE_PORTS; do [ "$active" = "$port" ] && exit 0; done
exit 3
"""


@pytest.fixture
def fact(tmp_path: Path):
    # A Python script, not HTML: nothing to escape.
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)  # noqa: S701
    environment.filters["to_json"] = json.dumps
    state_file = tmp_path / "state.json"
    script = tmp_path / "assistantapp.fact"
    script.write_text(environment.from_string(TEMPLATE.read_text()).render(
        ansible_managed="test", app_state_file=str(state_file), app_ports=["8001", "8002"]))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)

    def run(state: dict | None, active: list[int]) -> dict:
        if state is not None:
            state_file.write_text(json.dumps(state))
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
               "ACTIVE_PORTS": " ".join(map(str, active))}
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                env=env, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    return run


def test_before_the_first_deploy_there_is_no_live_port(fact):
    state = fact(None, [])
    assert "live_port" not in state and "live_port_unknown" not in state
    assert state["active_ports"] == []


def test_the_running_instance_wins_over_a_stale_state_file(fact):
    state = fact({"live_port": 8001, "release": "r1"}, [8002])
    assert state["live_port"] == 8002
    assert state["recorded_live_port"] == 8001
    assert state["release"] == "r1"


def test_mid_switch_the_recorded_port_is_live(fact):
    assert fact({"live_port": 8002}, [8001, 8002])["live_port"] == 8002


def test_an_instance_that_is_down_keeps_its_recorded_port(fact):
    assert fact({"live_port": "8002"}, [])["live_port"] == 8002


def test_two_running_instances_and_no_record_are_never_guessed(fact):
    state = fact({}, [8001, 8002])
    assert "live_port" not in state
    assert "8001, 8002" in state["live_port_unknown"]
