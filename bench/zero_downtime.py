"""Zero-downtime measurement: bounded HTTPS load through nginx while commands run.

A fixed number of async clients (default 8) request a few cheap paths over HTTPS, verifying
the server with the project CA, and record every request (start, end, status, error). While
the load runs, each --run command runs in turn (e.g. a deploy, then a rollback); the report
gives, for the whole run and for each command's window:

  - requests, failed (no HTTP answer) and non-2xx counts (the goal is 0 of both),
  - the longest gap between two successful responses,
  - p50 / p99 latency of the successful requests,
  - the command's wall time and exit code.

The load is bounded by --max-requests AND --max-seconds and stops by itself; a command still
running at --max-seconds is terminated. Only test hosts (10.213.0.0/16) and loopback are
accepted as targets: any other address is refused before a single packet is sent.

    .venv/bin/python bench/zero_downtime.py --url https://10.213.0.100 \\
        --cacert inventories/local/pki/ca.crt \\
        --run '.venv/bin/ansible-playbook -i inventories/local playbooks/deploy.yml \\
               -e app_force_deploy=true' \\
        --run '.venv/bin/ansible-playbook -i inventories/local playbooks/rollback.yml'

    .venv/bin/python bench/zero_downtime.py --self-test   # checks the measurement itself

Exit status: 0 when every command succeeded and no request failed (beyond --allowed-failures),
1 when requests failed, 2 on a refused target or bad arguments, 3 when a command failed.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

# Test hosts the project creates (testhosts bridge aabr0) and loopback: nothing else.
ALLOWED_NETWORKS = (ipaddress.ip_network("10.213.0.0/16"),)
DEFAULT_PATHS = ("/health/ready", "/health/live")


class TargetRefused(ValueError):
    """The URL points somewhere this tool must not send traffic to."""


@dataclass
class RequestRecord:
    started: float  # seconds since the run started (monotonic clock)
    finished: float
    path: str
    status: int | None  # None: no HTTP answer (connection refused/reset, timeout, TLS error)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def latency_ms(self) -> float:
        return (self.finished - self.started) * 1000


@dataclass
class CommandRecord:
    command: str
    started: float
    finished: float | None = None
    returncode: int | None = None
    timed_out: bool = False

    @property
    def wall_s(self) -> float | None:
        return None if self.finished is None else self.finished - self.started


@dataclass
class WindowStats:
    name: str
    start: float
    end: float
    requests: int
    ok: int
    failed: int  # no HTTP answer at all
    non_2xx: int
    longest_gap_s: float
    longest_gap_at: float | None  # run-relative time the longest gap started
    p50_ms: float | None
    p99_ms: float | None
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


def check_target(url: str) -> tuple[str, int]:
    """Resolve the URL's host; refuse anything outside the test network and loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise TargetRefused(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise TargetRefused(f"cannot resolve {parts.hostname!r}: {exc}") from exc
    addresses = {ipaddress.ip_address(info[4][0]) for info in infos}
    for address in addresses:
        if not (address.is_loopback or any(address in net for net in ALLOWED_NETWORKS)):
            raise TargetRefused(
                f"{parts.hostname} resolves to {address}: only loopback and the test hosts "
                f"({', '.join(str(net) for net in ALLOWED_NETWORKS)}) may be loaded")
    return parts.hostname, port


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def window_stats(name: str, records: list[RequestRecord], start: float,
                 end: float) -> WindowStats:
    """Statistics of the requests that started in [start, end).

    The longest gap counts from the window's start to the first success, between successes,
    and from the last success to the window's end, so an outage at either edge shows too.
    """
    inside = [r for r in records if start <= r.started < end]
    successes = sorted(r.finished for r in inside if r.ok)
    marks = [start, *successes, max(end, successes[-1] if successes else end)]
    longest_gap, gap_at = 0.0, None
    for before, after in itertools.pairwise(marks):
        if after - before > longest_gap:
            longest_gap, gap_at = after - before, before
    latencies = sorted(r.latency_ms for r in inside if r.ok)
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for record in inside:
        key = str(record.status) if record.status is not None else "no answer"
        statuses[key] = statuses.get(key, 0) + 1
        if record.error:
            errors[record.error] = errors.get(record.error, 0) + 1
    failed = sum(1 for r in inside if r.status is None)
    return WindowStats(
        name=name, start=start, end=end, requests=len(inside),
        ok=sum(1 for r in inside if r.ok), failed=failed,
        non_2xx=sum(1 for r in inside if r.status is not None and not r.ok),
        longest_gap_s=longest_gap, longest_gap_at=gap_at,
        p50_ms=percentile(latencies, 0.50), p99_ms=percentile(latencies, 0.99),
        statuses=statuses, errors=errors)


