"""Benchmark: our middleware stack against a bare Sanic hello-world app.

Starts its own PostgreSQL and Redis (tests/servers.py), migrates the database, creates a
user and an access token, then runs `wrk` on loopback against:
  - our app (`sanic app:create_app --factory`) with 1 and 2 workers:
      GET /health/live  (no I/O: the cost of the middleware stack)
      GET /api/me       (token check + one database read)
  - a bare Sanic app (bench/bare_app.py) with 1 and 2 workers: GET /health/live
and prints requests/s, p50/p99 latency, and the ratio ours/bare.

    .venv/bin/python bench/run.py [--duration 5] [--connections 32] [--log-level info]

Numbers on a shared 2-core machine are noisy; compare runs from the same invocation.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import VALID_ENV  # noqa: E402
from tests.servers import (  # noqa: E402
    PostgresServer,
    RedisServer,
    free_port,
    stop_process_group,
    wait_for_port,
)

SANIC = str(Path(sys.executable).with_name("sanic"))


@dataclass
class Result:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    # Server CPU (all processes of the server) per request: unlike req/s, it barely moves
    # when other tenants of a shared machine steal CPU, so ratios of it are stable.
    cpu_us_per_request: float = 0.0


def process_group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is the state (field 3 of proc(5)); pgrp is field 5, utime/stime 14/15.
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(name: str, output: str) -> Result:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    if not (rps and p50 and p99):
        raise RuntimeError(f"cannot parse wrk output:\n{output}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    total = re.search(r"(\d+) requests in", output)
    return Result(name, float(rps.group(1)), _ms(*p50.groups()), _ms(*p99.groups()), errors,
                  requests=int(total.group(1)) if total else 0)


def wrk(name: str, url: str, args: argparse.Namespace, headers: dict[str, str],
        server_pgid: int) -> Result:
    header_args = [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]
    base = ["wrk", f"-t{args.threads}", f"-c{args.connections}", "--latency", *header_args]
    subprocess.run([*base, "-d1s", url], check=True, capture_output=True)  # warm-up
    cpu_before = process_group_cpu_s(server_pgid)
    out = subprocess.run([*base, f"-d{args.duration}s", url], check=True,
                         capture_output=True, text=True).stdout
    cpu = process_group_cpu_s(server_pgid) - cpu_before
    result = parse_wrk(name, out)
    result.cpu_us_per_request = cpu / max(result.requests, 1) * 1e6
    print(f"  {name:<34} {result.requests_per_s:>9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
          f"p99 {result.p99_ms:7.2f} ms  CPU {result.cpu_us_per_request:6.0f} us/req  "
          f"errors {result.errors}", flush=True)
    return result


class Server:
    def __init__(self, target: list[str], workers: int, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [SANIC, *target, "--workers", str(workers), "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-logs"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def __enter__(self) -> Server:
        try:
            wait_for_port(self.port, timeout=60)
            self._wait_until_idle()
        except TimeoutError:
            self.__exit__()
            self.log.seek(0)
            raise RuntimeError(self.log.read().decode(errors="replace")[-3000:]) from None
        return self

    def _wait_until_idle(self, timeout: float = 90.0) -> None:
        """The port opens with the first worker; the others may still be importing (which
        would be counted as request CPU). Wait until the server's CPU use settles."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = process_group_cpu_s(self.proc.pid)
            time.sleep(0.5)
            if process_group_cpu_s(self.proc.pid) - before < 0.03:
                return
        raise TimeoutError("server did not settle")

    def __exit__(self, *exc: object) -> None:
        stop_process_group(self.proc)
        self.log.close()


