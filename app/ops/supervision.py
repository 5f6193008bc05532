"""Self-healing workers: dead workers are replaced, hung ones stop the systemd watchdog.

Sanic's main process does not replace a worker that dies (sanic issue #3062): after the OOM
killer's SIGKILL the instance stays "active" with fewer (or no) workers, and the listen
socket, held open by the main process, queues requests that nobody answers. This module adds
the missing supervision, in the main process, through Sanic's public extension points:

* ``main_process_start`` opens a heartbeat socket (an abstract unix datagram socket named
  after the main process) and tells the workers its name through the environment, which the
  worker processes inherit.
* every worker (``after_server_start``) sends its pid to that socket once a second from a
  task on its event loop, so a heartbeat only arrives while the loop runs; it also asks the
  kernel to SIGKILL it when the main process dies (``PR_SET_PDEATHSIG``), so an orphan can
  never hold the port after the main process is gone.
* ``main_process_ready`` starts the :class:`Supervisor` thread. It watches the server
  processes of ``app.manager`` (Sanic's ``WorkerManager``):

  - a dead worker is restarted by the manager itself: the supervisor sends the manager's
    monitor pipe the same restart message the Inspector and ``app.m.restart()`` send
    (``"<process name>:"``), so the restart runs in the manager's own monitor loop, in the
    main thread, never concurrently with it. Calling ``manager.restart()`` from this thread
    would race the monitor loop's state sync; patching the manager's private loop would
    break on a Sanic upgrade.
  - a worker that stays down (its replacement crashes or never comes up) makes the whole
    instance exit with status 1, so systemd (``Restart=always``) starts it from scratch; an
    instance is never "active" without its workers.
  - a worker whose resident memory grows past ``WORKER_MAX_MEMORY_MB`` is restarted the
    same way (Sanic stops it gracefully and starts a new one) while the other workers keep
    serving: a leak costs one worker's restart, not the whole instance to the cgroup's OOM
    killer (the unit's ``MemoryMax`` stays the outer bound). These restarts count towards
    the crash-loop limit below.
  - Sanic's shared worker state (what ``app.m.workers``, the Inspector and /metrics read)
    can name a replaced worker's old pid: the manager's restart and the new worker's
    acknowledgement both rewrite the same entry without a lock, and under load the ack
    can write back the entry it read before the manager recorded the new pid. The
    supervisor knows the real process and writes its pid back once the worker serves.
  - under systemd (``Type=notify``) it sends ``READY=1`` once every worker serves, and
    ``WATCHDOG=1`` only while every serving worker's heartbeat is fresh. A worker whose
    event loop is blocked stops its heartbeat, the watchdog is no longer fed, and systemd
    kills and restarts the instance after ``WatchdogSec``.

Everything is standard library: sd_notify is one datagram on ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from sanic import Sanic
from sanic.worker.constants import ProcessState

log = logging.getLogger(__name__)

HEARTBEAT_SOCKET_ENV = "ASSISTANTAPP_HEARTBEAT_SOCKET"
SUPERVISOR_PID_ENV = "ASSISTANTAPP_SUPERVISOR_PID"
CONFIGURED_WORKERS_ENV = "ASSISTANTAPP_CONFIGURED_WORKERS"
# Sanic names its server processes "Sanic-Server-<n>-<i>" (WorkerProcess.SERVER_LABEL).
SERVER_PROCESS_PREFIX = "Sanic-Server-"

HEARTBEAT_INTERVAL_S = 1.0
# The supervisor's cadence: a dead worker is noticed within this, then restarted by Sanic.
CHECK_INTERVAL_S = 0.2
# A replacement that is not serving this long after its worker died (it crashes at start,
# or hangs in it; Sanic itself allows a starting worker 30 s) means replacing fails: the
# whole instance exits and systemd restarts it.
REPLACE_DEADLINE_S = 35.0
# More restarts than this within RESTART_WINDOW_S is a crash loop: exit, let systemd decide
# (its StartLimitBurst then stops a unit that cannot stay up).
MAX_RESTARTS = 10
RESTART_WINDOW_S = 60.0
# Without a systemd watchdog (tests, `sanic` by hand) a worker counts as hung after this.
DEFAULT_STALE_AFTER_S = 5.0
# How often the workers' resident memory is read (one small /proc read per worker).
MEMORY_CHECK_INTERVAL_S = 1.0

PR_SET_PDEATHSIG = 1


def _socket_address(name: str) -> str | bytes:
    """`@name` is the usual spelling of an abstract unix socket (leading NUL byte)."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def sd_notify(message: str, notify_socket: str | None = None) -> bool:
    """Send one sd_notify(3) datagram; False when not run by systemd or the send fails."""
    target = notify_socket if notify_socket is not None else os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(message.encode(), _socket_address(target))
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", message.split("\n")[0], exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """systemd's WatchdogSec for this process (WATCHDOG_USEC), None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    watchdog_pid = os.environ.get("WATCHDOG_PID")
    if not usec or (watchdog_pid and watchdog_pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1_000_000
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this worker when the main process dies (any way, even SIGKILL): its listen
    socket copy would otherwise keep the port from the restarted instance."""
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    except (OSError, AttributeError) as exc:
        log.warning("worker cannot follow its main process on death: %s", exc)
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


async def _send_heartbeats(address: str | bytes) -> None:
    message = str(os.getpid()).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        while True:
            try:
                sock.sendto(message, address)
            except OSError:
                pass  # the main process is going away, or its queue is full: try again
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)


def resident_mib(pid: int) -> float | None:
    """Resident memory of a process in MiB (/proc/<pid>/statm), None when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class WorkerWatch:
    """What the supervisor knows about one server process slot (by Sanic process name)."""

    down_since: float | None = None
    restart_requested_at: float | None = None
    serving_pid: int | None = None
    serving_since: float = 0.0


@dataclass
class Supervisor:
    """The main process's watch over Sanic's server processes (see the module docstring).

    `processes` returns the manager's server processes; `request_restart` sends the restart
    message for one process name; `give_up` ends the instance. They are parameters so that
    the policy reads on its own; `for_app` wires them to a real Sanic manager.
    """

    processes: Callable[[], Iterable[Any]]
    request_restart: Callable[[str], None]
    give_up: Callable[[str], None]
    expected_workers: int
    watchdog_s: float | None = None
    notify: Callable[[str], bool] = sd_notify
    heartbeat_socket: socket.socket | None = None
    clock: Callable[[], float] = time.monotonic
    # 0: no per-worker memory limit. `memory_of` returns a pid's resident MiB.
    max_worker_memory_mib: int = 0
    memory_of: Callable[[int], float | None] = resident_mib
    # Sanic's shared worker state (manager.worker_state); None: nothing to keep in step.
    shared_state: MutableMapping[str, dict[str, Any]] | None = None
    last_memory_check: float = 0.0
    memory_restarted: set[int] = field(default_factory=set)
    watches: dict[str, WorkerWatch] = field(default_factory=dict)
    heartbeats: dict[int, float] = field(default_factory=dict)
    restarts: list[float] = field(default_factory=list)
    ready_sent: bool = False
    stale_reported: set[str] = field(default_factory=set)
    last_watchdog: float = 0.0
    stopping: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def stale_after_s(self) -> float:
        # Half the watchdog interval: a hung loop is caught in one more interval at most.
        if self.watchdog_s:
            return max(2.0, self.watchdog_s / 2)
        return DEFAULT_STALE_AFTER_S

    # --- the policy, one tick ---------------------------------------------------------

    def check(self) -> None:
        now = self.clock()
        serving: list[tuple[str, int]] = []
        for process in self.processes():
            name = process.name
            watch = self.watches.setdefault(name, WorkerWatch())
            state = process.state
            if state in (ProcessState.NONE, ProcessState.IDLE, ProcessState.TERMINATED):
                continue  # not started yet, or being shut down on purpose
            # exitcode stays None while the process runs, and before it has been spawned
            # (is_alive() is False then too: that is not a death).
            if process.pid is None or process.exitcode is None:
                if state is ProcessState.ACKED and process.pid:
                    if watch.serving_pid != process.pid:
                        watch.serving_pid = process.pid
                        watch.serving_since = now
                        self._record_pid(name, process.pid)
                    if watch.down_since is not None:
                        log.warning("worker %s is back (pid %s) after %.1f s", name,
                                    process.pid, now - watch.down_since)
                    watch.down_since = None
                    watch.restart_requested_at = None
                    serving.append((name, process.pid))
                elif watch.down_since is not None:
                    self._check_replacement(name, watch, now)
                continue
            if state is ProcessState.RESTARTING:
                continue  # the manager is starting its replacement right now
            if watch.down_since is None:
                watch.down_since = now
                log.error("worker %s (pid %s) died with exit code %s; replacing it", name,
                          process.pid, process.exitcode)
            if watch.restart_requested_at is None or \
                    now - watch.restart_requested_at >= REPLACE_DEADLINE_S / 4:
                self._restart(name, watch, now)
            self._check_replacement(name, watch, now)
        self._check_memory(now, serving)
        self._notify_systemd(now, serving)

    def _record_pid(self, name: str, pid: int) -> None:
        # Runs once a worker has acknowledged (its state only becomes ACKED after both
        # unlocked writes), so nothing overwrites the pid written here.
        if self.shared_state is None:
            return
        try:
            entry = self.shared_state.get(name)
            if entry is not None and entry.get("pid") != pid:
                log.info("worker %s: shared state named pid %s, the serving process is %s",
                         name, entry.get("pid"), pid)
                self.shared_state[name] = {**entry, "pid": pid}
        except (OSError, EOFError) as exc:  # the state's manager process is going away
            log.warning("worker state unavailable: %s", exc)

    def _check_memory(self, now: float, serving: list[tuple[str, int]]) -> None:
        if (not self.max_worker_memory_mib or self.stopping
                or now - self.last_memory_check < MEMORY_CHECK_INTERVAL_S):
            return
        self.last_memory_check = now
        self.memory_restarted &= {pid for _, pid in serving}
        for name, pid in serving:
            used = self.memory_of(pid)
            if used is None or used <= self.max_worker_memory_mib or pid in self.memory_restarted:
                continue
            log.warning("worker %s (pid %s) uses %.0f MiB, over its %d MiB limit; restarting "
                        "it gracefully", name, pid, used, self.max_worker_memory_mib)
            self.memory_restarted.add(pid)
            self._restart(name, self.watches[name], now)

    def _restart(self, name: str, watch: WorkerWatch, now: float) -> None:
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
        if len(self.restarts) >= MAX_RESTARTS:
            self.give_up(f"{len(self.restarts)} worker restarts within {RESTART_WINDOW_S:.0f} s")
            return
        self.restarts.append(now)
        watch.restart_requested_at = now
        self.request_restart(name)

    def _check_replacement(self, name: str, watch: WorkerWatch, now: float) -> None:
        if watch.down_since is not None and now - watch.down_since > REPLACE_DEADLINE_S:
            self.give_up(f"worker {name} is not serving {now - watch.down_since:.0f} s after "
                         "it died")

    def _notify_systemd(self, now: float, serving: list[tuple[str, int]]) -> None:
        if self.stopping:
            return
        all_serving = len(serving) >= self.expected_workers
        if all_serving and not self.ready_sent:
            self.ready_sent = self.notify(
                f"READY=1\nSTATUS={len(serving)} of {self.expected_workers} workers serving")
            log.info("all %d workers serving", len(serving))
        if not self.watchdog_s or not self.ready_sent:
            return
        stale = [(name, pid) for name, pid in serving if self.heartbeat_age(name, pid, now)
                 > self.stale_after_s]
        stale_names = {name for name, _ in stale}
        if stale_names != self.stale_reported:
            if stale:
                # Logged once, and not fed: systemd's watchdog restarts the instance.
                log.error("no heartbeat from %s for more than %.0f s (event loop blocked?); "
                          "the systemd watchdog is not fed",
                          ", ".join(f"{name} (pid {pid})" for name, pid in stale),
                          self.stale_after_s)
                self.notify(f"STATUS=worker event loop blocked: {', '.join(sorted(stale_names))}")
            else:
                log.warning("every worker answers its heartbeat again")
                self.notify(f"STATUS={len(serving)} of {self.expected_workers} workers serving")
            self.stale_reported = stale_names
        if stale:
            return
        if now - self.last_watchdog >= self.watchdog_s / 4:
            self.notify("WATCHDOG=1")
            self.last_watchdog = now

    def heartbeat_age(self, name: str, pid: int, now: float) -> float:
        watch = self.watches[name]
        # A worker that just started serving gets one stale period before its first beat.
        last = max(self.heartbeats.get(pid, 0.0), watch.serving_since)
        return now - last

    def record_heartbeats(self, timeout_s: float) -> None:
        """Read every heartbeat datagram that arrives within timeout_s (the tick's wait)."""
        sock = self.heartbeat_socket
        if sock is None:
            self._stop.wait(timeout_s)
            return
        deadline = self.clock() + timeout_s
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            try:
                data = sock.recv(64)
            except TimeoutError:
                return
            except OSError:
                self._stop.wait(remaining)
                return
            try:
                self.heartbeats[int(data)] = self.clock()
            except ValueError:
                continue

    # --- the thread ----------------------------------------------------------------------

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # never die quietly: a dead supervisor stops the watchdog
                log.exception("worker supervision failed")
            self.record_heartbeats(CHECK_INTERVAL_S)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="worker-supervisor",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)


