"""X-Forwarded-For hops that are not addresses make the client untrusted (issue 10)."""

from __future__ import annotations

import pytest

from app.ops.clientip import INVALID_FORWARDED_CLIENT, parse_networks, resolve_client_ip
from app.ops.metrics import client_allowed

TRUSTED = parse_networks(["127.0.0.1/32", "::1/128", "10.0.0.0/8"])
METRICS_ALLOWED = list(parse_networks(["127.0.0.0/8", "::1/128"]))


@pytest.mark.parametrize(("peer", "xff"), [
    ("127.0.0.1", "garbage"),
    ("127.0.0.1", "not-an-ip, 10.1.2.3"),
    ("::1", "unknown"),
    ("", "junk"),
    ("10.1.2.3", "_hidden"),
])
def test_unparsable_hop_is_an_untrusted_client(peer: str, xff: str) -> None:
    resolved = resolve_client_ip(peer, xff, TRUSTED)
    assert resolved == INVALID_FORWARDED_CLIENT
    # Before the fix this was the proxy's own loopback address, allowed to read /metrics.
    assert not client_allowed(resolved, METRICS_ALLOWED)


def test_valid_hops_are_unchanged() -> None:
    assert resolve_client_ip("127.0.0.1", "203.0.113.9, 10.1.2.3", TRUSTED) == "203.0.113.9"
