"""Metrics must not go backwards when a new worker gets the pid of an exited one (issue 10)."""

from __future__ import annotations

import os
from pathlib import Path

from sanic import Sanic

from app.ops.metrics import MetricsStore, aggregate, record_agent_execution, write_snapshot


def test_a_reused_pid_does_not_erase_the_exited_workers_numbers(tmp_path: Path) -> None:
    # The exited worker had this very pid (the kernel hands it out again).
    exited = MetricsStore()
    for _ in range(5):
        exited.record_agent("email", True, 0.1)
    write_snapshot(exited, tmp_path)

    app = Sanic("pid_reuse_metrics")
    try:
        app.ctx.metrics_dir = tmp_path
        record_agent_execution(app, "email", True, 0.1)  # the new worker's own count
        first = aggregate(app).store.agents["email"].successes
        write_snapshot(app.ctx.metrics, tmp_path)  # the new worker's periodic flush
        second = aggregate(app).store.agents["email"].successes
    finally:
        Sanic._app_registry.pop(app.name, None)
    assert first == second == 6
    assert len(list(tmp_path.glob(f"worker-{os.getpid()}-*.json"))) == 2