def _exit_instance(reason: str) -> None:
    """Replacing workers failed: end the instance with status 1 so systemd restarts it."""
    log.critical("giving up on this instance: %s; exiting so that it is restarted", reason)
    sd_notify(f"STATUS=exiting: {reason}")
    for child in multiprocessing.active_children():
        if child.pid:
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    logging.shutdown()
    os._exit(1)


def setup_supervision(app: Sanic) -> None:
    """Wire the supervisor (main process) and the heartbeats (workers) into `app`."""

    @app.main_process_start
    async def open_heartbeat_socket(app: Sanic) -> None:
        name = f"@assistantapp-heartbeat-{os.getpid()}-{secrets.token_hex(4)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(_socket_address(name))
        app.ctx.heartbeat_socket = sock
        # Workers are started after this listener and inherit the environment.
        os.environ[HEARTBEAT_SOCKET_ENV] = name
        os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())

    @app.main_process_ready
    async def start_supervisor(app: Sanic) -> None:
        manager = app.manager

        def server_processes() -> list[Any]:
            return [process for process in manager.transient_processes
                    if process.name.startswith(SERVER_PROCESS_PREFIX)]

        def request_restart(name: str) -> None:
            # The message app.m.restart(name) sends from a worker; the manager's monitor
            # loop (main thread) receives it and restarts that one process.
            manager.monitor_publisher.send(f"{name}:")

        supervisor = Supervisor(
            processes=server_processes,
            request_restart=request_restart,
            give_up=_exit_instance,
            expected_workers=manager.num_server,
            watchdog_s=watchdog_interval_s(),
            heartbeat_socket=getattr(app.ctx, "heartbeat_socket", None),
            max_worker_memory_mib=getattr(app.config.get("SETTINGS"), "worker_max_memory_mb",
                                          0),
            shared_state=manager.worker_state,
        )
        app.ctx.supervisor = supervisor
        # For /metrics (worker_gauges): the workers start after this listener.
        os.environ[CONFIGURED_WORKERS_ENV] = str(manager.num_server)

        # A requested shutdown is not a death to heal: stop supervising first, then let
        # Sanic's own handler (installed by the manager) shut the workers down.
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)

            def on_shutdown(signum: int, frame: FrameType | None,
                            previous: Any = previous) -> None:
                if not supervisor.stopping:
                    supervisor.stopping = True
                    sd_notify("STOPPING=1")
                if callable(previous):
                    previous(signum, frame)

            signal.signal(signum, on_shutdown)
        supervisor.start()

    @app.main_process_stop
    async def stop_supervisor(app: Sanic) -> None:
        supervisor = getattr(app.ctx, "supervisor", None)
        if supervisor is not None:
            supervisor.stop()
        sock = getattr(app.ctx, "heartbeat_socket", None)
        if sock is not None:
            sock.close()
        # At the interpreter's exit, once Sanic has joined its workers (they hold the
        # tracker's pipe too: stopping it earlier would wait for them).
        atexit.register(_stop_resource_tracker)

    @app.after_server_start
    async def start_heartbeat(app: Sanic) -> None:
        name = os.environ.get(HEARTBEAT_SOCKET_ENV)
        parent = os.environ.get(SUPERVISOR_PID_ENV)
        if not name or not parent or not os.environ.get("SANIC_WORKER_PROCESS"):
            return  # not a worker of a supervised main process (single process, tests)
        _die_with_parent(int(parent))
        app.add_task(_send_heartbeats(_socket_address(name)), name="supervision-heartbeat")


