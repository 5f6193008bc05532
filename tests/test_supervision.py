"""Worker supervision (app.ops.supervision) on a real 2-worker Sanic server.

The server runs in a subprocess as systemd would run it: with a NOTIFY_SOCKET (a datagram
socket this test reads, the real sd_notify protocol) and WATCHDOG_USEC set.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sanic.worker.constants import ProcessState

from app.ops.supervision import (
    REPLACE_DEADLINE_S,
    Supervisor,
    sd_notify,
    watchdog_interval_s,
)
from tests.servers import free_port, stop_process_group, wait_for_port

PROJECT_DIR = Path(__file__).resolve().parent.parent
WATCHDOG_USEC = 2_000_000  # 2 s: a worker counts as hung after max(2, 2/2) = 2 s


@dataclass
class NotifyListener:
    """A fake systemd: records every sd_notify datagram with its arrival time."""

    path: str
    sock: socket.socket = field(init=False)
    messages: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def times_of(self, line: str, since: float = 0.0) -> list[float]:
        return [t for t, message in list(self.messages)
                if t >= since and line in message.split("\n")]

    def wait_for(self, line: str, since: float = 0.0, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            times = self.times_of(line, since)
            if times:
                return times[0]
            time.sleep(0.05)
        raise AssertionError(f"no {line!r} within {timeout}s; got {self.messages[-5:]}")

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=2)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    notify: NotifyListener

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def workers(self) -> dict[str, dict[str, object]]:
        response = httpx.get(self.url("/workers"), timeout=3)
        response.raise_for_status()
        result: dict[str, dict[str, object]] = response.json()
        return result

    def gauges(self) -> dict[str, int]:
        response = httpx.get(self.url("/metrics"), timeout=3)
        response.raise_for_status()
        return {line.split()[0]: int(line.split()[1]) for line in response.text.splitlines()
                if line and not line.startswith("#")}

    def serving_pids(self) -> set[int]:
        """Pids of workers Sanic reports as serving (ACKED) that are really alive."""
        pids = set()
        for state in self.workers().values():
            pid = state["pid"]
            if state["state"] == "ACKED" and isinstance(pid, int) and _alive(pid):
                pids.add(pid)
        return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    yield from run_server(tmp_path)


# Far above an idle worker of the test app (about 40 MiB), far below one that grew 300 MiB.
WORKER_MEMORY_LIMIT_MIB = 200


@pytest.fixture
def memory_limited_server(tmp_path: Path) -> Iterator[Server]:
    yield from run_server(tmp_path, WORKER_MAX_MEMORY_MB=str(WORKER_MEMORY_LIMIT_MIB))


def run_server(tmp_path: Path, **extra_env: str) -> Iterator[Server]:
    notify = NotifyListener(str(tmp_path / "notify.sock"))
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(WATCHDOG_USEC),
           "PYTHONUNBUFFERED": "1", **extra_env}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sanic", "tests.supervised_app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--no-motd"],
        cwd=PROJECT_DIR, env=env, start_new_session=True)
    try:
        wait_for_port(port, timeout=60)
        notify.wait_for("READY=1", timeout=60)
        yield Server(proc, port, notify)
    finally:
        stop_process_group(proc)
        notify.close()


def wait_until(predicate, timeout: float, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(interval)
    return None


# The 5 s goal is asserted on a real host (molecule/stack,
# test_3_fault_worker_killed_or_hung.py). Here the suite shares two cores with another
# pytest worker, so a new worker's start (a full app import) may take longer: this test
# asserts that dead workers come back, within a generous bound.
REPLACED_WITHIN_S = 20


def test_sigkilled_worker_is_replaced(server: Server) -> None:
    pids = wait_until(lambda: len(p := server.serving_pids()) == 2 and p, timeout=10)
    assert pids, server.workers()
    assert server.gauges() == {"assistantapp_workers_configured": 2,
                               "assistantapp_workers_serving": 2}
    victim = min(pids)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    # /metrics shows the gap (what an alert on too few serving workers reads).
    assert wait_until(lambda: server.gauges()["assistantapp_workers_serving"] == 1, timeout=3)

    def back_to_two() -> set[int] | None:
        current = server.serving_pids()
        return current if len(current) == 2 and victim not in current else None

    replaced = wait_until(back_to_two, timeout=REPLACED_WITHIN_S)
    took = time.monotonic() - killed_at
    print(f"worker SIGKILL -> 2 serving workers again after {took:.2f} s")
    assert replaced, server.workers()
    assert (pids - {victim}) <= replaced  # the other worker was left alone
    assert server.gauges()["assistantapp_workers_serving"] == 2
    assert server.proc.poll() is None
    # Killing the same slot again works too (the replacement is supervised as well).
    second = (replaced - pids).pop()
    os.kill(second, signal.SIGKILL)
    assert wait_until(lambda: len(p := server.serving_pids()) == 2 and second not in p,
                      timeout=REPLACED_WITHIN_S)


def test_both_workers_sigkilled_are_replaced(server: Server) -> None:
    pids = wait_until(lambda: len(p := server.serving_pids()) == 2 and p, timeout=10)
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    # Two spawns at once on a busy machine: more time than one (the 5 s goal is above).
    replaced = wait_until(lambda: len(p := server.serving_pids()) == 2 and not (p & pids),
                          timeout=15)
    assert replaced, server.workers()
    assert httpx.get(server.url("/pid"), timeout=3).status_code == 200


def test_blocked_worker_loop_stops_the_watchdog_until_it_answers(server: Server) -> None:
    first = server.notify.wait_for("WATCHDOG=1", since=time.monotonic(), timeout=5)
    assert first
    blocked_for = 7.0
    started = time.monotonic()
    blocker = threading.Thread(
        target=lambda: httpx.get(server.url(f"/block/{blocked_for}"), timeout=30),
        daemon=True)
    blocker.start()
    time.sleep(0.3)  # the request has reached a worker and stopped its loop
    # Heartbeats stop at once; after the 2 s staleness (+ one check) the watchdog is not fed.
    quiet_from = started + 3.5
    time.sleep(max(0.0, started + blocked_for - 0.5 - time.monotonic()))
    fed_while_blocked = server.notify.times_of("WATCHDOG=1", since=quiet_from)
    assert fed_while_blocked == [], [round(t - started, 2) for t in fed_while_blocked]
    statuses = [message for t, message in server.notify.messages if t >= started]
    assert any("event loop blocked" in message for message in statuses), statuses
    # The loop answers again: the watchdog is fed again (no restart needed).
    blocker.join(timeout=15)
    resumed = server.notify.wait_for("WATCHDOG=1", since=started + blocked_for, timeout=5)
    print(f"blocked loop: watchdog not fed from {quiet_from - started:.1f} s to "
          f"{resumed - started:.1f} s after the block started")


def test_main_process_killed_takes_its_workers_and_the_port_along(server: Server) -> None:
    pids = wait_until(lambda: len(p := server.serving_pids()) == 2 and p, timeout=10)
    assert pids
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=5)
    try:
        # PR_SET_PDEATHSIG: no orphan worker keeps serving (or holding the port).
        assert wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=3), pids
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
    finally:
        # Sanic's state-sharing helper process outlives a SIGKILLed main process (systemd
        # ends it with the unit's control group); here the test does.
        os.killpg(server.proc.pid, signal.SIGKILL)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live child processes of `pid`."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(") ", 1)[1].split()[1]) == pid and _alive(int(entry.name)):
            children.append((int(entry.name), cmdline))
    return children


def test_sigterm_is_a_clean_stop_not_a_death_to_heal(server: Server) -> None:
    pids = wait_until(lambda: len(p := server.serving_pids()) == 2 and p, timeout=10)
    assert pids
    trackers = [pid for pid, cmd in _children(server.proc.pid) if "resource_tracker" in cmd]
    assert len(trackers) == 1, _children(server.proc.pid)
    os.kill(server.proc.pid, signal.SIGTERM)  # as systemd stops it (KillMode=mixed)
    assert server.proc.wait(timeout=20) == 0
    assert server.notify.times_of("STOPPING=1")
    # Nothing outlives the main process, not even multiprocessing's resource tracker:
    # systemd's final SIGKILL of a stop finds no process left to wait for.
    assert not any(_alive(pid) for pid in [*pids, *trackers])
    assert not Path(f"/proc/{trackers[0]}").exists()


# --- the policy alone: a replacement that never comes up ends the instance -------------


@dataclass
class DeadProcess:
    name: str
    pid: int = 4242
    exitcode: int = -9
    state: ProcessState = ProcessState.FAILED

    def is_alive(self) -> bool:
        return False


def test_a_worker_over_its_memory_limit_is_restarted_and_the_other_keeps_serving(
        memory_limited_server: Server) -> None:
    server = memory_limited_server
    before = wait_until(lambda: len(p := server.serving_pids()) == 2 and p, timeout=30)
    assert before
    grown = httpx.get(server.url("/grow/300"), timeout=30).json()
    leaker = grown["pid"]
    assert leaker in before
    # Replaced by a new worker; the other one was never touched; the instance lives on.
    after = wait_until(lambda: (len(p := server.serving_pids()) == 2 and leaker not in p
                                and p), timeout=REPLACED_WITHIN_S)
    assert after, server.workers()
    assert before - {leaker} <= after
    assert server.proc.poll() is None
    assert not _alive(leaker)
    # The replacement starts small: it is not restarted again and again.
    time.sleep(2)
    assert server.serving_pids() == after


def test_memory_is_read_from_proc_and_the_limit_applies_once_per_worker() -> None:
    from app.ops.supervision import resident_mib

    hog = subprocess.Popen([sys.executable, "-c",
                            "import sys, time; x = b'1' * (120 * 2**20); "
                            "sys.stdout.write('ok\\n'); sys.stdout.flush(); time.sleep(30)"],
                           stdout=subprocess.PIPE)
    try:
        assert hog.stdout is not None and hog.stdout.readline() == b"ok\n"
        used = resident_mib(hog.pid)
        assert used is not None and 120 <= used < 200
    finally:
        hog.kill()
        hog.wait()
    assert resident_mib(hog.pid) is None  # gone

    now = [10.0]
    restarts: list[str] = []
    usage = {101: 50.0, 102: 500.0}
    supervisor = Supervisor(processes=lambda: [ServingProcess("Sanic-Server-0-0", 101),
                                               ServingProcess("Sanic-Server-0-1", 102)],
                            request_restart=restarts.append, give_up=pytest.fail,
                            expected_workers=2, notify=lambda message: True,
                            clock=lambda: now[0], max_worker_memory_mib=256,
                            memory_of=usage.get)
    for _ in range(20):  # 4 s of ticks: one restart request, not one per check
        supervisor.check()
        now[0] += 0.2
    assert restarts == ["Sanic-Server-0-1"]
    supervisor.max_worker_memory_mib = 0  # off: nobody is restarted for memory
    supervisor.memory_restarted.clear()
    now[0] += 60
    supervisor.check()
    assert restarts == ["Sanic-Server-0-1"]


@dataclass
class ServingProcess:
    name: str
    pid: int
    exitcode: int | None = None
    state: ProcessState = ProcessState.ACKED


def test_the_shared_state_names_the_serving_process_after_a_lost_update() -> None:
    # Sanic's restart writes the new pid and the new worker's ack writes "ACKED", both as
    # read-modify-write of one shared entry: under load the ack can write back the old pid
    # (seen in CI: the Inspector's view named a dead worker for good).
    shared = {"Sanic-Server-0-0": {"server": True, "pid": 100, "state": "ACKED", "starts": 2},
              "Sanic-Server-0-1": {"server": True, "pid": 102, "state": "ACKED", "starts": 1}}
    processes = [ServingProcess("Sanic-Server-0-0", 101), ServingProcess("Sanic-Server-0-1", 102)]
    writes: list[str] = []

    class RecordingState(dict):  # type: ignore[type-arg]
        def __setitem__(self, key: str, value: dict[str, object]) -> None:
            writes.append(key)
            super().__setitem__(key, value)

    state = RecordingState(shared)
    supervisor = Supervisor(processes=lambda: processes, request_restart=pytest.fail,
                            give_up=pytest.fail, expected_workers=2,
                            notify=lambda message: True, shared_state=state)
    supervisor.check()
    supervisor.check()
    assert state["Sanic-Server-0-0"] == {"server": True, "pid": 101, "state": "ACKED",
                                         "starts": 2}
    assert state["Sanic-Server-0-1"]["pid"] == 102
    assert writes == ["Sanic-Server-0-0"]  # once, and only where it was wrong


def test_a_worker_that_cannot_be_replaced_ends_the_instance() -> None:
    now = [0.0]
    restarts: list[str] = []
    gave_up: list[str] = []
    supervisor = Supervisor(processes=lambda: [DeadProcess("Sanic-Server-0-0")],
                            request_restart=restarts.append, give_up=gave_up.append,
                            expected_workers=1, notify=lambda message: True,
                            clock=lambda: now[0])
    while now[0] <= REPLACE_DEADLINE_S + 1 and not gave_up:
        supervisor.check()
        now[0] += 0.2
    assert restarts[0] == "Sanic-Server-0-0"
    assert gave_up and "not serving" in gave_up[0]
    assert REPLACE_DEADLINE_S < now[0] <= REPLACE_DEADLINE_S + 0.5


def test_sd_notify_speaks_the_datagram_protocol(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    listener = NotifyListener(str(tmp_path / "n.sock"))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", listener.path)
        assert sd_notify("READY=1\nSTATUS=ok")
        assert listener.wait_for("READY=1", timeout=2)
        monkeypatch.delenv("NOTIFY_SOCKET")
        assert not sd_notify("READY=1")
    finally:
        listener.close()
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval_s() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval_s() is None


def test_workers_get_longer_than_sanics_30_s_to_come_up() -> None:
    """A busy host imports the app in more than Sanic's default 30 s; a miss kills the
    instance at start-up (or at a supervised restart)."""
    from sanic.worker.manager import WorkerManager
    from sanic.worker.process import WorkerProcess

    import app.factory

    assert app.factory.WORKER_ACK_TIMEOUT_S == 120
    assert WorkerManager.THRESHOLD == WorkerProcess.THRESHOLD == 1200  # tenths of a second
