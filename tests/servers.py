"""Throwaway PostgreSQL and Redis servers for tests and benchmarks.

They run from the apt-installed binaries, on free loopback ports, in temp dirs, and can be
stopped and started again on the same port and data dir (to test outages and recovery).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_process_group(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """Graceful stop of a server started with start_new_session=True: SIGTERM to its whole
    process group (Sanic's main process and its workers), SIGKILL if it outlives `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _scratch_dir() -> str | None:
    """Memory-backed scratch space when there is plenty: a throwaway cluster's many cloned
    databases are then created and removed in RAM instead of on a busy disk."""
    shm = "/dev/shm"
    try:
        stat = os.statvfs(shm)
    except OSError:
        return None
    return shm if stat.f_bavail * stat.f_frsize > 8 * 2**30 else None


def _pg_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name))
    if not candidates:
        raise RuntimeError("PostgreSQL binaries not found: apt-get install postgresql")
    return Path(candidates[-1])


class PostgresServer:
    """A private PostgreSQL cluster. As root it runs as the 'postgres' system user."""

    user = "assistantapp"
    password = "test-password"
    database = "assistantapp"

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="aa-pg-", dir=_scratch_dir()))
        self.datadir = self.tmp / "data"
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._run_as, *args], check=True, capture_output=True, text=True)

    def init(self) -> PostgresServer:
        pwfile = self.tmp / "pw"
        pwfile.write_text(self.password)
        if self._run_as:
            shutil.chown(pwfile, "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                  "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-l",
                  str(self.tmp / "log"), "-o",
                  f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                  "start")
        wait_for_port(self.port)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self._run_as, str(self.bindir / "pg_ctl"), "-D", str(self.datadir),
                        "-m", mode, "-w", "stop"], capture_output=True, check=False)

    def psql(self, sql: str, database: str = "postgres") -> str:
        env = {**os.environ, "PGPASSWORD": self.password}
        out = subprocess.run(
            [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            check=True, capture_output=True, text=True, env=env)
        return out.stdout.strip()

    def create_database(self, name: str) -> str:
        """Create an empty database owned by the app role and return its URL."""
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.user}'")
        if not exists:
            self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.psql(f"CREATE DATABASE {name} OWNER {self.user}")
        return self.url(name)

    def url(self, name: str | None = None) -> str:
        return (f"postgres://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{name or self.database}")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.tmp, ignore_errors=True)


class RedisServer:
    """A private redis-server without persistence."""

    def __init__(self, password: str | None = None) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        self.binary = binary
        self.port = free_port()
        self.password = password
        self.tmp = Path(tempfile.mkdtemp(prefix="aa-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.tmp), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", str(self.tmp / "log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
