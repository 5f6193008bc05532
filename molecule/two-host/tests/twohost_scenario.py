"""What the two-host tests share: the scenario's credentials and addresses."""

from __future__ import annotations

from pathlib import Path

import yaml

SCENARIO_DIR = Path(__file__).parent.parent
SCENARIO_VARS = yaml.safe_load((SCENARIO_DIR / "vars" / "credentials.yml").read_text())
MOLECULE_YML = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
PLATFORMS = {platform["name"]: platform for platform in MOLECULE_YML["platforms"]}

DB_HOST = "two-host-db"
APP_HOST = "two-host-app"
LB_HOST = "two-host-lb"
OUTSIDER_HOST = "two-host-outsider"
DB_ADDRESS = PLATFORMS[DB_HOST]["address"]
APP_ADDRESS = PLATFORMS[APP_HOST]["address"]

PG_PASSWORD = SCENARIO_VARS["postgresql_app_password"]
REDIS_PASSWORD = SCENARIO_VARS["redis_app_password"]
APP_USER = "assistantapp"
APP_DB = "assistantapp"
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - deliberately wrong


def psql(host, password: str, address: str = DB_ADDRESS):
    return host.run(
        "PGPASSWORD=%s PGCONNECT_TIMEOUT=5 psql -XAtq -h %s -U %s -d %s -c 'select current_user'",
        password,
        address,
        APP_USER,
        APP_DB,
    )


def redis_cli(
    host,
    *args: str,
    password: str | None = REDIS_PASSWORD,
    address: str = DB_ADDRESS,
    timeout_s: int = 10,
):
    auth = ["--user", APP_USER, "--pass", password, "--no-auth-warning"] if password else []
    words = ["timeout", str(timeout_s), "redis-cli", "-h", address, *auth, *args]
    return host.run(" ".join(["%s"] * len(words)), *words)


def listening_addresses(host, port: int) -> set[str]:
    lines = host.run("ss -ltnH 'sport = :%s'", str(port)).stdout.splitlines()
    return {line.split()[3].rsplit(":", 1)[0].strip("[]") for line in lines if line.strip()}