def describe_error(exc: BaseException) -> str:
    # The exception class says what happened (ConnectError, ReadTimeout,
    # RemoteProtocolError...); the message adds addresses and varies, so keep it short.
    message = str(exc).splitlines()[0][:80] if str(exc) else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class LoadRun:
    """Fixed-concurrency load bounded by a request count and a deadline."""

    def __init__(self, base_url: str, paths: list[str], concurrency: int, max_requests: int,
                 max_seconds: float, timeout_s: float, verify: ssl.SSLContext | bool,
                 keepalive: bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.keepalive = keepalive
        self.paths = paths
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.timeout_s = timeout_s
        self.verify = verify
        self.records: list[RequestRecord] = []
        self.stop = asyncio.Event()
        self.origin = time.monotonic()
        self._issued = 0

    def now(self) -> float:
        return time.monotonic() - self.origin

    async def run(self) -> None:
        # Each client keeps its own keep-alive connection, like a browser tab: a reload or a
        # backend switch has to cope with connections that were open before it. Without
        # keep-alive every request opens its own connection (a client behind a proxy that
        # does not pool, or a script).
        limits = httpx.Limits(max_connections=self.concurrency,
                              max_keepalive_connections=self.concurrency if self.keepalive else 0)
        async with httpx.AsyncClient(verify=self.verify, timeout=self.timeout_s, limits=limits,
                                     follow_redirects=False, trust_env=False) as client:
            workers = [asyncio.create_task(self._worker(client, n))
                       for n in range(self.concurrency)]
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=self.max_seconds)
            except TimeoutError:
                pass
            self.stop.set()
            await asyncio.gather(*workers)

    async def _worker(self, client: httpx.AsyncClient, number: int) -> None:
        paths = itertools.cycle(self.paths[number % len(self.paths):] +
                                self.paths[:number % len(self.paths)])
        while not self.stop.is_set():
            if self._issued >= self.max_requests:
                self.stop.set()
                break
            self._issued += 1
            path = next(paths)
            started = self.now()
            try:
                response = await client.get(
                    self.base_url + path,
                    headers={"X-Request-ID": f"zd-{number}-{self._issued}"})
                record = RequestRecord(started, self.now(), path, response.status_code)
            except httpx.HTTPError as exc:
                record = RequestRecord(started, self.now(), path, None, describe_error(exc))
            self.records.append(record)
            if record.status is None:
                # A refused connection fails in microseconds; pause a little so an outage
                # is measured as time, not as thousands of failures.
                await asyncio.sleep(0.05)


async def run_command(command: str, load: LoadRun, deadline: float,
                      log: int | None) -> CommandRecord:
    record = CommandRecord(command=command, started=load.now())
    print(f"zero_downtime: running: {command}", file=sys.stderr, flush=True)
    process = await asyncio.create_subprocess_shell(
        command, stdout=log, stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True)
    try:
        record.returncode = await asyncio.wait_for(process.wait(),
                                                   timeout=max(0.0, deadline - load.now()))
    except TimeoutError:
        record.timed_out = True
        os.killpg(process.pid, signal.SIGTERM)
        try:
            record.returncode = await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            os.killpg(process.pid, signal.SIGKILL)
            record.returncode = await process.wait()
    record.finished = load.now()
    return record


async def measure(load: LoadRun, commands: list[str], warmup_s: float, cooldown_s: float,
                  log: int | None) -> list[CommandRecord]:
    load_task = asyncio.create_task(load.run())
    done: list[CommandRecord] = []
    try:
        await asyncio.wait({load_task}, timeout=warmup_s)
        for command in commands:
            if load.stop.is_set():
                break
            done.append(await run_command(command, load, load.max_seconds, log))
        if commands:
            await asyncio.wait({load_task}, timeout=cooldown_s)
            load.stop.set()
        await load_task
    finally:
        load.stop.set()
    return done


