"""Monitoring across hosts (mh-data carries the monitoring group, as in
inventories/local-multi): Prometheus scrapes the exporters of every host and both app
hosts' live instances over the private network through each host's firewall, while
Prometheus, Alertmanager and the exporters stay closed to everyone else."""

from __future__ import annotations

import json
import shlex
from urllib.parse import quote

import pytest
from multihost_scenario import (
    APP_ADDRESSES,
    APP_HOSTS,
    DATA_ADDRESS,
    DATA_HOST,
    LB_ADDRESS,
    LB_HOST,
    PLATFORMS,
    live_port,
    other_port,
    remote,
    tcp_connects,
    wait_for,
)

testinfra_hosts = [DATA_HOST]

PROMETHEUS = f"http://{DATA_ADDRESS}:9090"
EXPORTER_PORTS = {"node": 9100, "postgresql": 9187, "redis": 9121, "nginx": 9113}


def fetch_json(host, url: str) -> dict:
    code = (
        "import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    )
    result = host.run(f"python3 -c {shlex.quote(code)} {shlex.quote(url)}")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def scraped_targets(host) -> list[dict]:
    targets = fetch_json(host, f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
    return targets if all(t["health"] != "unknown" for t in targets) else []


def test_prometheus_scrapes_every_host_over_the_private_network(host):
    targets = wait_for(lambda: scraped_targets(host), timeout_s=90, interval_s=2)
    assert targets, "Prometheus has not scraped every target within 90 s"
    health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
    # node-exporter on every host, the others where their service runs.
    for platform in PLATFORMS.values():
        assert health.get(("node", f"{platform['address']}:9100")) == "up", health
    assert health.get(("postgresql", f"{DATA_ADDRESS}:9187")) == "up", health
    assert health.get(("redis", f"{DATA_ADDRESS}:9121")) == "up", health
    assert health.get(("nginx", f"{LB_ADDRESS}:9113")) == "up", health
    # Both blue/green ports of both app hosts are targets; the live one answers.
    for name in APP_HOSTS:
        port = live_port(remote(name))
        address = APP_ADDRESSES[name]
        assert health.get(("app", f"{address}:{port}")) == "up", health
        assert health.get(("app", f"{address}:{other_port(port)}")) == "down", health


def test_the_app_hosts_metrics_reach_prometheus(host):
    query = quote('sum by (instance) (up{job="app"})')
    result = fetch_json(host, f"{PROMETHEUS}/api/v1/query?query={query}")["data"]["result"]
    live = {f"{APP_ADDRESSES[name]}:{live_port(remote(name))}" for name in APP_HOSTS}
    assert {r["metric"]["instance"] for r in result if r["value"][1] == "1"} == live, result


@pytest.mark.parametrize("port", [9090, 9093])
def test_prometheus_and_alertmanager_are_closed_to_other_hosts(host, port):
    assert tcp_connects(host, DATA_ADDRESS, port)  # it listens on the private address...
    for name in [LB_HOST, *APP_HOSTS]:  # ...and the firewall drops everyone else
        assert not tcp_connects(remote(name), DATA_ADDRESS, port), (name, port)


@pytest.mark.parametrize(("job", "target"), [
    ("node", APP_HOSTS[0]),
    ("nginx", LB_HOST),
    ("postgresql", DATA_HOST),
])
def test_exporters_are_closed_to_all_but_the_monitoring_host(host, job, target):
    address = PLATFORMS[target]["address"]
    port = EXPORTER_PORTS[job]
    assert tcp_connects(host, address, port)
    outsider = APP_HOSTS[1] if target != APP_HOSTS[1] else APP_HOSTS[0]
    assert not tcp_connects(remote(outsider), address, port), (outsider, target, port)
