"""Latency the app adds to a streamed reply.

Starts throwaway PostgreSQL + Redis, migrates, runs the real server
(`sanic app:create_app --factory`, 1 worker) against the in-repo fake OpenAI server, and
posts N messages with `Accept: text/event-stream`. For each one:

    added = (client receives the first `event: token`) - (fake model writes its first token)

Both instants are perf_counter() readings in this process (the fake runs in a thread here),
so no clock skew is involved. For reference, the same measurement is taken talking to the
fake directly (no app in between), and the app's pre-model work (auth, DB writes, history)
is reported as (fake writes first token) - (client sends the request).

    .venv/bin/python bench/stream_latency.py [--requests 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import VALID_ENV  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI, Reply  # noqa: E402
from tests.servers import PostgresServer, RedisServer, free_port, wait_for_port  # noqa: E402

ANSWER = "The quick brown fox jumps over the lazy dog, " * 4


def summary(name: str, values_s: list[float]) -> str:
    ms = sorted(v * 1000 for v in values_s)
    p95 = ms[max(0, round(0.95 * len(ms)) - 1)]
    return (f"{name:<44} median {statistics.median(ms):7.2f} ms   p95 {p95:7.2f} ms   "
            f"min {ms[0]:6.2f}   max {ms[-1]:7.2f}   (n={len(ms)})")


async def first_token_via(client: httpx.AsyncClient, url: str, headers: dict[str, str],
                          json_body: dict[str, object], marker: bytes) -> tuple[float, float]:
    """(sent_at, first token seen at) for one streamed request."""
    sent = time.perf_counter()
    async with client.stream("POST", url, headers=headers, json=json_body) as response:
        assert response.status_code == 200, await response.aread()
        seen: float | None = None
        async for chunk in response.aiter_raw():
            if seen is None and marker in chunk:
                seen = time.perf_counter()
        assert seen is not None, "no token event"
    return sent, seen


async def measure(base: str, token: str, fake: FakeOpenAI, requests: int) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        created = await client.post("/api/conversations", headers=auth, json={})
        created.raise_for_status()
        cid = created.json()["conversation"]["id"]
        url = f"/api/conversations/{cid}/messages"
        sse = {**auth, "Accept": "text/event-stream"}

        # Warm-up: connection pools, first queries, lazily imported modules.
        for _ in range(5):
            fake.enqueue(Reply(content=ANSWER))
            await first_token_via(client, url, sse, {"content": "warm up"}, b"event: token")

        added, pre_model, total_first = [], [], []
        for i in range(requests):
            fake.reset()
            fake.enqueue(Reply(content=ANSWER, token_delay=0.002))
            sent, seen = await first_token_via(client, url, sse, {"content": f"message {i}"},
                                               b"event: token")
            model_first = fake.first_token_at[0]
            added.append(seen - model_first)
            pre_model.append(model_first - sent)
            total_first.append(seen - sent)

    direct = []
    async with httpx.AsyncClient(base_url=f"{fake.url}/v1", timeout=30) as direct_client:
        for _ in range(requests):
            fake.reset()
            fake.enqueue(Reply(content=ANSWER, token_delay=0.002))
            _, seen = await first_token_via(
                direct_client, "/chat/completions",
                {"Authorization": f"Bearer {VALID_ENV['OPENAI_API_KEY']}"},
                {"model": "gpt-4o-mini", "stream": True,
                 "messages": [{"role": "user", "content": "hi"}]},
                b'"content": "The')
            direct.append(seen - fake.first_token_at[0])

    print(f"Streamed replies through the app (1 worker, loopback, {requests} requests):")
    print(summary("added latency (client first token - model first token)", added))
    print(summary("reference: client talking to the fake directly", direct))
    print(summary("app work before the model call (sent -> model token)", pre_model))
    print(summary("time to first token at the client", total_first))


def run(requests: int) -> None:
    postgres = PostgresServer().init()
    postgres.start()
    redis_server = RedisServer()
    redis_server.start()
    fake = FakeOpenAI(api_key=VALID_ENV["OPENAI_API_KEY"]).start()
    server: subprocess.Popen[bytes] | None = None
    try:
        database_url = postgres.create_database("bench")
        port = free_port()
        env = {**os.environ, **VALID_ENV, "DATABASE_URL": database_url,
               "REDIS_URL": redis_server.url(), "OPENAI_BASE_URL": f"{fake.url}/v1",
               "OPENAI_MAX_RETRIES": "0", "RATE_LIMIT_MAX_REQUESTS": "100000",
               "LOG_LEVEL": "warning", "PORT": str(port)}
        with tempfile.NamedTemporaryFile("w", suffix=".env") as empty_env:
            subprocess.run([sys.executable, "-m", "app.db.cli", "upgrade", "--env-file",
                            empty_env.name], cwd=ROOT, env=env, check=True,
                           capture_output=True)
        user_id = int(postgres.psql(
            "INSERT INTO users (email, name, picture, google_scopes, created_at, updated_at) "
            "VALUES ('bench@example.com', 'Bench', '', '', now(), now()) RETURNING id",
            "bench").split()[0])
        server = subprocess.Popen(
            [sys.executable, "-m", "sanic", "app:create_app", "--factory", "--host",
             "127.0.0.1", "--port", str(port), "--workers", "1", "--no-access-logs"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, timeout=30)

        from app.auth.tokens import create_access_token
        from app.config import load_settings

        token = create_access_token(user_id, load_settings(env, env_file=None))
        asyncio.run(measure(f"http://127.0.0.1:{port}", token, fake, requests))
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        fake.stop()
        redis_server.destroy()
        postgres.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    run(args.requests)


if __name__ == "__main__":
    main()
