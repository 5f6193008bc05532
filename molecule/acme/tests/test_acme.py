"""nginx_tls_mode: acme against Pebble: issuance, renewal by certbot's timer job only when
few days remain (and only then a reload), a renewal while Pebble is unreachable (the
old certificate stays, the failure and the expiry are exported; the next run recovers), and a
client that verifies the served chain with Pebble's root."""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from cryptography import x509

testinfra_hosts = ["acme-lb"]

LB_ADDRESS = "10.213.0.60"
CA_ADDRESS = "10.213.0.61"
NAME = "acme-lb.test"
RENEWAL_CONF = "/etc/letsencrypt/renewal/assistantapp.conf"
METRICS_DIR = "/var/lib/prometheus/node-exporter"


def pebble_root(host) -> str:
    """Pebble's current root (management port); its HTTPS is signed by the scenario's CA."""
    server_ca = host.file("/etc/ssl/pebble-server-ca.pem").content_string
    context = ssl.create_default_context(cadata=server_ca)
    response = httpx.get(f"https://{CA_ADDRESS}:15000/roots/0", verify=context,
                         timeout=10, trust_env=False)
    response.raise_for_status()
    return response.text


def served_certificate(context: ssl.SSLContext | None = None) -> x509.Certificate:
    """The leaf nginx serves for NAME, verified with `context` (unverified without one)."""
    context = context or ssl._create_unverified_context()  # noqa: S323 - serial only
    with socket.create_connection((LB_ADDRESS, 443), timeout=10) as sock, \
            context.wrap_socket(sock, server_hostname=NAME) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return x509.load_der_x509_certificate(der)


def metrics(host, name: str) -> dict[str, float]:
    values = {}
    for line in host.file(f"{METRICS_DIR}/{name}").content_string.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[re.sub(r"\{.*\}", "", key)] = float(value)
    return values


def nginx_workers(host) -> set[int]:
    master = host.check_output("systemctl show -P MainPID nginx")
    return {int(pid) for pid in host.check_output("pgrep -P %s", master).split()}


def run_renewal_job(host):
    """What certbot.timer starts: certbot.service (`certbot -q renew`)."""
    return host.run("systemctl start certbot.service")


def set_renew_before_days(host, days: int) -> None:
    host.check_output(
        "sed -i 's/^renew_before_expiry = .*/renew_before_expiry = %s days/' %s",
        str(days), RENEWAL_CONF)


@contextmanager
def renew_before_days(host, days: int) -> Iterator[None]:
    original = re.search(r"^renew_before_expiry = (\d+) days$",
                         host.file(RENEWAL_CONF).content_string, re.M)
    assert original, host.file(RENEWAL_CONF).content_string
    set_renew_before_days(host, days)
    try:
        yield
    finally:  # certbot rewrites the file on renewal; only the window goes back
        set_renew_before_days(host, int(original[1]))


def test_the_issued_certificate_verifies_with_pebbles_root(host):
    leaf = served_certificate(ssl.create_default_context(cadata=pebble_root(host)))
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [NAME]
    assert "Pebble" in leaf.issuer.rfc4514_string()


def test_a_client_with_only_the_public_roots_refuses_the_chain():
    with pytest.raises(ssl.SSLCertVerificationError):
        served_certificate(ssl.create_default_context())


def test_the_account_key_and_certificate_stay_on_the_lb(host):
    assert host.file("/etc/letsencrypt/live/assistantapp/privkey.pem").exists
    accounts = host.check_output("find /etc/letsencrypt/accounts -name private_key.json")
    assert f"{CA_ADDRESS}:14000" in accounts
    key = host.file("/etc/nginx/tls/assistantapp.key")
    assert key.mode == 0o600 and key.user == "root"


def test_the_challenge_is_served_over_plain_http_and_the_rest_redirects(host):
    host.check_output("mkdir -p /var/lib/nginx-acme/.well-known/acme-challenge")
    host.check_output("echo token-probe > /var/lib/nginx-acme/.well-known/acme-challenge/probe")
    try:
        with httpx.Client(timeout=10, trust_env=False) as http:
            challenge = http.get(f"http://{LB_ADDRESS}/.well-known/acme-challenge/probe",
                                 headers={"Host": NAME})
            other = http.get(f"http://{LB_ADDRESS}/somewhere", headers={"Host": NAME})
    finally:
        host.run("rm -f /var/lib/nginx-acme/.well-known/acme-challenge/probe")
    assert challenge.status_code == 200 and challenge.text == "token-probe\n"
    assert challenge.headers["content-type"].startswith("text/plain")
    assert other.status_code == 301


