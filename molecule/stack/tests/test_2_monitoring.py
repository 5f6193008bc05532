"""Monitoring on the single-host stack (inventories/local puts it on the one host too):
every target scraped and up, the metrics the alert rules need exist with sane values, and
an app outage is alerted to a webhook and resolved."""

from __future__ import annotations

import json
import shlex
import time

import pytest
from stack_scenario import STACK_ADDRESS as ADDRESS
from stack_scenario import live_port, wait_for

PROMETHEUS = f"http://{ADDRESS}:9090"
RECEIVER_LOG = "/root/alerts.jsonl"

# A webhook receiver on the host: appends every Alertmanager POST body as one JSON line.
RECEIVER = """
import http.server, sys
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[1], "ab") as log:
            log.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 9999), Receiver).serve_forever()
"""


def fetch_json(host, url: str) -> dict:
    """GET a JSON URL from the host itself (Prometheus listens on the private network)."""
    code = (
        "import json, sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    )
    result = host.run(f"python3 -c {shlex.quote(code)} {shlex.quote(url)}")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def query(host, promql: str) -> list[dict]:
    from urllib.parse import quote

    data = fetch_json(host, f"{PROMETHEUS}/api/v1/query?query={quote(promql)}")
    assert data["status"] == "success", data
    return data["data"]["result"]


def scraped_targets(host) -> list[dict]:
    targets = fetch_json(host, f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
    return targets if all(t["health"] != "unknown" for t in targets) else []


def test_every_target_is_scraped_and_up(host):
    targets = wait_for(lambda: scraped_targets(host), timeout_s=60, interval_s=1)
    assert targets, "Prometheus has not scraped every target within 60 s"
    by_job: dict[str, list[dict]] = {}
    for target in targets:
        by_job.setdefault(target["labels"]["job"], []).append(target)
    expected_jobs = {"prometheus", "alertmanager", "app", "node", "postgresql", "redis", "nginx"}
    assert set(by_job) == expected_jobs
    for job, job_targets in by_job.items():
        if job != "app":
            assert [t["health"] for t in job_targets] == ["up"], (job, job_targets)
    # Both blue/green ports are scraped; only the live one answers.
    app_health = {
        int(t["labels"]["instance"].rsplit(":", 1)[1]): t["health"] for t in by_job["app"]
    }
    port = live_port(host)
    assert app_health.pop(port) == "up", by_job["app"]
    assert list(app_health.values()) == ["down"], by_job["app"]


def test_exporters_reach_what_they_export(host):
    # Up within a few scrapes (the tests before restarted these services, so the newest
    # sample may still be from a moment they were down).
    for metric in ("pg_up", "redis_up", "nginx_up"):
        wait_for(lambda metric=metric: [r["value"][1] for r in query(host, metric)] == ["1"],
                 timeout_s=30, interval_s=1)
        result = query(host, metric)
        assert [r["value"][1] for r in result] == ["1"], (metric, result)
    # The PostgreSQL exporter's role reads pg_stat_activity (pg_monitor), max_connections too
    # (a scrape while the server restarted may have lacked them: waited for like pg_up).
    for series in ("pg_settings_max_connections",
                   'pg_stat_activity_count{datname="assistantapp"}'):
        assert wait_for(lambda series=series: query(host, series), timeout_s=30, interval_s=1), \
            f"no {series} within 30 s"
    # node-exporter in its sandbox still sees every filesystem and the textfiles.
    def collectors() -> list[tuple[str, str]]:
        found = query(host, 'node_scrape_collector_success{collector=~"filesystem|textfile"}')
        return sorted((r["metric"]["collector"], r["value"][1]) for r in found)

    wait_for(lambda: collectors() == [("filesystem", "1"), ("textfile", "1")], timeout_s=30,
             interval_s=1)
    assert collectors() == [("filesystem", "1"), ("textfile", "1")]
    assert query(host, 'node_filesystem_avail_bytes{mountpoint="/"}'), "no / filesystem"


def test_backup_age_metric_follows_a_backup(host):
    started = time.time()
    assert host.run("systemctl start assistantapp-backup.service").rc == 0
    result = wait_for(
        lambda: [r for r in query(host, "assistantapp_backup_last_success_timestamp_seconds")
                 if float(r["value"][1]) >= started - 5],
        timeout_s=30, interval_s=1,
    )
    assert result, "the backup's success time never reached Prometheus"
    assert float(result[0]["value"][1]) <= time.time() + 5
    assert result[0]["metric"]["kind"] == "pg_dump"
    size = query(host, "assistantapp_backup_last_size_bytes")
    assert size and float(size[0]["value"][1]) > 1000, size


def test_certificate_expiry_metric(host):
    result = query(host, "nginx_tls_certificate_expiry_timestamp_seconds")
    assert len(result) == 1, result
    days_left = (float(result[0]["value"][1]) - time.time()) / 86400
    # The generated certificate lives nginx_cert_days (365): Mozilla intermediate, < 366.
    assert 360 < days_left < 366, days_left


@pytest.fixture
def receiver(host):
    host.run(f"rm -f {RECEIVER_LOG}")
    host.run(f"cat > /root/receiver.py <<'EOF'\n{RECEIVER}\nEOF")
    started = host.run(
        f"systemd-run --unit=test-alert-receiver --collect python3 /root/receiver.py {RECEIVER_LOG}"
    )
    assert started.rc == 0, started.stderr
    yield
    host.run("systemctl stop test-alert-receiver")


def notifications(host) -> list[dict]:
    content = host.run(f"cat {RECEIVER_LOG} 2>/dev/null").stdout
    return [json.loads(line) for line in content.splitlines() if line.strip()]


def app_down(host, status: str) -> bool:
    return any(
        n["status"] == status
        and any(a["labels"]["alertname"] == "AppInstanceDown" for a in n["alerts"])
        for n in notifications(host)
    )


def test_app_down_alert_fires_and_resolves(host, receiver):
    unit = f"assistantapp@{live_port(host)}"
    stopped = time.monotonic()
    assert host.run(f"systemctl stop {unit}").rc == 0
    try:
        # `for: 1m` in the rule, 5 s scrapes and evaluations, 5 s group_wait.
        fired = wait_for(lambda: app_down(host, "firing"), timeout_s=180, interval_s=2)
        fire_latency = time.monotonic() - stopped
    finally:
        restarted = time.monotonic()
        started = host.run(f"systemctl start {unit}")
        if started.rc != 0:
            # Seen once in CI (3 scenarios at a time on 2 cores), not reproduced since: the
            # log keeps why, and the unit's Restart=always must bring it back by itself.
            print(f"\n`systemctl start {unit}` failed: {started.stderr}\n"
                  + host.run(f"journalctl -u {unit} -n 60 --no-pager").stdout)
        back = wait_for(lambda: host.run(f"systemctl is-active {unit}").stdout.strip()
                        == "active", timeout_s=120, interval_s=1)
        assert back, host.run(f"systemctl status {unit} --no-pager").stdout
    assert fired, f"no AppInstanceDown notification within 180 s: {notifications(host)}"
    resolved = wait_for(lambda: app_down(host, "resolved"), timeout_s=120, interval_s=2)
    resolve_latency = time.monotonic() - restarted
    assert resolved, f"no resolved AppInstanceDown within 120 s: {notifications(host)}"
    print(f"\nmonitoring: AppInstanceDown fired {fire_latency:.1f} s after the app stopped "
          f"(rule `for: 1m`), resolved {resolve_latency:.1f} s after it started again")


def test_memory_added_by_monitoring(host):
    units = [
        "prometheus", "prometheus-alertmanager", "prometheus-node-exporter",
        "prometheus-postgres-exporter", "prometheus-redis-exporter", "prometheus-nginx-exporter",
    ]
    total_kib = 0
    report = []
    for unit in units:
        # Each is one process: its resident memory (cgroup accounting may be off in a host).
        pid = host.run(f"systemctl show -P MainPID {unit}").stdout.strip()
        assert pid.isdigit() and pid != "0", (unit, pid)
        status = host.file(f"/proc/{pid}/status").content_string
        rss_kib = int(next(line.split()[1] for line in status.splitlines()
                           if line.startswith("VmRSS:")))
        total_kib += rss_kib
        report.append(f"{unit} {rss_kib / 1024:.1f} MiB")
    print("\nmonitoring memory (RSS): " + ", ".join(report)
          + f"; total {total_kib / 1024:.1f} MiB")
    # Prometheus and the exporters are small; a leak or a misconfiguration would show here.
    assert total_kib < 600 * 1024