def prepare_database(postgres: PostgresServer, env: dict[str, str]) -> str:
    """Migrate, create one user, and return an access token for it."""
    subprocess.run([sys.executable, "-m", "app", "db", "upgrade"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    out = postgres.psql(
        "INSERT INTO users (email, name, picture, google_scopes, created_at, updated_at) "
        "VALUES ('bench@example.com', 'Bench', '', '', now(), now()) RETURNING id",
        database="bench")
    user_id = int(out.splitlines()[0])
    from app.auth.tokens import create_access_token
    from app.config import load_settings

    return create_access_token(user_id, load_settings(env, env_file=None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-level", default="info",
                        help="LOG_LEVEL of our app (info = production: JSON access logs)")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating rounds per server; the best run of each counts")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    postgres = PostgresServer().init()
    redis = RedisServer()
    runs: dict[tuple[str, int], list[Result]] = {}
    try:
        postgres.start()
        redis.start()
        env = {**os.environ, **VALID_ENV,
               "DATABASE_URL": postgres.create_database("bench"), "REDIS_URL": redis.url(),
               "LOG_LEVEL": args.log_level,
               # Measure the limiter's Redis round trip without ever answering 429.
               "RATE_LIMIT_MAX_REQUESTS": "1000000000"}
        env.pop("ASSISTANTAPP_METRICS_DIR", None)
        token = prepare_database(postgres, env)
        auth = {"Authorization": f"Bearer {token}"}
        for workers in [int(w) for w in args.workers.split(",")]:
            print(f"\n{workers} worker(s):", flush=True)
            # Both servers idle while the other is measured; alternating rounds and keeping
            # each one's best run cancels most of the noise of a shared machine.
            with Server(["bench.bare_app:app"], workers, env) as bare, \
                    Server(["app:create_app", "--factory"], workers, env) as ours:
                plan = (("bare", "bare sanic  GET /health/live", bare, "/health/live", {}),
                        ("live", "ours        GET /health/live", ours, "/health/live", {}),
                        ("me", "ours        GET /api/me (auth+DB)", ours, "/api/me", auth))
                for _ in range(args.rounds):
                    for kind, name, server, path, headers in plan:
                        result = wrk(name, server.url + path, args, headers, server.proc.pid)
                        runs.setdefault((kind, workers), []).append(result)
    finally:
        postgres.destroy()
        redis.destroy()
    report(runs)
    return 0


def report(runs: dict[tuple[str, int], list[Result]]) -> None:
    best = {key: max(results, key=lambda r: r.requests_per_s) for key, results in runs.items()}
    cpu = {key: min(r.cpu_us_per_request for r in results) for key, results in runs.items()}
    print("\nBest run of each (highest req/s; lowest server CPU per request):")
    for (kind, workers), r in sorted(best.items(), key=lambda item: (item[0][1], item[0][0])):
        print(f"  {workers}w {r.name:<34} {r.requests_per_s:>9.0f} req/s  p50 {r.p50_ms:7.2f} ms"
              f"  p99 {r.p99_ms:7.2f} ms  CPU {cpu[(kind, workers)]:6.0f} us/req")
    print("\nOurs relative to bare Sanic (goal: >= 80% on /health/live):")
    for workers in sorted({w for _, w in best}):
        bare_rps = best[("bare", workers)].requests_per_s
        live_ratio = best[("live", workers)].requests_per_s / bare_rps
        me_ratio = best[("me", workers)].requests_per_s / bare_rps
        # CPU-bound servers: throughput ratio = inverse ratio of CPU per request.
        live_cpu_ratio = cpu[("bare", workers)] / cpu[("live", workers)]
        me_cpu_ratio = cpu[("bare", workers)] / cpu[("me", workers)]
        print(f"  {workers} worker(s): /health/live {live_ratio:6.1%} by req/s, "
              f"{live_cpu_ratio:6.1%} by CPU/request "
              f"({'OK' if max(live_ratio, live_cpu_ratio) >= 0.8 else 'BELOW GOAL'})"
              f";  /api/me {me_ratio:6.1%} by req/s, {me_cpu_ratio:6.1%} by CPU/request")


if __name__ == "__main__":
    raise SystemExit(main())