def format_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def print_report(stats: list[WindowStats], commands: list[CommandRecord], load: LoadRun) -> None:
    print(f"target {load.base_url}  paths {','.join(load.paths)}  "
          f"concurrency {load.concurrency}  "
          f"{'keep-alive' if load.keepalive else 'a new connection per request'}")
    for window in stats:
        gap_at = ("" if window.longest_gap_at is None
                  else f" (from t={window.longest_gap_at:.2f}s)")
        print(f"== {window.name}  t={window.start:.2f}s..{window.end:.2f}s")
        print(f"   requests {window.requests}  ok {window.ok}  failed {window.failed}  "
              f"non-2xx {window.non_2xx}")
        print(f"   longest gap between successes {window.longest_gap_s * 1000:.0f} ms{gap_at}")
        print(f"   latency p50 {format_ms(window.p50_ms)}  p99 {format_ms(window.p99_ms)}")
        print(f"   statuses {json.dumps(window.statuses, sort_keys=True)}")
        if window.errors:
            print(f"   errors {json.dumps(window.errors, sort_keys=True)}")
    for command in commands:
        wall = "-" if command.wall_s is None else f"{command.wall_s:.1f} s"
        timed_out = "  TIMED OUT (terminated)" if command.timed_out else ""
        print(f"command wall {wall}  exit {command.returncode}{timed_out}  {command.command}")


def report(load: LoadRun, commands: list[CommandRecord], json_out: Path | None) -> int:
    end = max((r.finished for r in load.records), default=load.now())
    stats = [window_stats("whole run", load.records, 0.0, end)]
    for number, command in enumerate(commands, start=1):
        stats.append(window_stats(f"command {number}", load.records, command.started,
                                  command.finished if command.finished is not None else end))
    print_report(stats, commands, load)
    if json_out is not None:
        json_out.write_text(json.dumps({
            "target": load.base_url, "paths": load.paths, "concurrency": load.concurrency,
            "windows": [asdict(s) for s in stats],
            "commands": [{**asdict(c), "wall_s": c.wall_s} for c in commands],
            "requests": [asdict(r) for r in load.records],
        }, indent=1) + "\n")
        print(f"every request: {json_out}")
    return stats[0].failed + stats[0].non_2xx


def ssl_context(cacert: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cacert)
    return context


# --- Self-test -----------------------------------------------------------------------------

