"""The whole stack on one host: TLS in front, the app behind it, sandboxed and laid out
as the app role promises, backups scheduled."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import stack_scenario
from stack_scenario import APP_ROOT, ca_file, live_port
from stack_scenario import SITE_URL as SITE
from stack_scenario import STACK_ADDRESS as ADDRESS


def client() -> httpx.Client:
    return stack_scenario.client(timeout=10)


def test_ready_through_nginx_with_the_project_ca():
    with client() as http:
        response = http.get(f"{SITE}/health/ready")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"
    assert "max-age=63072000" in response.headers["strict-transport-security"]


def test_http_redirects_to_https():
    with httpx.Client(timeout=10, trust_env=False) as http:
        response = http.get(f"http://{ADDRESS}/health/ready")
    assert response.status_code == 301
    assert response.headers["location"] == f"{SITE}/health/ready"


def _handshake(version: ssl.TLSVersion) -> str | None:
    context = ssl.create_default_context(cafile=ca_file())
    context.minimum_version = context.maximum_version = version
    with socket.create_connection((ADDRESS, 443), timeout=5) as sock:
        try:
            with context.wrap_socket(sock, server_hostname=ADDRESS) as tls:
                return tls.version()
        except ssl.SSLError:
            return None


def test_tls_1_2_and_1_3_only():
    assert _handshake(ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert _handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    # TLS 1.1 must be refused (OpenSSL may not even offer it: then no handshake either).
    try:
        assert _handshake(ssl.TLSVersion.TLSv1_1) is None
    except (ssl.SSLError, ValueError):
        pass


def test_tls_1_2_refuses_cbc_ciphers():
    result = subprocess.run(  # noqa: S603 - fixed arguments
        ["openssl", "s_client", "-connect", f"{ADDRESS}:443", "-tls1_2",  # noqa: S607
         "-cipher", "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA", "-CAfile", ca_file()],
        input="", capture_output=True, text=True, timeout=15, check=False)
    assert result.returncode != 0, result.stdout[-500:]


def test_body_larger_than_the_app_limit_is_refused_by_nginx():
    with client() as http:
        response = http.post(f"{SITE}/", content=b"x" * (1024 * 1024 + 10),
                             headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        # A browser gets a small page; the API its JSON error like the app's own.
        assert response.headers["content-type"].startswith("text/html")
        assert "The request body is too large." in response.text
        api = http.post(f"{SITE}/api/conversations", content=b"x" * (1024 * 1024 + 10),
                        headers={"Content-Type": "application/json"})
    assert api.status_code == 413
    assert api.headers["content-type"] == "application/json"
    assert api.json() == {"error": "The request body is too large.", "code": "payload_too_large"}


def test_nginx_own_errors_on_api_paths_are_json():
    with client() as http:
        # nginx refuses TRACE itself (405) and headers past its buffers (494, sent as 400).
        trace = http.request("TRACE", f"{SITE}/auth/me")
        huge = http.get(f"{SITE}/api/conversations", headers={"X-Padding": "p" * 20000})
        page = http.get(f"{SITE}/", headers={"X-Padding": "p" * 20000})
    assert trace.status_code == 405 and trace.json()["code"] == "method_not_allowed"
    assert huge.status_code == 400 and huge.json() == {
        "error": "The request headers are too large.", "code": "header_too_large"}
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")


def test_the_page_files_are_served_from_nginx_cache(host):
    with client() as http:
        page = http.get(f"{SITE}/")
        assert page.headers["cache-control"] == "no-cache" and page.headers["etag"]
        script = re.search(r'src="(/static/app\.js\?v=\w+)"', page.text).group(1)
        first = http.get(f"{SITE}{script}")
        assert first.headers["cache-control"] == "public, max-age=31536000, immutable"
        # Stored by nginx after the first request (an unversioned URL never is).
        cached = host.run("grep -rls %s /var/lib/nginx/assistantapp-static", f"KEY: {script}")
        assert cached.rc == 0 and cached.stdout.strip(), cached
        again = http.get(f"{SITE}{script}")
        assert again.content == first.content
        plain = http.get(f"{SITE}/static/app.js")
        assert plain.headers["cache-control"] == "no-cache"
    assert host.run("grep -rl 'KEY: /static/app.js$' /var/lib/nginx/assistantapp-static").rc != 0


def test_hsts_is_sent_once():
    with client() as http:
        for path in ("/", "/health/ready", "/api/conversations", "/no-such-page"):
            response = http.get(f"{SITE}{path}")
            assert response.headers.get_list("strict-transport-security") == [
                "max-age=63072000"], (path, response.headers)


def test_the_unit_is_sandboxed(host):
    result = host.run("systemd-analyze security --no-pager assistantapp@%s.service",
                      str(live_port(host)))
    last = [line for line in result.stdout.splitlines() if "Overall exposure level" in line][-1]
    score = float(last.split(":")[1].split()[0])
    assert score <= 2.0, last


def test_the_instance_runs_as_the_app_user_with_the_env_file(host):
    port = live_port(host)
    service = host.service(f"assistantapp@{port}")
    assert service.is_running and service.is_enabled
    assert host.process.filter(user="assistantapp", comm="sanic") or \
        host.process.filter(user="assistantapp")
    env = host.file(f"{APP_ROOT}/current/app.env")
    assert env.user == "assistantapp" and env.mode == 0o600


def test_current_points_at_a_complete_release_and_the_log_records_it(host):
    current = host.file(f"{APP_ROOT}/current")
    assert current.is_symlink
    release = current.linked_to.rsplit("/", 1)[-1]
    assert host.file(f"{APP_ROOT}/releases/{release}/.complete").exists
    entries = [json.loads(line) for line in
               host.file(f"{APP_ROOT}/releases.log").content_string.splitlines()]
    assert entries[-1]["release"] == release
    assert entries[-1]["migration_head"] not in ("", "base")
    assert not host.file(f"{APP_ROOT}/deploy.lock").exists


def hook_calls(host) -> list[dict]:
    log = host.file("/var/log/assistantapp-hooks.jsonl")
    return [json.loads(line) for line in log.content_string.splitlines()] if log.exists else []


def test_the_release_hooks_ran_once_at_their_steps(host):
    # converge deployed the first release; the idempotence run deployed nothing, so no hook
    # ran again. before_migrate comes from a single path, after_switch from a list.
    release = host.file(f"{APP_ROOT}/current").linked_to.rsplit("/", 1)[-1]
    assert hook_calls(host)[:2] == [
        {"step": "before_migrate", "release": release, "previous": "", "env": "staging",
         "failure": {}, "downgrade_ok": None},
        {"step": "after_switch", "release": release, "previous": "", "env": "staging",
         "failure": {}, "downgrade_ok": None},
    ]


def operator(*args: str) -> subprocess.CompletedProcess:
    """scripts/app against this scenario's inventory, as an operator types it."""
    script = Path(__file__).parents[3] / "scripts" / "app"
    return subprocess.run([str(script), "-i", os.environ["MOLECULE_INVENTORY_FILE"], *args],  # noqa: S603
                          capture_output=True, text=True, timeout=300, check=False)


