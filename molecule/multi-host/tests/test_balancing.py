"""Through nginx on the lb host, requests are spread over BOTH app hosts: each request
carries its own X-Request-ID, and each app host's access log names the ones it served."""

from __future__ import annotations

import ssl
import uuid

import httpx
from multihost_scenario import (
    APP_ADDRESSES,
    APP_HOSTS,
    APP_LOG,
    LB_HOST,
    SITE_URL,
    ca_file,
    live_port,
    remote,
    wait_for,
)

testinfra_hosts = [LB_HOST]

REQUESTS = 40


def test_the_upstream_names_the_live_instance_of_every_app_host(host):
    upstream = host.file("/etc/nginx/assistantapp/upstream.conf").content_string
    for name in APP_HOSTS:
        assert f"{APP_ADDRESSES[name]}:{live_port(remote(name))}" in upstream, upstream


def test_requests_through_nginx_reach_both_app_hosts(host):
    run_id = uuid.uuid4().hex[:12]
    verify = ssl.create_default_context(cafile=ca_file())
    with httpx.Client(verify=verify, timeout=10, trust_env=False) as client:
        for number in range(REQUESTS):
            # "/" is logged at INFO (probes are DEBUG), so every request leaves a line.
            response = client.get(f"{SITE_URL}/", headers={"X-Request-ID": f"mh-{run_id}-{number}"})
            assert response.status_code == 200, response.text[:200]
            assert response.headers["X-Request-ID"] == f"mh-{run_id}-{number}"

    def served_by(name: str) -> int:
        # Our access lines only (logger app.access), one per request served.
        result = remote(name).run("grep -F %s %s | grep -c -F %s", f"mh-{run_id}-", APP_LOG,
                                  '"logger": "app.access"')
        return int(result.stdout.strip() or 0)

    # Log lines may reach the file a moment after the response.
    counts = wait_for(lambda: (c := {n: served_by(n) for n in APP_HOSTS})
                      and sum(c.values()) >= REQUESTS and c, timeout_s=10)
    counts = counts or {n: served_by(n) for n in APP_HOSTS}
    assert all(counts[name] > 0 for name in APP_HOSTS), counts
    # Round robin: neither host takes (nearly) everything.
    assert min(counts.values()) >= REQUESTS // 5, counts
    assert sum(counts.values()) == REQUESTS, counts
