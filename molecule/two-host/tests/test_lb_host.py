"""The load balancer: a project host that needs the app instances, never the
data stores — the db host's firewall drops it on PostgreSQL and Redis. And
nginx's candidate validator, which copies /etc/nginx (TLS key included) to
test a candidate, leaves no copy behind and keeps it closed while it exists."""

from __future__ import annotations

import base64

import pytest
from twohost_scenario import LB_HOST, PG_PASSWORD, psql, redis_cli

testinfra_hosts = [LB_HOST]

VALIDATOR = "/usr/local/sbin/nginx-validate-candidate"
COPIES = "/tmp/nginx-validate.*"  # noqa: S108 - the path under test
# A stand-in `nginx` first on PATH: records the mode of the copy's directory (the
# parent of the -p prefix), optionally sleeps, then runs the real nginx.
HOOK_DIR = "/root/validate-hook"
HOOK = """#!/bin/sh
prefix="$4"
stat -c '%a %U %n' "$(dirname "${prefix%/}")" > /root/validate-hook.seen
[ -z "${HOOK_SLEEP:-}" ] || sleep "$HOOK_SLEEP"
exec /usr/sbin/nginx "$@"
"""


def copies_left(host) -> list[str]:
    return host.run(f"ls -d {COPIES} 2>/dev/null").stdout.split()


@pytest.fixture
def hook(host):
    host.run("mkdir -p %s", HOOK_DIR)
    encoded = base64.b64encode(HOOK.encode()).decode()
    host.run(f"echo {encoded} | base64 -d > {HOOK_DIR}/nginx")
    host.run("chmod 0755 %s/nginx", HOOK_DIR)
    yield f"PATH={HOOK_DIR}:$PATH"
    host.run("rm -rf %s /root/validate-hook.seen /root/bad-site.conf", HOOK_DIR)


def test_postgresql_drops_the_load_balancer(host):
    result = psql(host, PG_PASSWORD)
    assert result.rc != 0
    # Dropped by the db host's firewall: no answer at all, not pg_hba's refusal.
    assert "timeout expired" in result.stderr, result.stderr


def test_redis_drops_the_load_balancer(host):
    result = redis_cli(host, "PING", timeout_s=3)
    # `timeout` ends redis-cli, still waiting for the dropped connection.
    assert result.rc == 124, (result.rc, result.stdout, result.stderr)
    assert "PONG" not in result.stdout


def test_converge_left_no_copy_of_the_nginx_tree(host):
    assert copies_left(host) == []


def test_validator_accepts_the_live_config_and_cleans_up(host, hook):
    result = host.run(f"{hook} {VALIDATOR} /etc/nginx/nginx.conf nginx.conf")
    assert result.rc == 0, result.stderr
    mode, owner, path = host.file("/root/validate-hook.seen").content_string.split()
    # While nginx -t ran, the copy (TLS key included) sat in a root-only 0700 directory.
    assert path.startswith(COPIES[:-1]), path
    assert (mode, owner) == ("700", "root")
    assert copies_left(host) == []


def test_validator_rejects_a_bad_candidate_and_cleans_up(host, hook):
    host.run("printf 'this is not nginx;\\n' > /root/bad-site.conf")
    result = host.run(f"{hook} {VALIDATOR} /root/bad-site.conf assistantapp/site.conf")
    assert result.rc != 0
    assert "unknown directive" in result.stderr, result.stderr
    assert copies_left(host) == []


def test_validator_cleans_up_when_terminated(host, hook):
    # timeout sends TERM to the validator (and its process group) while nginx -t "runs".
    result = host.run(
        f"{hook} HOOK_SLEEP=30 timeout -s TERM 2 {VALIDATOR} /etc/nginx/nginx.conf nginx.conf"
    )
    assert result.rc == 124, (result.rc, result.stderr)
    assert host.file("/root/validate-hook.seen").exists  # it was interrupted mid-validation
    assert copies_left(host) == []
