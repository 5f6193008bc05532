"""What the stack scenario's tests share: the host and its address, the site URL, the
project CA, the app's unit and state, polling, and an API user."""

from __future__ import annotations

import json
import os
import re
import ssl
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import yaml

SCENARIO_DIR = Path(__file__).parent.parent
PROJECT_DIR = SCENARIO_DIR.parent.parent
MOLECULE_YML = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
SCENARIO_VARS = MOLECULE_YML["provisioner"]["inventory"]["group_vars"]["all"]
STACK_HOST = "stack1"
STACK_ADDRESS = MOLECULE_YML["platforms"][0]["address"]
SITE_URL = f"https://{STACK_ADDRESS}"

APP_ROOT = "/opt/assistantapp"
POSTGRESQL_UNIT = "postgresql@15-main"  # Debian 12's PostgreSQL cluster
REDIS_UNIT = "redis-server"

sys.path.insert(0, str(PROJECT_DIR))
from app.auth.tokens import ACCESS, AUDIENCE, DEFAULT_SCOPES, ISSUER  # noqa: E402


def ca_file() -> str:
    """The project CA the nginx role generated on the controller (nginx_pki_dir)."""
    return str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki" / "ca.crt")


def client(timeout: float = 5) -> httpx.Client:
    # Short timeouts by default: a fault must show as an error status, never as a hang.
    return httpx.Client(base_url=SITE_URL, verify=ssl.create_default_context(cafile=ca_file()),
                        timeout=timeout, trust_env=False)


def status_of(http: httpx.Client, path: str) -> int | str:
    try:
        return http.get(path).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def wait_for(predicate, timeout_s: float, interval_s: float = 0.2):
    """Poll until predicate() is truthy; return its last value."""
    deadline = time.monotonic() + timeout_s
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval_s)
        value = predicate()
    return value


def deploy_state(host) -> dict:
    return json.loads(host.file(f"{APP_ROOT}/state.json").content_string)


def live_port(host) -> int:
    return int(deploy_state(host)["live_port"])


def app_unit(host) -> str:
    return f"assistantapp@{deploy_state(host)['live_port']}.service"


def unit_property(host, unit: str, name: str) -> str:
    return host.run("systemctl show -p %s --value %s", name, unit).stdout.strip()


def worker_pids(host, unit: str) -> set[int]:
    """The instance's workers: the processes besides the main one that hold its listen
    socket (Sanic's helper processes do not)."""
    port = deploy_state(host)["live_port"]
    main_pid = int(unit_property(host, unit, "MainPID"))
    listing = host.run("ss -Hltnp 'sport = :%s'", str(port)).stdout
    pids = {int(pid) for pid in re.findall(r"pid=(\d+)", listing)}
    alive = set()
    for pid in pids - {main_pid}:
        stat = host.run("cat /proc/%s/stat", str(pid))
        # Not a zombie, and not stopped: a SIGSTOPped worker does not serve.
        if stat.rc == 0 and stat.stdout.split(") ", 1)[1][0] not in "ZT":
            alive.add(pid)
    return alive


def api_user_token(host, email: str) -> str:
    """A user row (as the Google sign-in would create it) and an access token for it,
    signed with the scenario's JWT secret the way app.auth.tokens signs them."""
    # psql quotes the email itself (:'email'), so the SQL is never built from a string.
    sql = ("insert into users (email, name, picture, google_scopes, created_at, updated_at) "
           "values (:'email', 'Fault test', '', '', now(), now()) "
           "on conflict (email) do update set updated_at = now() returning id")
    result = host.run("echo %s | runuser -u postgres -- psql -XAtq -d assistantapp -v email=%s",
                      sql, email)
    assert result.rc == 0, result.stderr
    user_id = int(result.stdout.split()[0])
    now = datetime.now(UTC)
    claims = {"sub": str(user_id), "userId": user_id, "scopes": list(DEFAULT_SCOPES),
              "type": ACCESS, "iss": ISSUER, "aud": AUDIENCE, "iat": now,
              "exp": now + timedelta(minutes=30),
              # A session of its own (app.auth.tokens: every access token names its
              # refresh-token family, checked against the revoked ones).
              "fam": str(uuid.uuid4())}
    return jwt.encode(claims, SCENARIO_VARS["app_jwt_secret"], algorithm="HS256")
