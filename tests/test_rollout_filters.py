"""The rollout's filters (roles/app/filter_plugins/rollout.py): batches like Ansible's
`serial`, canary first, and the canary's request counts from a /metrics text."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

PLUGIN = Path(__file__).resolve().parents[1] / "roles/app/filter_plugins/rollout.py"
_spec = importlib.util.spec_from_file_location("app_rollout_filters", PLUGIN)
assert _spec and _spec.loader
rollout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rollout)

HOSTS = ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize(("sizes", "expected"), [
    ([1, "50%", "100%"], [["a"], ["b", "c"], ["d", "e"]]),
    ([1, "100%"], [["a"], ["b", "c", "d", "e"]]),
    ([2], [["a", "b"], ["c", "d"], ["e"]]),
    (["10%"], [["a"], ["b"], ["c"], ["d"], ["e"]]),  # rounds down, at least one host
    ([1, 1], [["a"], ["b"], ["c"], ["d"], ["e"]]),
    (["100%"], [HOSTS]),
    ([9], [HOSTS]),
    ([" 1 ", "40%"], [["a"], ["b", "c"], ["d", "e"]]),
])
def test_batches_cover_every_host_once_in_order(sizes, expected):
    batches = rollout.rollout_batches(HOSTS, sizes)
    assert batches == expected
    assert [host for batch in batches for host in batch] == HOSTS


def test_one_host_is_one_batch():
    assert rollout.rollout_batches(["only"], [1, "50%", "100%"]) == [["only"]]


def test_no_hosts_no_batches():
    assert rollout.rollout_batches([], [1, "100%"]) == []


@pytest.mark.parametrize("sizes", [[], [0], ["0%"], ["150%"], ["half"], [-1], "1", None])
def test_bad_batch_sizes_are_refused_with_the_value(sizes):
    with pytest.raises(AnsibleFilterError, match="app_rollout_batches"):
        rollout.rollout_batches(HOSTS, sizes)


METRICS = """# HELP assistantapp_http_requests_total HTTP requests
# TYPE assistantapp_http_requests_total counter
assistantapp_http_requests_total{method="GET",route="/health/ready",status="200"} 40
assistantapp_http_requests_total{method="POST",route="/api/x",status="500"} 3
assistantapp_http_requests_total{method="GET",route="/api/x",status="503"} 2
assistantapp_http_requests_total{method="GET",route="/api/x",status="404"} 5
assistantapp_http_request_duration_seconds_count{method="GET",route="/api/x"} 7
"""


def test_request_counts_sum_every_route_and_status():
    assert rollout.app_request_count(METRICS) == 50
    assert rollout.app_request_count(METRICS, "5") == 5
    assert rollout.app_request_count(METRICS, "4") == 5
    assert rollout.app_request_count("") == 0
