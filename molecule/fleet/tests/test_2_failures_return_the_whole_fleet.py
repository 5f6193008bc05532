"""Every way a fleet deploy can fail ends the same: every host on the previous release,
the database at the head it started from, and a message that says which host failed where
and what happened to the database. A canary that never gets ready (no other host is
touched), a host of a later batch that fails after the canary switched (the database goes
back only after no host serves the new code), a migration that fails after its first step,
a migration the live release cannot survive (the compatibility gate, before any switch),
and a destructive migration (refused before anything runs)."""

from __future__ import annotations

import re
import time

import pytest
from fleet_scenario import (
    APP_HOSTS,
    CANARY,
    DATA_HOST,
    build,
    fleet,
    head,
    migration,
    never_ready_on,
    output,
    playbook,
    psql,
    ready_through_nginx,
    remote,
    table_exists,
    unit_events,
)

testinfra_hosts = [DATA_HOST]

ADDITIVE = migration(81, "fleet_extra", 'CREATE TABLE "fleet_extra" ("id" SERIAL PRIMARY KEY);',
                     'DROP TABLE IF EXISTS "fleet_extra";')
# Its downgrade writes the database's clock into a side table: when the database went back.
WITNESSED = migration(
    81, "fleet_extra",
    'CREATE TABLE "fleet_extra" ("id" SERIAL PRIMARY KEY);',
    'CREATE TABLE IF NOT EXISTS "fleet_witness" ("at" TIMESTAMPTZ NOT NULL);\n'
    'INSERT INTO "fleet_witness" VALUES (clock_timestamp());\n'
    'DROP TABLE IF EXISTS "fleet_extra";')


@pytest.fixture
def unchanged_fleet():
    """The fleet and the database before the failing deploy; after it, they must be equal."""
    before = fleet()
    start_head = head()
    yield before
    assert fleet() == before
    assert head() == start_head
    assert ready_through_nginx() == 200


def timed_deploy(label: str, artifact: str):
    """deploy.yml of `artifact`; prints its wall time (the figures of the closing note)."""
    started = time.monotonic()
    result = playbook("deploy.yml", "-e", f"app_artifact={artifact}")
    print(f"{label}: deploy failed and returned in {time.monotonic() - started:.1f} s")
    return result


def dumps() -> list[str]:
    return sorted(remote(DATA_HOST).file("/var/backups/postgresql/predeploy").listdir())


def other_port(ports: list[int]) -> int:
    return sum((8001, 8002)) - ports[0]


def test_a_canary_that_never_gets_ready_touches_no_other_host(unchanged_fleet):
    started = time.time()
    artifact = build("canary-broken", ADDITIVE, never_ready_on(CANARY))
    result = timed_deploy("canary never ready (abort)", artifact)
    text = output(result)
    assert result.returncode != 0, text[-4000:]
    # It never starts (systemd gives up) or never answers ready: either way, on the canary.
    assert re.search(r"failed in '(Start the new instance beside the live one|"
                     r"Wait until the new instance is ready[^']*)': .*\(on " + CANARY + r"\)",
                     text), text[-4000:]
    assert "Nothing was switched: the live release kept serving." in text
    assert "The database is back at its start head" in text, text[-4000:]
    assert not table_exists("fleet_extra")
    # The other hosts never started the new release.
    for name in APP_HOSTS[1:]:
        port = other_port(unchanged_fleet[name][1])
        assert unit_events(name, f"assistantapp@{port}", started)["started"] == [], name


def test_a_later_batch_failing_returns_the_canary_and_then_the_database(unchanged_fleet):
    started = time.time()
    artifact = build("batch2-broken", WITNESSED, never_ready_on(APP_HOSTS[1]))
    result = timed_deploy("second batch never ready", artifact)
    text = output(result)
    assert result.returncode != 0, text[-4000:]
    assert f"(on {APP_HOSTS[1]})" in text, text[-4000:]
    assert f"Reverted to the previous release on {CANARY}" in text, text[-4000:]
    assert "The database is back at its start head" in text
    assert not table_exists("fleet_extra")
    # The canary served the new release, then stopped it; only then the downgrade ran.
    canary = unit_events(CANARY, f"assistantapp@{other_port(unchanged_fleet[CANARY][1])}",
                         started)
    downgraded = float(psql("SELECT extract(epoch FROM max(at)) FROM fleet_witness"))
    assert len(canary["started"]) == 1 and len(canary["stopped"]) == 1, canary
    assert started < canary["started"][0] < canary["stopped"][0] < downgraded, \
        (started, canary, downgraded)
    # The third host never started the new release.
    third_new = f"assistantapp@{other_port(unchanged_fleet[APP_HOSTS[2]][1])}"
    assert unit_events(APP_HOSTS[2], third_new, started)["started"] == []


def test_a_migration_failing_halfway_returns_to_the_exact_start_head(unchanged_fleet):
    start_head = head()
    artifact = build("half-migration", ADDITIVE,
                     migration(82, "fleet_broken", 'SELECT * FROM "fleet_no_such_table";',
                               "SELECT 1;"))
    result = playbook("deploy.yml", "-e", f"app_artifact={artifact}")
    text = output(result)
    assert result.returncode != 0, text[-4000:]
    assert "the migration failed" in text and "fleet_no_such_table" in text, text[-4000:]
    # The first new migration had committed: the head was past the start, and went back.
    assert f"The database is back at its start head {start_head} (it was at 81_" in text, \
        text[-4000:]
    assert "Nothing was switched: the live release kept serving." in text
    assert not table_exists("fleet_extra")


def test_a_migration_the_live_release_cannot_survive_is_refused_before_any_switch(unchanged_fleet):
    # Additive on its face, but the live release inserts users without this column.
    artifact = build("breaks-old-code", migration(
        83, "fleet_required_column",
        'ALTER TABLE "users" ADD COLUMN "fleet_tenant" TEXT NOT NULL DEFAULT \'x\';\n'
        'ALTER TABLE "users" ALTER COLUMN "fleet_tenant" DROP DEFAULT;',
        'ALTER TABLE "users" DROP COLUMN IF EXISTS "fleet_tenant";'))
    result = playbook("deploy.yml", "-e", f"app_artifact={artifact}")
    text = output(result)
    assert result.returncode != 0, text[-4000:]
    assert "Check that the live release survives the new schema" in text, text[-4000:]
    assert "schema smoke test failed" in text and "fleet_tenant" in text, text[-4000:]
    assert "Nothing was switched: the live release kept serving." in text
    assert "The database is back at its start head" in text
    assert psql("SELECT count(*) FROM information_schema.columns "
                "WHERE table_name = 'users' AND column_name = 'fleet_tenant'") == "0"


def test_a_destructive_migration_is_refused_before_anything_runs(unchanged_fleet):
    dumps_before = dumps()
    artifact = build("destructive", migration(
        84, "fleet_drop_title", 'ALTER TABLE "conversations" DROP COLUMN "title";',
        'ALTER TABLE "conversations" ADD COLUMN "title" VARCHAR(200) NOT NULL DEFAULT \'\';'))
    result = playbook("deploy.yml", "-e", f"app_artifact={artifact}")
    text = output(result)
    assert result.returncode != 0, text[-4000:]
    assert "refusing a destructive migration" in text and "DROP COLUMN" in text, text[-4000:]
    assert "app_allow_destructive_migration=true" in text
    assert "Nothing was switched: the live release kept serving." in text
    assert dumps() == dumps_before  # refused before the pre-migration dump
    assert psql("SELECT count(*) FROM information_schema.columns "
                "WHERE table_name = 'conversations' AND column_name = 'title'") == "1"
