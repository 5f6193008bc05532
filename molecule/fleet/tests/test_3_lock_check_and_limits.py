"""Two deploys at once with different --limit meet the one fleet lock: the second is
refused with the first one's record while the first finishes. Then the fleet is mixed on
purpose (one host on the other blue/green port): site.yml --limit fl-lb keeps every app
host on its live port, and --check --diff of deploy.yml and site.yml fails nowhere."""

from __future__ import annotations

import re
import subprocess
import time

from fleet_scenario import (
    APP_HOSTS,
    APP_ROOT,
    DATA_HOST,
    LB_HOST,
    PLATFORMS,
    PROJECT_DIR,
    active_ports,
    ansible_env,
    output,
    playbook,
    playbook_command,
    ready_through_nginx,
    remote,
)

testinfra_hosts = [DATA_HOST]

LOCK = f"{APP_ROOT}/deploy.lock"


def test_a_second_deploy_with_another_limit_is_refused_by_the_fleet_lock(host):
    first_ports = active_ports(APP_HOSTS[0])
    second_ports = active_ports(APP_HOSTS[1])
    first = subprocess.Popen(  # noqa: S603 - our own playbook
        playbook_command("deploy.yml", "--limit", APP_HOSTS[0], "-e", "app_force_deploy=true"),
        env=ansible_env(), cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 300
        while not host.file(f"{LOCK}/owner.json").exists:
            assert first.poll() is None, first.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "the first deploy never took the lock"
            time.sleep(0.5)
        second = playbook("deploy.yml", "--limit", APP_HOSTS[1], "-e", "app_force_deploy=true")
        text = output(second)
        assert second.returncode != 0, text[-3000:]
        assert f"Another deploy holds the lock {DATA_HOST}:{LOCK}" in text, text[-3000:]
        assert f"limit '{APP_HOSTS[0]}'" in text and "Wait for it to finish" in text, text[-3000:]
    finally:
        first_output = first.communicate(timeout=900)[0]
    assert first.returncode == 0, first_output[-4000:]
    assert active_ports(APP_HOSTS[0]) == [p for p in (8001, 8002) if p not in first_ports]
    assert active_ports(APP_HOSTS[1]) == second_ports
    assert not host.file(LOCK).exists


def upstream_servers() -> list[str]:
    conf = remote(LB_HOST).file("/etc/nginx/assistantapp/upstream.conf").content_string
    return re.findall(r"server (\S+) ", conf)


def test_site_limited_to_the_lb_keeps_every_app_host_on_its_live_port():
    # After the limited deploy above the fleet runs on mixed ports.
    expected = sorted(f"{PLATFORMS[name]['address']}:{active_ports(name)[0]}" for name in APP_HOSTS)
    assert len({server.rsplit(':', 1)[1] for server in expected}) == 2, expected
    result = playbook("site.yml", "--limit", LB_HOST)
    assert result.returncode == 0, output(result)[-4000:]
    assert sorted(upstream_servers()) == expected
    assert ready_through_nginx() == 200


def test_check_diff_on_the_deployed_fleet_fails_nowhere_and_deploys_nothing():
    before = {name: active_ports(name) for name in APP_HOSTS}
    for name in ("deploy.yml", "site.yml"):
        result = playbook(name, "--check", "--diff")
        text = output(result)
        assert result.returncode == 0, text[-4000:]
        recap = re.findall(
            r"(\S+)\s*: ok=\d+\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)", text)
        assert recap and all(u == "0" and f == "0" for _, u, f in recap), recap
        if name == "deploy.yml":
            # Every app host says what a real run would do: nothing, its code is live.
            assert text.count("no deploy:") == len(APP_HOSTS), text[-4000:]
    assert {name: active_ports(name) for name in APP_HOSTS} == before
