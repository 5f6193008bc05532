"""One deploy lock for the whole fleet, on the first db host: a deploy limited to one app
host is refused while a deploy limited to the other holds it, with the holder's record,
and a lock whose controller process is gone is reported as stale. The refused run changes
nothing and leaves the holder's lock in place."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest
from multihost_scenario import APP_ROOT, DATA_HOST, active_ports, playbook

testinfra_hosts = [DATA_HOST]

LOCK_DIR = f"{APP_ROOT}/deploy.lock"


def dead_pid() -> int:
    process = subprocess.Popen(["true"])  # noqa: S607 - coreutils
    process.wait()
    return process.pid


@pytest.mark.parametrize(("holder_pid", "verdict"), [
    (os.getpid(), "Wait for it to finish"),
    (None, "looks STALE"),
])
def test_a_deploy_limited_to_another_app_host_is_refused(host, holder_pid, verdict):
    record = {
        "owner": "alice@ops", "controller": socket.gethostname(),
        "since": "2026-01-01T00:00:00Z", "since_epoch": int(time.time()),
        "pid": holder_pid or dead_pid(), "command": "ansible-playbook deploy.yml",
        "limit": "mh-app1", "token": "held-by-alice",
    }
    assert host.run(f"mkdir -p {LOCK_DIR}").rc == 0
    host.run(f"cat > {LOCK_DIR}/owner.json <<'EOF'\n{json.dumps(record)}\nEOF")
    before = active_ports("mh-app2")
    try:
        result = playbook("deploy.yml", "--limit", "mh-app2", "-e", "app_force_deploy=true")
        output = result.stdout + result.stderr
        assert result.returncode != 0, output[-3000:]
        assert f"Another deploy holds the lock {DATA_HOST}:{LOCK_DIR}" in output, output[-3000:]
        assert "alice@ops" in output and "limit 'mh-app1'" in output
        assert verdict in output, output[-3000:]
        assert active_ports("mh-app2") == before
        # The holder's lock is left alone.
        assert json.loads(host.file(f"{LOCK_DIR}/owner.json").content_string) == record
    finally:
        host.run(f"rm -rf {LOCK_DIR}")
