"""Filters of the rollout: `rollout_batches` (the app hosts of a deploy in batches, canary
first) and `app_request_count` (the canary's answers from its /metrics).

The batch sizes read like Ansible's `serial`: each item is a host count or a percentage
of all hosts (rounded down, at least one host); the last size repeats until every host
has a batch. [1, "50%", "100%"] on five hosts gives [[a], [b, c], [d, e]].
"""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError


def _size(item: Any, total: int) -> int:
    text = str(item).strip()
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return max(1, int(total * percent / 100))
        count = int(text)
    except ValueError:
        raise AnsibleFilterError(
            f"app_rollout_batches: '{item}' is neither a host count (>= 1) nor a "
            f"percentage in (0%, 100%]") from None
    if count < 1:
        raise AnsibleFilterError(
            f"app_rollout_batches: a batch needs at least one host, got {count}")
    return count


def rollout_batches(hosts: list[str], sizes: list[Any]) -> list[list[str]]:
    if not isinstance(sizes, list) or not sizes:
        raise AnsibleFilterError(
            "app_rollout_batches must be a non-empty list of host counts or percentages, "
            f"e.g. [1, '50%', '100%'] (got {sizes!r})")
    hosts = list(hosts)
    wanted = [_size(item, len(hosts)) for item in sizes]
    batches: list[list[str]] = []
    start = 0
    index = 0
    while start < len(hosts):
        size = wanted[min(index, len(wanted) - 1)]
        batches.append(hosts[start:start + size])
        start += size
        index += 1
    return batches


def app_request_count(metrics_text: str, status_prefix: str = "") -> float:
    """The sum of assistantapp_http_requests_total in a /metrics text, over the answers
    whose status starts with status_prefix ("5": server errors; "": all)."""
    total = 0.0
    for line in str(metrics_text).splitlines():
        if not line.startswith("assistantapp_http_requests_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        if f'status="{status_prefix}' in labels:
            total += float(value)
    return total


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"rollout_batches": rollout_batches, "app_request_count": app_request_count}
