"""nginx's upstream follows what each app host really runs, also when the play is limited:
- a deploy limited to one app host, whose bookkeeping fails after the switch (its release
  log cannot be written), keeps the new release live: the play succeeds with a warning and
  nothing is reverted;
- `site.yml --limit mh-lb` (no app host in the play, so none of their facts) and a state
  file left stale still render every app host's live port: the one systemd runs.
Runs last in the scenario: mh-app1 ends on its other port."""

from __future__ import annotations

import ssl

import httpx
from multihost_scenario import (
    APP_ADDRESSES,
    APP_HOSTS,
    APP_ROOT,
    LB_HOST,
    SITE_URL,
    active_ports,
    ca_file,
    live_port,
    other_port,
    playbook,
    remote,
)

testinfra_hosts = [LB_HOST]

RELEASE_LOG = f"{APP_ROOT}/releases.log"
STATE_FILE = f"{APP_ROOT}/state.json"
UPSTREAM = "/etc/nginx/assistantapp/upstream.conf"


def run(name: str, *args: str) -> str:
    result = playbook(name, *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def all_requests_succeed(count: int = 20) -> list[int]:
    verify = ssl.create_default_context(cafile=ca_file())
    with httpx.Client(verify=verify, timeout=10, trust_env=False) as client:
        return [client.get(f"{SITE_URL}/health/ready").status_code for _ in range(count)]


def test_a_failed_record_after_the_switch_keeps_the_new_release_live(host):
    app1 = remote("mh-app1")
    before = live_port(app1)
    log_lines = app1.run(f"wc -l < {RELEASE_LOG}").stdout.strip()
    # A directory where the release log is: appending to it fails after the switch.
    assert app1.run(f"mv {RELEASE_LOG} {RELEASE_LOG}.saved && mkdir {RELEASE_LOG}").rc == 0
    try:
        output = run("deploy.yml", "--limit", "mh-app1", "-e", "app_force_deploy=true")
    finally:
        app1.run(f"rmdir {RELEASE_LOG} && mv {RELEASE_LOG}.saved {RELEASE_LOG}")
    assert "WARNING:" in output and "is live on port" in output, output[-4000:]
    after = other_port(before)
    assert active_ports("mh-app1") == [after], output[-4000:]
    assert live_port(app1) == after  # the state file was written before the log failed
    assert app1.run(f"wc -l < {RELEASE_LOG}").stdout.strip() == log_lines
    assert f"{APP_ADDRESSES['mh-app1']}:{after}" in host.file(UPSTREAM).content_string
    assert all_requests_succeed() == [200] * 20


def test_a_limited_site_run_keeps_the_upstream_on_the_ports_systemd_runs(host):
    live = {name: active_ports(name) for name in APP_HOSTS}
    assert all(len(ports) == 1 for ports in live.values()), live
    app1 = remote("mh-app1")
    real_state = app1.file(STATE_FILE).content_string
    # Stale: names the port mh-app1 no longer runs (a record that failed to write it).
    stale = real_state.replace(f'"live_port": {live["mh-app1"][0]}',
                               f'"live_port": {other_port(live["mh-app1"][0])}')
    assert stale != real_state
    app1.run(f"cat > {STATE_FILE} <<'EOF'\n{stale}\nEOF")
    try:
        run("site.yml", "--limit", LB_HOST)
    finally:
        app1.run(f"cat > {STATE_FILE} <<'EOF'\n{real_state}\nEOF")
    upstream = host.file(UPSTREAM).content_string
    for name in APP_HOSTS:
        assert f"{APP_ADDRESSES[name]}:{live[name][0]}" in upstream, upstream
    assert all_requests_succeed() == [200] * 20