def test_renewal_is_on_the_timer_with_the_30_day_window(host):
    assert host.service("certbot.timer").is_enabled
    assert host.service("certbot.timer").is_running
    assert re.search(r"^renew_before_expiry = 30 days$",
                     host.file(RENEWAL_CONF).content_string, re.M)


def test_no_renewal_and_no_reload_while_enough_days_remain(host):
    serial = served_certificate().serial_number
    workers = nginx_workers(host)
    result = run_renewal_job(host)
    assert result.rc == 0, result.stderr
    assert served_certificate().serial_number == serial
    assert nginx_workers(host) == workers  # a reload would have started new workers
    assert metrics(host, "nginx_acme_renewal.prom")["nginx_acme_renewal_last_success"] == 1


def test_the_timer_job_renews_when_fewer_days_remain_and_nginx_serves_it(host):
    verified = ssl.create_default_context(cadata=pebble_root(host))
    before = served_certificate(verified)
    workers = nginx_workers(host)
    with renew_before_days(host, 100000):  # longer than any certificate: renew now
        result = run_renewal_job(host)
    assert result.rc == 0, result.stderr
    after = served_certificate(verified)
    assert after.serial_number != before.serial_number
    assert nginx_workers(host) != workers  # reloaded
    exported = metrics(host, "nginx_tls.prom")
    expiry = exported["nginx_tls_certificate_expiry_timestamp_seconds"]
    assert expiry == after.not_valid_after_utc.timestamp()
    assert metrics(host, "nginx_acme_renewal.prom")["nginx_acme_renewal_last_success"] == 1


@contextmanager
def acme_server_unreachable(host) -> Iterator[None]:
    """The ACME server is down as far as the lb can tell: every connection to it fails at
    once. (Stopping Pebble itself would lose its accounts and roots, which it keeps in
    memory only; a real CA does not forget them during an outage.)"""
    host.check_output("ip route add prohibit %s/32", CA_ADDRESS)
    try:
        yield
    finally:
        host.check_output("ip route del prohibit %s/32", CA_ADDRESS)


def test_a_failed_renewal_keeps_the_served_certificate_and_exports_it(host):
    verified = ssl.create_default_context(cadata=pebble_root(host))
    before = served_certificate(verified)
    started = time.time()
    with acme_server_unreachable(host), renew_before_days(host, 100000):
        result = run_renewal_job(host)
    assert result.rc != 0  # certbot renew exits non-zero when a renewal failed
    assert served_certificate(verified).serial_number == before.serial_number
    assert host.service("nginx").is_running
    renewal = metrics(host, "nginx_acme_renewal.prom")
    assert renewal["nginx_acme_renewal_last_success"] == 0
    assert renewal["nginx_acme_renewal_last_run_timestamp_seconds"] >= int(started)
    exported = metrics(host, "nginx_tls.prom")
    assert exported["nginx_tls_certificate_expiry_timestamp_seconds"] == \
        before.not_valid_after_utc.timestamp()
    # The CA is back: the next run renews and reports success again.
    with renew_before_days(host, 100000):
        result = run_renewal_job(host)
    assert result.rc == 0, result.stderr
    assert served_certificate(verified).serial_number != before.serial_number
    assert metrics(host, "nginx_acme_renewal.prom")["nginx_acme_renewal_last_success"] == 1


def exposure(host, unit: str) -> float:
    result = host.run("systemd-analyze security --no-pager %s", unit)
    lines = [line for line in result.stdout.splitlines() if "Overall exposure level" in line]
    assert lines, result.stdout + result.stderr
    return float(lines[-1].split(":")[1].split()[0])


@pytest.mark.parametrize("unit", ["nginx.service", "certbot.service"])
def test_nginx_and_the_renewal_job_are_sandboxed(host, unit):
    assert exposure(host, unit) <= 3.0


def test_ocsp_stapling_asks_the_hosts_own_nameservers(host):
    nameservers = re.findall(r"^nameserver\s+(\S+)", host.file("/etc/resolv.conf").content_string,
                             re.M)
    site = host.file("/etc/nginx/assistantapp/site.conf").content_string
    usable = [f"[{ns}]" if ":" in ns else ns for ns in nameservers if "%" not in ns]
    if usable:
        assert f"resolver {' '.join(usable)} valid=300s;" in site
        assert "ssl_stapling on;" in site
    else:  # no resolver on this host: stapling stays off rather than pointing nowhere
        assert "ssl_stapling" not in site and "resolver " not in site
    assert "127.0.0.53" not in site or "127.0.0.53" in nameservers
