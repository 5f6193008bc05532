"""`--check --diff` on the deployed fleet: deploy.yml fails nowhere, changes nothing and
says per app host what a real run would do (nothing, or which commit it would deploy beside
which live release); site.yml (every role: firewall, PostgreSQL, pgBackRest, Redis, nginx,
app, backups, exporters, Prometheus) fails nowhere and finds nothing to change."""

from __future__ import annotations

import re

from multihost_scenario import APP_HOSTS, LB_HOST, playbook, remote

testinfra_hosts = [LB_HOST]

UPSTREAM = "/etc/nginx/assistantapp/upstream.conf"


def check_deploy(*args: str) -> str:
    result = playbook("deploy.yml", "--check", "--diff", *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # Long messages are folded over lines in the YAML result format.
    return " ".join(output.split())


def fleet(host) -> tuple:
    return (host.file(UPSTREAM).content_string,
            {name: remote(name).file("/opt/assistantapp/state.json").content_string
             for name in APP_HOSTS},
            {name: remote(name).run("systemctl list-units --plain --no-legend "
                                    "'assistantapp@*'").stdout for name in APP_HOSTS})


def test_check_diff_of_an_up_to_date_fleet_says_no_deploy(host):
    before = fleet(host)
    output = check_deploy()
    assert output.count("no deploy: ") == len(APP_HOSTS), output[-4000:]
    assert fleet(host) == before


def test_check_diff_of_a_forced_deploy_names_the_release_and_changes_nothing(host):
    before = fleet(host)
    output = check_deploy("-e", "app_force_deploy=true")
    assert output.count("would deploy ") == len(APP_HOSTS), output[-4000:]
    assert "why: forced" in output
    assert fleet(host) == before


RECAP = re.compile(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                   re.MULTILINE)


def test_check_diff_of_the_whole_site_finds_nothing_to_change(host):
    before = fleet(host)
    result = playbook("site.yml", "--check", "--diff")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    recap = {name: (int(c), int(u), int(f)) for name, c, u, f in RECAP.findall(output)}
    assert len(recap) == 4, output[-3000:]
    assert all(counts == (0, 0, 0) for counts in recap.values()), (recap, output[-6000:])
    assert fleet(host) == before
