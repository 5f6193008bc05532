"""Request and agent metrics, aggregated across all Sanic worker processes.

Design (like prometheus_client's multiprocess mode, without its per-observation file
writes: bench/metrics_store.py measures recording a request at 0.6 µs here against 6-11 µs
there, and a 4-worker scrape at about half its time): every worker
counts in plain memory — a dict update per request, no I/O, no lock — and a background task
writes the worker's snapshot to its own file in a directory shared by all workers of one
server. `/metrics` (and the "agents" part of `/health`) merge the files: counts and totals are
summed, minima and maxima are combined. Redis is not involved, so metrics keep working during
a Redis outage (which is exactly when they are needed).

The shared directory is created by the Sanic main process before the workers are spawned and
handed to them through an environment variable; a server run without a main process (tests in
a single process) gets a private directory. Snapshots of workers that exited stay in the
directory, so counters never go backwards when Sanic replaces a worker.

Other parts of the app record through two functions:
- `record_agent_execution(app, agent, success, duration_s)` — the assistant's agents;
- `record_event(app, name)` — named counters, exported as `assistantapp_<name>_total`.
The rate limiter's own per-worker count of Redis errors (`ratelimit_status`) is copied into the
store before each snapshot, so `assistantapp_ratelimit_redis_errors_total` is server-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanic import Request, Sanic
from sanic.response import BaseHTTPResponse, HTTPResponse, text
from sanic.response import json as json_response

from app.config import Settings
from app.errors import json_error
from app.ops.clientip import IPNetwork, client_ip, parse_networks
from app.ops.ratelimit import ratelimit_status
from app.ops.supervision import worker_gauges

log = logging.getLogger(__name__)

METRICS_DIR_ENV = "ASSISTANTAPP_METRICS_DIR"
# How stale another worker's numbers may be in /metrics. Writing a few hundred bytes twice a
# second costs nothing measurable; the serving worker's own numbers are always current.
FLUSH_INTERVAL_S = 0.5
UNMATCHED_ROUTE = "<unmatched>"
# Events that always appear in /metrics (as 0 before they first happen), so alerts can be
# written against them from day one.
KNOWN_EVENTS = ("ratelimit_redis_errors",)
# Request middleware run in descending priority, response middleware in ascending: the
# highest priority puts the timer around every other middleware.
_AROUND_EVERYTHING = 1_000_000
# Upper bounds (seconds) of the request duration histogram: what the p99 alert reads.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# --------------------------------------------------------------------------------------------
# In-memory accumulation (one per worker process)
# --------------------------------------------------------------------------------------------
@dataclass
class RouteStats:
    count: int = 0
    duration_sum: float = 0.0
    duration_min: float = float("inf")
    duration_max: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    # Requests per duration bucket (DURATION_BUCKETS, then one for longer ones); not
    # cumulative here, summed up only when rendered.
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))

    def merge(self, other: RouteStats) -> None:
        self.count += other.count
        self.duration_sum += other.duration_sum
        self.duration_min = min(self.duration_min, other.duration_min)
        self.duration_max = max(self.duration_max, other.duration_max)
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.buckets = [mine + theirs
                        for mine, theirs in zip(self.buckets, other.buckets, strict=True)]

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.duration_sum,
                "min": self.duration_min if self.count else None,
                "max": self.duration_max,
                "statuses": {str(status): n for status, n in self.statuses.items()},
                "buckets": self.buckets}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RouteStats:
        minimum = data.get("min")
        buckets = [int(n) for n in data.get("buckets", ())]
        if len(buckets) != len(DURATION_BUCKETS) + 1:
            # A snapshot from before the histogram (or with other bounds): its requests count
            # in the last bucket, so totals stay right and no bucket claims them falsely.
            buckets = [0] * len(DURATION_BUCKETS) + [int(data["count"])]
        return cls(count=int(data["count"]), duration_sum=float(data["sum"]),
                   duration_min=float("inf") if minimum is None else float(minimum),
                   duration_max=float(data["max"]),
                   statuses={int(k): int(v) for k, v in data["statuses"].items()},
                   buckets=buckets)


@dataclass
class AgentStats:
    successes: int = 0
    failures: int = 0
    duration_sum: float = 0.0

    @property
    def total(self) -> int:
        return self.successes + self.failures

    def merge(self, other: AgentStats) -> None:
        self.successes += other.successes
        self.failures += other.failures
        self.duration_sum += other.duration_sum

    def to_json(self) -> dict[str, Any]:
        return {"successes": self.successes, "failures": self.failures,
                "sum": self.duration_sum}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentStats:
        return cls(successes=int(data["successes"]), failures=int(data["failures"]),
                   duration_sum=float(data["sum"]))


@dataclass
class MetricsStore:
    """Everything one process (or, after merging, the whole server) has counted."""

    requests: dict[tuple[str, str], RouteStats] = field(default_factory=dict)
    agents: dict[str, AgentStats] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    # Bumped on every change, so the flusher skips writing an unchanged snapshot.
    version: int = 0
    # Names this process's snapshot. Not the pid alone: the kernel reuses the pid of an
    # exited worker, and a new worker overwriting the dead one's final numbers would make
    # every counter go backwards.
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def record_request(self, method: str, route: str, status: int, duration: float) -> None:
        # On every request's path: one dict lookup and plain attribute updates, inlined.
        stats = self.requests.get((method, route))
        if stats is None:
            stats = self.requests[(method, route)] = RouteStats()
        stats.count += 1
        stats.duration_sum += duration
        if duration < stats.duration_min:
            stats.duration_min = duration
        if duration > stats.duration_max:
            stats.duration_max = duration
        stats.buckets[bisect_left(DURATION_BUCKETS, duration)] += 1
        statuses = stats.statuses
        statuses[status] = statuses.get(status, 0) + 1
        self.version += 1

    def record_agent(self, agent: str, success: bool, duration: float) -> None:
        stats = self.agents.get(agent)
        if stats is None:
            stats = self.agents[agent] = AgentStats()
        if success:
            stats.successes += 1
        else:
            stats.failures += 1
        stats.duration_sum += max(duration, 0.0)
        self.version += 1

    def record_event(self, name: str, amount: int = 1) -> None:
        self.events[name] = self.events.get(name, 0) + amount
        self.version += 1

    def merge(self, other: MetricsStore) -> None:
        for key, stats in other.requests.items():
            self.requests.setdefault(key, RouteStats()).merge(stats)
        for agent, agent_stats in other.agents.items():
            self.agents.setdefault(agent, AgentStats()).merge(agent_stats)
        for name, n in other.events.items():
            self.events[name] = self.events.get(name, 0) + n
        self.started_at = min(self.started_at, other.started_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "instance": self.instance,
            "startedAt": self.started_at,
            "rssBytes": resident_memory_bytes(),
            "requests": [{"method": m, "route": r, **s.to_json()}
                         for (m, r), s in self.requests.items()],
            "agents": {name: s.to_json() for name, s in self.agents.items()},
            "events": dict(self.events),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetricsStore:
        store = cls(started_at=float(data.get("startedAt", time.time())))
        for item in data.get("requests", []):
            store.requests[(str(item["method"]), str(item["route"]))] = RouteStats.from_json(item)
        for name, item in data.get("agents", {}).items():
            store.agents[str(name)] = AgentStats.from_json(item)
        store.events = {str(k): int(v) for k, v in data.get("events", {}).items()}
        return store


def resident_memory_bytes() -> int:
    """Current RSS from /proc (Linux); 0 where /proc is not available."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# --------------------------------------------------------------------------------------------
