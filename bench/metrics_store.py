"""Benchmark: recording one request's metrics, our store (app/ops/metrics.py: a dict update
per request, a snapshot file per worker every few seconds) against prometheus_client's
multiprocess mode (every increment and observation written into mmap-ed files), and one
scrape of 4 workers' numbers both ways. Same process, same inputs, one run.

    .venv/bin/python bench/metrics_store.py [--rounds 5] [--number 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROUTES = [("GET", "/api/me", 200), ("POST", "/api/conversations/<id>/messages", 200),
          ("GET", "/health/ready", 200), ("GET", "/api/conversations", 401)]


def per_call_us(call, rounds: int, number: int) -> float:  # type: ignore[no-untyped-def]
    return statistics.median(timeit.repeat(call, repeat=rounds, number=number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=50000)
    args = parser.parse_args()

    from app.ops.metrics import (
        DURATION_BUCKETS,
        AggregatedMetrics,
        MetricsStore,
        render_prometheus,
        write_snapshot,
    )

    store = MetricsStore()
    i = iter(range(10**12))

    def ours() -> None:
        method, route, status = ROUTES[next(i) % 4]
        store.record_request(method, route, status, 0.0123)

    with tempfile.TemporaryDirectory() as multiproc_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
        from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        requests = Counter("assistantapp_http_requests", "Requests.",
                           ["method", "route", "status"])
        durations = Histogram("assistantapp_http_request_duration_seconds", "Durations.",
                              ["method", "route"], buckets=DURATION_BUCKETS)
        j = iter(range(10**12))

        def prometheus_multiprocess() -> None:
            method, route, status = ROUTES[next(j) % 4]
            requests.labels(method, route, str(status)).inc()
            durations.labels(method, route).observe(0.0123)

        ours_us = per_call_us(ours, args.rounds, args.number)
        theirs_us = per_call_us(prometheus_multiprocess, args.rounds, args.number)

        # One scrape: our merge of 4 workers' snapshot files vs MultiProcessCollector.
        with tempfile.TemporaryDirectory() as snapshots:
            for _ in range(4):
                write_snapshot(store, Path(snapshots))  # same pid: one file, so 4 stores
                store.instance += "x"

            def our_scrape() -> None:
                merged = MetricsStore()
                for path in Path(snapshots).glob("worker-*.json"):
                    merged.merge(MetricsStore.from_json(json.loads(path.read_text())))
                render_prometheus(AggregatedMetrics(merged, {}), "bench")

            registry = CollectorRegistry()
            MultiProcessCollector(registry)

            def their_scrape() -> None:
                generate_latest(registry)

            our_scrape_us = per_call_us(our_scrape, args.rounds, 200)
            their_scrape_us = per_call_us(their_scrape, args.rounds, 200)

    print(f"{'':34} {'ours µs':>9} {'prometheus_client µs':>21} {'theirs/ours':>12}")
    print(f"{'record one request':34} {ours_us:9.2f} {theirs_us:21.2f} {theirs_us / ours_us:12.1f}")
    print(f"{'one scrape (4 workers)':34} {our_scrape_us:9.1f} {their_scrape_us:21.1f} "
          f"{their_scrape_us / our_scrape_us:12.1f}")


if __name__ == "__main__":
    main()
