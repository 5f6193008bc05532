"""The app's main process SIGKILLed: systemd starts it again, /health/ready answers 200
through nginx, requests meanwhile fail cleanly, and nothing written is lost."""

from __future__ import annotations

import time
import uuid

from stack_scenario import (
    STACK_HOST,
    api_user_token,
    app_unit,
    client,
    status_of,
    unit_property,
    wait_for,
    worker_pids,
)

testinfra_hosts = [STACK_HOST]

# The goal: ready again within 5 s. On a shared CI machine a plain start of the
# app alone can take longer than that (Python imports under CPU contention), so the budget
# is 5 s on top of what a normal `systemctl restart` of the same unit takes right now: it
# still fails if systemd does not restart the app, waits long before it does, or the
# killed process's workers hang until the stop timeout.
RECOVERY_MARGIN_S = 5.0


def seconds_until_restarted_and_ready(host, http, unit: str, since: float, old_pid: str,
                                      seen: list) -> float:
    """Seconds from `since` until a new main process answers 200 through nginx."""

    def restarted_and_ready() -> bool:
        # Workers of the old process may still answer for a moment: ready means a new
        # main process AND a 200 through nginx.
        pid = unit_property(host, unit, "MainPID")
        seen.append(status_of(http, "/health/ready"))
        return pid not in ("0", old_pid) and seen[-1] == 200

    assert wait_for(restarted_and_ready, timeout_s=90, interval_s=0.1), seen[-5:]
    return time.monotonic() - since


def test_sigkilled_app_is_restarted_and_keeps_its_data(host):
    token = api_user_token(host, "sigkill@faults.example.invalid")
    title = f"written before the kill {uuid.uuid4().hex[:8]}"
    with client() as http:
        unit = app_unit(host)
        assert wait_for(lambda: status_of(http, "/health/ready") == 200, timeout_s=30)
        # What a normal start costs on this machine right now (the baseline).
        old_pid = unit_property(host, unit, "MainPID")
        since = time.monotonic()
        assert host.run("systemctl restart %s", unit).rc == 0
        normal_restart_s = seconds_until_restarted_and_ready(host, http, unit, since,
                                                             old_pid, [])

        http.headers["Authorization"] = f"Bearer {token}"
        created = http.post("/api/conversations", json={"title": title})
        assert created.status_code == 201, created.text
        conversation_id = created.json()["conversation"]["id"]

        old_pid = unit_property(host, unit, "MainPID")
        restarts_before = int(unit_property(host, unit, "NRestarts"))
        workers = worker_pids(host, unit)
        assert workers, "the app runs worker processes"
        # Only the main process: its workers must follow it by themselves (PR_SET_PDEATHSIG,
        # app/ops/supervision.py). systemd would kill the rest of the unit's control group
        # too, but the nspawn test hosts on this hybrid-cgroup machine cannot ("Failed to
        # kill control group ... Input/output error"), so here the workers show it alone.
        assert host.run("kill -KILL %s", str(int(old_pid))).rc == 0
        seen: list[int | str] = []
        recovered_s = seconds_until_restarted_and_ready(host, http, unit, time.monotonic(),
                                                        old_pid, seen)
        print(f"SIGKILL -> a new main process ready through nginx after {recovered_s:.2f} s "
              f"(normal restart: {normal_restart_s:.2f} s); "
              f"statuses meanwhile: {sorted(set(map(str, seen)))}")

        # No orphan worker of the killed process is left (none holds the port).
        assert all(host.run("test -e /proc/%s", str(pid)).rc != 0 for pid in workers), workers
        # systemd did it (Restart=always), not anyone else.
        assert int(unit_property(host, unit, "NRestarts")) == restarts_before + 1
        # Active once the new main process reported READY=1 (its workers may answer a moment
        # before that: they serve as soon as they are up).
        assert wait_for(lambda: host.service(unit).is_running, timeout_s=30), \
            unit_property(host, unit, "ActiveState")
        # Meanwhile nginx answered with a gateway error, never a broken connection.
        assert {s for s in seen if not isinstance(s, int)} <= {"ReadTimeout"}, seen
        assert set(s for s in seen if isinstance(s, int)) <= {200, 502, 503, 504}, seen
        assert recovered_s <= normal_restart_s + RECOVERY_MARGIN_S, (recovered_s,
                                                                      normal_restart_s)

        again = http.get(f"/api/conversations/{conversation_id}")
        assert again.status_code == 200, again.text
        assert again.json()["conversation"]["title"] == title