def test_operator_status_shows_the_live_release_and_its_health(host):
    state = json.loads(host.file(f"{APP_ROOT}/state.json").content_string)
    result = operator("status")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    print(text)
    assert f"release: {state['release']}" in text
    assert f"port: {state['live_port']}" in text
    assert "ready: true" in text and "ActiveState=active" in text
    assert "workers_serving: '2'" in text and "workers_configured: '2'" in text
    assert f"Every app host runs {state['release']}." in text


def test_operator_exec_runs_app_commands_with_the_live_release_and_env(host):
    state = json.loads(host.file(f"{APP_ROOT}/state.json").content_string)
    current = operator("exec", "db", "current")
    assert current.returncode == 0, current.stdout[-3000:]
    assert f"- {state['migration_head']}" in current.stdout
    check = operator("exec", "check-config")
    assert check.returncode == 0, check.stdout[-3000:]
    shell = operator("shell", 'id -un; echo "env=$APP_ENV"; readlink -f .')
    assert shell.returncode == 0, shell.stdout[-3000:]
    assert "- assistantapp" in shell.stdout and "- env=staging" in shell.stdout
    assert f"- {APP_ROOT}/releases/{state['release']}" in shell.stdout
    # A failing command fails the operator's command, with its output shown.
    failing = operator("exec", "db", "no-such-command")
    assert failing.returncode != 0
    # (ansible-core prints the failure on stderr, the command's output on stdout)
    assert "The command exited with 2 on stack1" in failing.stdout + failing.stderr
    assert "invalid choice" in failing.stdout
    # Bad input is refused before anything runs.
    assert operator("exec").returncode == 2
    assert operator("logs", "-n", "many").returncode == 2


def test_operator_console_runs_python_with_the_live_release_and_env(host):
    state = json.loads(host.file(f"{APP_ROOT}/state.json").content_string)
    script = Path(__file__).parents[3] / "scripts" / "app"
    console = subprocess.run(  # noqa: S603
        [str(script), "-i", os.environ["MOLECULE_INVENTORY_FILE"], "console"],
        input='import os, app\nprint("console:", os.environ["APP_ENV"], os.path.realpath("."))\n',
        capture_output=True, text=True, timeout=120, check=False)
    assert console.returncode == 0, console.stdout + console.stderr
    assert f"console: staging {APP_ROOT}/releases/{state['release']}" in console.stdout