SELF_TEST_SERVER = r"""
import http.server, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b'{"status":"ready"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def make_self_test_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 signed by it (so verification is real)."""
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    commands = [
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", ca_key, "-out", ca_crt, "-days", "1",
         "-subj", "/CN=zero_downtime self-test CA"],
        ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
         "-CAcreateserial", "-out", crt, "-days", "1", "-extfile", ext],
    ]
    for command in commands:
        subprocess.run([str(word) for word in command], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return ca_crt, crt, key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_listening(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"self-test server did not listen on port {port}")


def self_test() -> int:
    """The measurement must see a 1.5 s outage, and must see none when nothing happens."""
    with tempfile.TemporaryDirectory(prefix="zero-downtime-") as tmp:
        ca_crt, crt, key = make_self_test_pki(Path(tmp))
        port = free_port()
        url = f"https://127.0.0.1:{port}"
        check_target(url)
        script = Path(tmp) / "server.py"
        script.write_text(SELF_TEST_SERVER)
        start = [sys.executable, str(script), str(port), str(crt), str(key)]
        server = subprocess.Popen(start)
        # The "deploy": kill the server, stay down 1.5 s, start it again.
        outage = (f"kill {server.pid}; sleep 1.5; {' '.join(start)} >/dev/null 2>&1 & "
                  f"echo $! > {tmp}/restarted.pid; sleep 1")
        failures: list[str] = []
        try:
            asyncio.run(wait_listening(port))
            quiet = LoadRun(url, ["/health/ready"], 4, 400, 10, 2, ssl_context(str(ca_crt)))
            asyncio.run(measure(quiet, ["sleep 1"], 0.2, 0.2, subprocess.DEVNULL))
            calm = window_stats("calm", quiet.records, 0, quiet.now())
            print(f"self-test calm: {calm.requests} requests, {calm.failed + calm.non_2xx} "
                  f"failed, longest gap {calm.longest_gap_s * 1000:.0f} ms")
            if calm.requests == 0 or calm.failed or calm.non_2xx or calm.longest_gap_s > 1:
                failures.append("a calm run must have requests, no failures, no long gap")
            if calm.requests > 400:
                failures.append(f"the count bound was exceeded: {calm.requests} > 400")

            loaded = LoadRun(url, ["/health/ready"], 4, 100_000, 15, 2,
                             ssl_context(str(ca_crt)))
            commands = asyncio.run(measure(loaded, [outage], 0.5, 1.0, subprocess.DEVNULL))
            stats = window_stats("outage", loaded.records, commands[0].started,
                                 commands[0].finished or loaded.now())
            print(f"self-test outage: {stats.requests} requests, {stats.failed} failed, "
                  f"longest gap {stats.longest_gap_s * 1000:.0f} ms, "
                  f"command {commands[0].wall_s:.1f} s")
            if stats.failed == 0 or stats.longest_gap_s < 1.4:
                failures.append("a 1.5 s outage must show failures and a gap >= 1.4 s")

            refused = ["https://192.0.2.1/", "https://10.214.0.5/", "ftp://127.0.0.1/"]
            for bad in refused:
                try:
                    check_target(bad)
                    failures.append(f"{bad} was not refused")
                except TargetRefused:
                    pass
            print(f"self-test targets refused: {', '.join(refused)}")
        finally:
            server.terminate()
            server.wait()
            restarted = Path(tmp) / "restarted.pid"
            if restarted.exists():
                try:
                    os.kill(int(restarted.read_text()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
    for failure in failures:
        print(f"self-test FAILED: {failure}")
    print("self-test " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="base URL through nginx, e.g. https://10.213.0.100")
    parser.add_argument("--cacert", help="CA file to verify the server with (project CA)")
    parser.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                        help="comma-separated paths requested in turn (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--max-seconds", type=float, default=900,
                        help="hard bound of the whole run; a command still running is killed")
    parser.add_argument("--duration", type=float, default=10,
                        help="seconds of load when no --run command is given")
    parser.add_argument("--timeout", type=float, default=10, help="per-request timeout (s)")
    parser.add_argument("--warmup", type=float, default=2, help="load before the first command")
    parser.add_argument("--cooldown", type=float, default=2, help="load after the last command")
    parser.add_argument("--run", action="append", default=[], metavar="COMMAND",
                        help="shell command run under load (repeat: run one after another)")
    parser.add_argument("--command-log", type=Path,
                        help="file for the commands' output (default: this process's stderr)")
    parser.add_argument("--json", type=Path, help="write every request and the stats here")
    parser.add_argument("--allowed-failures", type=int, default=0)
    parser.add_argument("--no-keepalive", action="store_true",
                        help="a new connection for every request (default: keep-alive clients)")
    parser.add_argument("--self-test", action="store_true",
                        help="check the measurement against a local HTTPS server and exit")
    args = parser.parse_args(argv)

    if args.self_test:
        return self_test()
    if not args.url:
        parser.error("--url is required")
    if args.concurrency < 1 or args.max_requests < 1 or args.max_seconds <= 0:
        parser.error("--concurrency, --max-requests and --max-seconds must be positive")
    try:
        check_target(args.url)
    except TargetRefused as exc:
        print(f"zero_downtime: refused: {exc}", file=sys.stderr)
        return 2
    if args.url.startswith("https://") and not args.cacert:
        parser.error("--cacert is required for https (the project CA file)")
    verify: ssl.SSLContext | bool = ssl_context(args.cacert) if args.cacert else True
    paths = [p if p.startswith("/") else "/" + p for p in args.paths.split(",") if p]
    max_seconds = args.max_seconds if args.run else min(args.max_seconds, args.duration)
    load = LoadRun(args.url, paths, args.concurrency, args.max_requests, max_seconds,
                   args.timeout, verify, keepalive=not args.no_keepalive)

    log_handle = open(args.command_log, "ab") if args.command_log else None
    try:
        commands = asyncio.run(measure(load, args.run, args.warmup, args.cooldown,
                                       log_handle.fileno() if log_handle else None))
    finally:
        if log_handle:
            log_handle.close()
    bad_requests = report(load, commands, args.json)
    if any(c.returncode != 0 for c in commands):
        return 3
    return 1 if bad_requests > args.allowed_failures else 0


if __name__ == "__main__":
    sys.exit(main())