def _stop_resource_tracker() -> None:
    """Let multiprocessing's resource tracker (a child of this main process, started for
    Sanic's workers) exit BEFORE the main process does. Left to notice the main process's
    exit on its own, it is still alive when systemd sends the stop's final SIGKILL
    (KillMode=mixed), and where systemd cannot read the unit's cgroup (containers on a
    cgroup-v1 hybrid host) such a stop then waits the whole TimeoutStopSec, which follows
    the stream timeout (minutes). `_stop()` is the stdlib's own way to end it: it closes
    the tracker's pipe and reaps it (CPython 3.11-3.13)."""
    from multiprocessing import resource_tracker

    stop = getattr(getattr(resource_tracker, "_resource_tracker", None), "_stop", None)
    if callable(stop):
        try:
            stop()
        except Exception:  # never fail a clean stop over it
            log.warning("could not stop the multiprocessing resource tracker", exc_info=True)


def worker_gauges(app: Sanic) -> str:
    """Prometheus lines for alerts on "serving no (or too few) workers": Sanic's own view of
    its server processes (the shared worker state), read from inside a worker. Empty when
    the app runs without a main process (single process, tests)."""
    multiplexer = getattr(app, "multiplexer", None)
    configured = os.environ.get(CONFIGURED_WORKERS_ENV)
    if multiplexer is None or not configured:
        return ""
    try:
        states = multiplexer.workers
    except (OSError, EOFError) as exc:  # the main process is going away
        log.warning("worker state unavailable: %s", exc)
        return ""
    serving = sum(1 for name, state in states.items()
                  if name.startswith(SERVER_PROCESS_PREFIX)
                  and state.get("state") == ProcessState.ACKED.name)
    return (
        "# HELP assistantapp_workers_configured Worker processes this instance should run.\n"
        "# TYPE assistantapp_workers_configured gauge\n"
        f"assistantapp_workers_configured {int(configured)}\n"
        "# HELP assistantapp_workers_serving Worker processes serving right now.\n"
        "# TYPE assistantapp_workers_serving gauge\n"
        f"assistantapp_workers_serving {serving}\n"
    )