def test_operator_logs_follow_the_live_journal(host):
    port = live_port(host)
    script = Path(__file__).parents[3] / "scripts" / "app"
    follow = subprocess.Popen(  # noqa: S603
        [str(script), "-i", os.environ["MOLECULE_INVENTORY_FILE"], "logs", "--follow", "-n", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = follow.communicate(timeout=10)
        still_following = False
    except subprocess.TimeoutExpired:  # journalctl --follow never ends by itself
        still_following = True
        follow.kill()
        output, _ = follow.communicate()
    assert still_following, output[-2000:]
    assert f"assistantapp-{port}[" in output, output[-2000:]


def test_operator_logs_show_the_live_instance_journal(host):
    port = live_port(host)
    result = operator("logs", "-n", "5")
    assert result.returncode == 0, result.stdout[-3000:]
    assert result.stdout.count(f"assistantapp-{port}[") + result.stdout.count(
        f"assistantapp@{port}") >= 1, result.stdout[-3000:]
    matched = operator("logs", "--grep", "Starting worker")
    assert matched.returncode == 0 and "Starting worker" in matched.stdout
    nothing = operator("logs", "--grep", "no line says this 0d5b")
    assert nothing.returncode == 0, nothing.stdout[-3000:]


def test_the_app_listens_on_loopback_only(host):
    port = live_port(host)
    assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_metrics_allowed_from_the_internal_network_only(host):
    # From the controller (10.213.0.1, internal) nginx passes /metrics through.
    with client() as http:
        assert http.get(f"{SITE}/metrics").status_code == 200
    # The nginx rule itself: anything not internal is denied.
    site = host.file("/etc/nginx/assistantapp/site.conf").content_string
    assert "location = /metrics" in site and "deny all;" in site


def test_a_bad_nginx_template_is_refused_and_the_live_config_kept(host):
    before = host.file("/etc/nginx/assistantapp/site.conf").content_string
    host.run("printf 'server { bogus_directive on; }' > /root/bad-site.conf")
    result = host.run("/usr/local/sbin/nginx-validate-candidate %s %s",
                      "/root/bad-site.conf", "assistantapp/site.conf")
    assert result.rc != 0
    assert "bogus_directive" in result.stderr
    assert host.file("/etc/nginx/assistantapp/site.conf").content_string == before
    assert host.run("nginx -t").rc == 0


def test_backups_are_scheduled_and_work(host):
    assert host.service("assistantapp-backup.timer").is_enabled
    result = host.run("systemctl start assistantapp-backup.service")
    assert result.rc == 0, result.stderr
    dumps = host.run("ls /var/backups/postgresql/scheduled/").stdout.split()
    assert any(name.endswith(".dump") for name in dumps)
    listing = host.run("pg_restore --list /var/backups/postgresql/scheduled/%s", sorted(dumps)[-1])
    assert "TABLE" in listing.stdout


@pytest.mark.parametrize("path", ["/etc/nginx/tls/assistantapp.key",
                                  "/opt/assistantapp/current/app.env"])
def test_secrets_are_not_world_readable(host, path):
    assert host.file(path).mode & 0o077 == 0


def exposure(host, unit: str) -> float:
    """The "Overall exposure level" of `systemd-analyze security` (0 safe .. 10 unsafe)."""
    result = host.run("systemd-analyze security --no-pager %s", unit)
    lines = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert lines, result.stdout + result.stderr
    return float(lines[-1].split(":")[1].split()[0])


# Every long-running service and timer job the roles install (the app's own unit is above).
@pytest.mark.parametrize("unit", [
    "nginx.service",
    "postgresql@15-main.service",
    "redis-server.service",
    "assistantapp-backup.service",
    "prometheus.service",
    "prometheus-alertmanager.service",
    "prometheus-node-exporter.service",
    "prometheus-postgres-exporter.service",
    "prometheus-redis-exporter.service",
    "prometheus-nginx-exporter.service",
])
def test_every_service_is_sandboxed(host, unit):
    assert exposure(host, unit) <= 3.0


def test_the_sandboxed_services_still_work_after_a_restart(host):
    """Restarted under their drop-ins: nginx binds 80/443 and reads its key, PostgreSQL
    writes data + WAL, Redis answers, the app is ready through all of them."""
    for unit in ("postgresql@15-main", "redis-server", "nginx"):
        result = host.run("systemctl restart %s", unit)
        assert result.rc == 0, host.run("journalctl -u %s -n 20 --no-pager", unit).stdout
    master = host.check_output("systemctl show -P MainPID nginx")
    status = host.file(f"/proc/{master}/status").content_string
    assert "NoNewPrivs:\t1" in status
    wal = host.run("runuser -u postgres -- psql -XAtq -c %s",
                   "create table sandbox_probe as select 1 as n; drop table sandbox_probe; "
                   "checkpoint; select pg_switch_wal()")
    assert wal.rc == 0, wal.stderr
    deadline = time.monotonic() + 30
    while True:
        with client() as http:
            try:
                response = http.get(f"{SITE}/health/ready")
            except httpx.TransportError:
                response = None
        if (response is not None and response.status_code == 200) or \
                time.monotonic() > deadline:
            break
        time.sleep(1)
    assert response is not None and response.status_code == 200
