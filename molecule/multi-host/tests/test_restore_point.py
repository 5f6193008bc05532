"""A deploy that migrates marks a pgBackRest restore point first (the inventory has a
backup group: the repository is on mh-app2): the release log names it, and the WAL
segment holding it is in the repository at once, so
`playbooks/restore-pitr.yml -e restore_point=<name>` can return to it."""

from __future__ import annotations

import json

from multihost_scenario import APP_ROOT, DATA_HOST, remote, wait_for

testinfra_hosts = [DATA_HOST]

STANZA = "assistantapp"


def first_deploy(name: str) -> dict:
    log = remote(name).file(f"{APP_ROOT}/releases.log").content_string.splitlines()
    return next(entry for entry in map(json.loads, log) if entry["event"] == "deploy")


def test_a_deploy_marks_a_restore_point_in_the_repository(host):
    # The converge's deploy: the first release, which migrated the empty database.
    entry = first_deploy("mh-app1")
    point = entry.get("restore_point") or {}
    assert point.get("name") == f"pre-migrate-{entry['release']}", entry
    assert point.get("lsn") and point.get("time"), entry
    # One point per deploy, named the same in every app host's record of it.
    assert first_deploy("mh-app2").get("restore_point") == point

    # The WAL segment that holds the point reached the repository (the point's segment
    # was switched out when it was made).
    segment = host.check_output(
        "cd / && runuser -u postgres -- psql -XAtq -c %s",
        f"SELECT pg_walfile_name('{point['lsn']}')")
    fetched_copy = f"/var/lib/postgresql/{segment}.fetched"

    def archived() -> bool:
        fetched = host.run(
            "cd / && runuser -u postgres -- pgbackrest --stanza=%s archive-get %s %s",
            STANZA, segment, fetched_copy)
        return fetched.rc == 0

    assert wait_for(archived, timeout_s=90, interval_s=3), segment
    host.run("rm -f %s", fetched_copy)
