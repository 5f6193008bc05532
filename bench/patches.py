"""Benchmark: the two patches of library internals against the libraries' own code, in one
run (same process, same inputs), so each keeps its place only while it pays:

  - app/ops/fast_headers.py: a response's header encoding (our ~15 headers) with Sanic's
    own `processed_headers` / `_sanitize_header_value` vs ours;
  - app/auth/tokens.py `_SegmentCheckingJWS`: a token check (decode + verify, HS256) with
    pyjwt's own PyJWS vs ours.

Prints µs per call for both and the ratio; tests/test_fast_headers.py and
tests/test_tokens.py prove the results are the same.

    .venv/bin/python bench/patches.py [--rounds 5] [--number 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def best_us(call: Callable[[], object], rounds: int, number: int) -> float:
    """Median over rounds of the per-call time in µs (timeit's loop, GC on)."""
    times = timeit.repeat(call, repeat=rounds, number=number, setup="gc.enable()",
                          globals={"gc": __import__("gc")})
    return statistics.median(times) / number * 1e6


def header_encoding(rounds: int, number: int) -> tuple[float, float]:
    from sanic.response import json as json_response
    from sanic.response.types import BaseHTTPResponse

    from app.ops import fast_headers
    from app.ops.security import COMMON_HEADERS

    sanic_processed = BaseHTTPResponse.__dict__["processed_headers"]
    sanic_sanitize = BaseHTTPResponse.__dict__["_sanitize_header_value"]
    response = json_response({"status": "alive"})
    response.headers.update(COMMON_HEADERS)
    response.headers.update({"x-request-id": "bf19342e9bb789840000000000000005",
                             "ratelimit-limit": "100", "ratelimit-remaining": "97",
                             "ratelimit-reset": "823", "ratelimit-policy": "100;w=900"})

    def encode() -> object:
        return list(response.processed_headers)

    sanic_us = best_us(encode, rounds, number)
    sanic_bytes = encode()
    assert fast_headers.install_fast_header_encoding(), "Sanic changed shape"
    fast_headers.register_constant_headers(COMMON_HEADERS.items())
    ours_us = best_us(encode, rounds, number)
    assert encode() == sanic_bytes, "the patch changed the bytes on the wire"
    BaseHTTPResponse.processed_headers = sanic_processed  # type: ignore[method-assign]
    BaseHTTPResponse._sanitize_header_value = sanic_sanitize  # type: ignore[method-assign]
    return sanic_us, ours_us


def token_check(rounds: int, number: int) -> tuple[float, float]:
    import jwt

    from app.auth import tokens

    secret = "bench-secret-0123456789abcdef0123456789abcdef"  # noqa: S105 - a benchmark key
    claims = {"sub": "42", "userId": 42, "scopes": ["user"], "type": "access",
              "iss": tokens.ISSUER, "aud": tokens.AUDIENCE,
              "fam": "3f1c3a4e-0000-4000-8000-000000000000",
              "iat": 1_700_000_000, "exp": 4_000_000_000}
    token = jwt.encode(claims, secret, algorithm="HS256")
    stock = jwt.PyJWT()
    options = {"algorithms": ["HS256"], "audience": tokens.AUDIENCE, "issuer": tokens.ISSUER}

    def with_pyjwt() -> object:
        return stock.decode(token, secret, **options)

    def with_ours() -> object:
        return tokens._decoder.decode(token, secret, **options)

    assert with_pyjwt() == with_ours() == claims
    return best_us(with_pyjwt, rounds, number), best_us(with_ours, rounds, number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    print(f"{'patch':34} {'library µs':>11} {'ours µs':>9} {'ours/library':>13}")
    for name, measure in (("response header encoding", header_encoding),
                          ("access token check (HS256)", token_check)):
        library, ours = measure(args.rounds, args.number)
        print(f"{name:34} {library:11.2f} {ours:9.2f} {ours / library:13.2f}")


if __name__ == "__main__":
    main()