# The shared directory of worker snapshots
# --------------------------------------------------------------------------------------------
def _snapshot_path(directory: Path, pid: int, instance: str) -> Path:
    return directory / f"worker-{pid}-{instance}.json"


def write_snapshot(store: MetricsStore, directory: Path) -> None:
    """Atomically replace this process's snapshot (readers never see half a file)."""
    path = _snapshot_path(directory, os.getpid(), store.instance)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(store.to_json()), encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class AggregatedMetrics:
    store: MetricsStore
    # pid -> rss of every process that contributed (exited workers included).
    workers: dict[int, int]


def _sync_rate_limiter_errors(app: Sanic, store: MetricsStore) -> None:
    """The rate limiter counts its Redis errors per worker; copy the count into the store
    so that it is aggregated like everything else."""
    errors = int(ratelimit_status(app)["errors_total"])
    if store.events.get("ratelimit_redis_errors", 0) != errors:
        store.events["ratelimit_redis_errors"] = errors
        store.version += 1


def aggregate(app: Sanic) -> AggregatedMetrics:
    """This process's live numbers plus the latest snapshot of every other worker."""
    own = _store(app)
    _sync_rate_limiter_errors(app, own)
    merged = MetricsStore(started_at=own.started_at)
    merged.merge(own)
    own_pid = os.getpid()
    workers = {own_pid: resident_memory_bytes()}
    directory: Path | None = getattr(app.ctx, "metrics_dir", None)
    if directory is not None:
        for path in sorted(directory.glob("worker-*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                pid = int(data["pid"])
                if data.get("instance", pid if pid == own_pid else None) in (
                        own.instance, own_pid):
                    continue  # this process: its live numbers are merged already
                merged.merge(MetricsStore.from_json(data))
                # An exited worker whose pid was reused keeps its counts, not its memory.
                workers.setdefault(pid, int(data.get("rssBytes", 0)))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # A file vanishing while the server stops must not break /metrics.
                log.warning("skipping unreadable metrics snapshot %s: %s", path.name, exc)
    return AggregatedMetrics(store=merged, workers=workers)


# --------------------------------------------------------------------------------------------
# Public recording API
# --------------------------------------------------------------------------------------------
def _store(app: Sanic) -> MetricsStore:
    store: MetricsStore | None = getattr(app.ctx, "metrics", None)
    if store is None:
        store = app.ctx.metrics = MetricsStore()
    return store


def record_agent_execution(app: Sanic, agent: str, success: bool, duration_s: float) -> None:
    """Count one agent run; cheap and synchronous, safe to call from any handler."""
    _store(app).record_agent(agent, success, duration_s)


def record_event(app: Sanic, name: str, amount: int = 1) -> None:
    """Count a named event, exported as assistantapp_<name>_total."""
    _store(app).record_event(name, amount)


def agent_summary(app: Sanic) -> dict[str, Any]:
    """Agent statistics of the whole server, in the shape /health reports them."""
    agents = aggregate(app).store.agents
    return agents_json(agents)


def agents_json(agents: dict[str, AgentStats]) -> dict[str, Any]:
    def summary(stats: AgentStats) -> dict[str, Any]:
        return {"total": stats.total, "successful": stats.successes, "failed": stats.failures,
                "averageDurationMs": round(stats.duration_sum / stats.total * 1000, 1)
                if stats.total else 0.0}

    total = AgentStats()
    for stats in agents.values():
        total.merge(stats)
    return {**summary(total), "byAgent": {name: summary(s) for name, s in sorted(agents.items())}}


# --------------------------------------------------------------------------------------------
# Prometheus text exposition
# --------------------------------------------------------------------------------------------
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render_prometheus(data: AggregatedMetrics, version: str) -> str:
    store = data.store
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    routes = sorted(store.requests.items())
    family("assistantapp_http_requests_total", "counter",
           "HTTP requests by method, route pattern and status code.")
    for (method, route), stats in routes:
        for status, n in sorted(stats.statuses.items()):
            lines.append("assistantapp_http_requests_total"
                         f"{_labels(method=method, route=route, status=str(status))} {n}")
    family("assistantapp_http_request_duration_seconds", "histogram",
           "Time from the first request middleware to the last response middleware.")
    for (method, route), stats in routes:
        labels = _labels(method=method, route=route)
        cumulative = 0
        for bound, n in zip((*DURATION_BUCKETS, float("inf")), stats.buckets, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else _num(bound)
            lines.append("assistantapp_http_request_duration_seconds_bucket"
                         f"{_labels(method=method, route=route, le=le)} {cumulative}")
        lines.append(f"assistantapp_http_request_duration_seconds_sum{labels} "
                     f"{_num(stats.duration_sum)}")
        lines.append(f"assistantapp_http_request_duration_seconds_count{labels} {stats.count}")
    for suffix, help_text in (("min", "Fastest request"), ("max", "Slowest request")):
        name = f"assistantapp_http_request_duration_seconds_{suffix}"
        family(name, "gauge", f"{help_text} per method and route pattern, in seconds.")
        for (method, route), stats in routes:
            value = stats.duration_min if suffix == "min" else stats.duration_max
            lines.append(f"{name}{_labels(method=method, route=route)} {_num(value)}")

    agents = sorted(store.agents.items())
    family("assistantapp_agent_executions_total", "counter",
           "Agent executions by agent and result (success or failure).")
    for agent, agent_stats in agents:
        lines.append(f"assistantapp_agent_executions_total{_labels(agent=agent, result='success')}"
                     f" {agent_stats.successes}")
        lines.append(f"assistantapp_agent_executions_total{_labels(agent=agent, result='failure')}"
                     f" {agent_stats.failures}")
    family("assistantapp_agent_execution_duration_seconds", "summary",
           "Duration of agent executions.")
    for agent, agent_stats in agents:
        labels = _labels(agent=agent)
        lines.append(f"assistantapp_agent_execution_duration_seconds_sum{labels} "
                     f"{_num(agent_stats.duration_sum)}")
        lines.append(f"assistantapp_agent_execution_duration_seconds_count{labels} "
                     f"{agent_stats.total}")

    events = {name: 0 for name in KNOWN_EVENTS}
    events.update(store.events)
    for name, n in sorted(events.items()):
        metric = f"assistantapp_{name}_total"
        family(metric, "counter", f"Occurrences of {name.replace('_', ' ')}.")
        lines.append(f"{metric} {n}")

    now = time.time()
    family("assistantapp_info", "gauge", "Application version.")
    lines.append(f"assistantapp_info{_labels(version=version)} 1")
    family("assistantapp_process_start_time_seconds", "gauge",
           "Unix time the oldest contributing worker started.")
    lines.append(f"assistantapp_process_start_time_seconds {_num(store.started_at)}")
    family("assistantapp_uptime_seconds", "gauge", "Seconds since the oldest worker started.")
    lines.append(f"assistantapp_uptime_seconds {_num(round(now - store.started_at, 3))}")
    family("assistantapp_workers", "gauge",
           "Worker processes that contributed to these numbers (exited ones included).")
    lines.append(f"assistantapp_workers {len(data.workers)}")
    family("assistantapp_worker_resident_memory_bytes", "gauge",
           "Resident memory of each worker at its last snapshot.")
    for pid, rss in sorted(data.workers.items()):
        lines.append(f"assistantapp_worker_resident_memory_bytes{_labels(pid=str(pid))} {rss}")
    return "\n".join(lines) + "\n"


def render_json(data: AggregatedMetrics) -> dict[str, Any]:
    store = data.store
    return {
        "requests": [{"method": m, "route": r, "count": s.count,
                      "totalDurationMs": round(s.duration_sum * 1000, 3),
                      "minDurationMs": round(s.duration_min * 1000, 3) if s.count else None,
                      "maxDurationMs": round(s.duration_max * 1000, 3),
                      "statusCodes": {str(k): n for k, n in sorted(s.statuses.items())}}
                     for (m, r), s in sorted(store.requests.items())],
        "agents": agents_json(store.agents),
        "events": {**{name: 0 for name in KNOWN_EVENTS}, **store.events},
        "workers": sorted(data.workers),
        "startedAt": store.started_at,
    }


# --------------------------------------------------------------------------------------------
# Wiring
# --------------------------------------------------------------------------------------------
def client_allowed(ip: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks if net.version == address.version)


def setup_metrics(app: Sanic, settings: Settings) -> None:
    from app.ops.health import app_version

    app.ctx.metrics = MetricsStore()
    owned_dir: dict[str, Path] = {}

    @app.main_process_start
    async def create_shared_dir(app: Sanic) -> None:
        # Always a fresh directory: counters start at zero with every server start, and an
        # inherited variable (a parent server, a test runner) is never reused.
        path = Path(tempfile.mkdtemp(prefix="assistantapp-metrics-"))
        owned_dir["path"] = path
        os.environ[METRICS_DIR_ENV] = str(path)

    @app.main_process_stop
    async def remove_shared_dir(app: Sanic) -> None:
        path = owned_dir.pop("path", None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
            if os.environ.get(METRICS_DIR_ENV) == str(path):
                del os.environ[METRICS_DIR_ENV]

    @app.before_server_start
    async def start_flusher(app: Sanic) -> None:
        app.ctx.metrics_dir, app.ctx.metrics_private_dir = _worker_metrics_dir()
        app.ctx.metrics_flusher = asyncio.get_running_loop().create_task(
            _flush_forever(app), name="metrics-flusher")

    @app.after_server_stop
    async def stop_flusher(app: Sanic) -> None:
        task: asyncio.Task[None] | None = getattr(app.ctx, "metrics_flusher", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            app.ctx.metrics_flusher = None
        directory: Path | None = getattr(app.ctx, "metrics_dir", None)
        if directory is not None:
            with contextlib.suppress(OSError):
                write_snapshot(_store(app), directory)  # the final numbers of this worker
            if getattr(app.ctx, "metrics_private_dir", False):
                shutil.rmtree(directory, ignore_errors=True)

    if not settings.metrics_enabled:
        # Agent statistics are still kept for /health; only HTTP timing and /metrics go.
        return

    networks = parse_networks(settings.metrics_allowed_cidrs)
    perf_counter = time.perf_counter

    # Plain (not async) middleware: Sanic awaits only awaitables, so no coroutine per call.
    def start_timer(request: Request) -> None:
        request.ctx.metrics_start = perf_counter()

    record_request = app.ctx.metrics.record_request

    def record_response(request: Request, response: BaseHTTPResponse) -> None:
        start = getattr(request.ctx, "metrics_start", None)
        if start is None:  # rejected before any middleware ran (e.g. body too large)
            return
        route = request.route
        record_request(request.method,
                       f"/{route.path}" if route is not None else UNMATCHED_ROUTE,
                       response.status, perf_counter() - start)

    app.register_middleware(start_timer, "request", priority=_AROUND_EVERYTHING)
    app.register_middleware(record_response, "response", priority=_AROUND_EVERYTHING)

    version = app_version()

    @app.get("/metrics", name="metrics")
    async def metrics_endpoint(request: Request) -> HTTPResponse:
        if not client_allowed(client_ip(request), networks):
            return json_error(403, "Metrics are only available from allowed networks",
                              "metrics_forbidden")
        data = aggregate(request.app)
        if request.args.get("format") == "json":
            return json_response(render_json(data))
        return text(render_prometheus(data, version) + worker_gauges(request.app)
                    + await readiness_gauge(request.app),
                    content_type="text/plain; version=0.0.4; charset=utf-8")


async def readiness_gauge(app: Sanic) -> str:
    """`/health/ready` as a gauge (alert "not ready"): the same result at most a second old
    that probes get (app/ops/health.py), so a scrape costs no extra check. Empty when the
    health endpoints are not set up."""
    ready_cache = getattr(app.ctx, "ready_cache", None)
    if ready_cache is None:
        return ""
    try:
        result = await ready_cache.get()
        ready = 0 if result["reasons"] else 1
    except Exception as exc:  # a failing check is "not ready", never a failed scrape
        log.warning("readiness check failed during a scrape: %s", exc)
        ready = 0
    return ("# HELP assistantapp_ready 1 while /health/ready answers 200 (database, Redis, "
            "session store and configuration work), else 0.\n"
            "# TYPE assistantapp_ready gauge\n"
            f"assistantapp_ready {ready}\n")


def _worker_metrics_dir() -> tuple[Path, bool]:
    """The shared directory, or a private one when no main process ran (single process)."""
    shared = os.environ.get(METRICS_DIR_ENV)
    if shared and os.path.isdir(shared):
        return Path(shared), False
    return Path(tempfile.mkdtemp(prefix="assistantapp-metrics-")), True


async def _flush_forever(app: Sanic) -> None:
    written = -1
    while True:
        store = _store(app)
        _sync_rate_limiter_errors(app, store)
        if store.version != written:
            try:
                write_snapshot(store, app.ctx.metrics_dir)
                written = store.version
            except OSError as exc:
                log.warning("cannot write metrics snapshot: %s", exc)
        await asyncio.sleep(FLUSH_INTERVAL_S)
