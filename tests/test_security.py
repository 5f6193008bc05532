"""Security headers (page and API variants) and every CORS case."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sanic import Sanic

from app.ops.security import CORS_FORBIDDEN_MESSAGE
from tests.ops_app import drop_app, make_ops_app, ops_settings
from tests.servers import RedisServer

ALLOWED = "https://app.example.com"
OTHER_ALLOWED = "https://admin.example.com"
EVIL = "https://evil.example.net"

API_PATHS = ["/api/data", "/health/live", "/health/ready", "/metrics"]


@pytest.fixture
def app(redis_server: RedisServer) -> Iterator[Sanic]:
    settings = ops_settings(REDIS_URL=redis_server.url(), RATE_LIMIT_MAX_REQUESTS="100000",
                            CORS_ORIGIN=f"{ALLOWED},{OTHER_ALLOWED}")
    application = make_ops_app(settings)
    yield application
    drop_app(application)


@pytest.fixture
def client(app: Sanic, start_client: Any) -> Any:
    return start_client(app)


async def get(client: Any, path: str, method: str = "get", **headers: str) -> Any:
    """One request through `client` (tests/conftest.py) or an app's own asgi_client."""
    _, response = await getattr(client, method)(path, headers=headers)
    return response


def cors_headers_of(response: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items()
            if k.lower().startswith("access-control-")}


# --- Security headers -----------------------------------------------------------------------

async def test_page_gets_full_helmet_headers(client: Any) -> None:
    response = await get(client, "/")
    assert response.status == 200
    headers = response.headers
    csp = headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no hosts
    assert directives["script-src-attr"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["frame-src"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert "unsafe-inline" not in directives["script-src"]
    assert "upgrade-insecure-requests" not in csp  # APP_ENV=test runs on plain http
    assert headers["x-frame-options"] == "DENY"
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert headers["x-dns-prefetch-control"] == "off"
    assert headers["x-download-options"] == "noopen"
    assert headers["x-permitted-cross-domain-policies"] == "none"
    assert headers["x-xss-protection"] == "0"
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-resource-policy"] == "same-origin"
    assert headers["origin-agent-cluster"] == "?1"
    assert "server" not in headers


@pytest.mark.parametrize("path", API_PATHS)
async def test_api_variant_has_no_csp_or_hsts(client: Any, path: str) -> None:
    response = await get(client, path)
    assert response.status == 200
    assert "content-security-policy" not in response.headers
    assert "strict-transport-security" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"


async def test_auth_json_is_api_but_auth_redirect_is_page(client: Any) -> None:
    json_answer = await get(client, "/auth/refresh", method="post")
    assert json_answer.status == 200
    assert "content-security-policy" not in json_answer.headers
    assert "strict-transport-security" not in json_answer.headers
    redirect_answer = await get(client, "/auth/google")
    assert redirect_answer.status == 302
    assert "content-security-policy" in redirect_answer.headers
    assert "strict-transport-security" in redirect_answer.headers


async def test_error_responses_carry_headers(client: Any) -> None:
    missing = await get(client, "/no/such/page")
    assert missing.status == 404
    assert missing.headers["x-frame-options"] == "DENY"
    assert "content-security-policy" in missing.headers
    crash = await get(client, "/api/boom")
    assert crash.status == 500
    assert crash.headers["x-content-type-options"] == "nosniff"
    assert "boom" not in crash.text  # no traceback or exception text for clients


async def test_production_csp_upgrades_insecure_requests(redis_server: RedisServer) -> None:
    settings = ops_settings(REDIS_URL=redis_server.url(), APP_ENV="production",
                            CORS_ORIGIN=ALLOWED, DATABASE_URL="postgres://a@b/c",
                            GOOGLE_TOKEN_ENCRYPTION_KEY="k" * 40,
                            GOOGLE_REDIRECT_URI="https://app.example/auth/google/callback")
    app = make_ops_app(settings)
    try:
        response = await get(app.asgi_client, "/")
        assert "upgrade-insecure-requests" in response.headers["content-security-policy"]
    finally:
        drop_app(app)


# --- CORS -----------------------------------------------------------------------------------

@pytest.mark.parametrize("origin", [ALLOWED, OTHER_ALLOWED])
async def test_allowed_origin_gets_cors_headers_with_credentials(client: Any, origin: str) -> None:
    response = await get(client, "/api/data", Origin=origin)
    assert response.status == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-allow-credentials"] == "true"
    assert "origin" in response.headers["vary"].lower()
    assert "RateLimit-Remaining" in response.headers["access-control-expose-headers"]


@pytest.mark.parametrize(("path", "method"), [("/api/data", "get"), ("/api/data", "post"),
                                              ("/", "get"), ("/health/live", "get")])
async def test_disallowed_origin_gets_json_403_without_cors_headers(
        client: Any, path: str, method: str) -> None:
    response = await get(client, path, method=method, Origin=EVIL)
    assert response.status == 403
    assert response.json == {"error": CORS_FORBIDDEN_MESSAGE, "code": "cors_forbidden"}
    assert cors_headers_of(response) == {}
    # Still a response of ours: security headers and request id are there.
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("origin", ["null", "https://app.example.com.evil.net",
                                    "http://app.example.com", "not a url"])
async def test_near_miss_origins_are_refused(client: Any, origin: str) -> None:
    response = await get(client, "/api/data", Origin=origin)
    assert response.status == 403
    assert cors_headers_of(response) == {}


async def test_preflight_answered_204(client: Any) -> None:
    response = await get(client, "/api/data", method="options", Origin=ALLOWED,
                         **{"Access-Control-Request-Method": "PUT",
                            "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert response.status == 204
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert response.headers["access-control-allow-credentials"] == "true"
    methods = [m.strip() for m in response.headers["access-control-allow-methods"].split(",")]
    assert methods == ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
    allowed_headers = [h.strip() for h in
                       response.headers["access-control-allow-headers"].split(",")]
    assert allowed_headers == ["Content-Type", "Authorization", "X-Requested-With"]
    assert int(response.headers["access-control-max-age"]) > 0
    assert response.body == b""


async def test_preflight_on_route_without_options_handler(client: Any) -> None:
    response = await get(client, "/auth/refresh", method="options", Origin=ALLOWED,
                         **{"Access-Control-Request-Method": "POST"})
    assert response.status == 204
    assert response.headers["access-control-allow-origin"] == ALLOWED


async def test_preflight_from_disallowed_origin_is_403(client: Any) -> None:
    response = await get(client, "/api/data", method="options", Origin=EVIL,
                         **{"Access-Control-Request-Method": "POST"})
    assert response.status == 403
    assert response.json["code"] == "cors_forbidden"
    assert cors_headers_of(response) == {}


async def test_request_without_origin_passes_without_cors_headers(client: Any) -> None:
    response = await get(client, "/api/data")
    assert response.status == 200
    assert cors_headers_of(response) == {}


async def test_same_origin_request_passes(client: Any) -> None:
    # Browsers send Origin on same-origin POSTs; our own pages must not be refused.
    response = await get(client, "/api/data", method="post", Origin="http://mockserver:1234")
    assert response.status == 200
    assert cors_headers_of(response) == {}


async def test_wildcard_cors_echoes_origin(redis_server: RedisServer) -> None:
    app = make_ops_app(ops_settings(REDIS_URL=redis_server.url(), CORS_ORIGIN="*"))
    try:
        response = await get(app.asgi_client, "/api/data", Origin=EVIL)
        assert response.status == 200
        # With credentials the origin must be echoed; "*" would be rejected by browsers.
        assert response.headers["access-control-allow-origin"] == EVIL
    finally:
        drop_app(app)


# --- The real factory -------------------------------------------------------------------------

@pytest.fixture
def factory_app(app_settings: Any) -> Iterator[Sanic]:
    from app.factory import create_app

    Sanic.test_mode = True
    application = create_app(app_settings)
    yield application
    drop_app(application)


async def test_factory_wires_headers_and_cors(factory_app: Sanic, start_client: Any) -> None:
    client = start_client(factory_app)
    page = await get(client, "/")
    assert page.status == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["strict-transport-security"].startswith("max-age=31536000")
    assert page.headers["x-request-id"]
    probe = await get(client, "/health/live")
    assert probe.status == 200
    assert "content-security-policy" not in probe.headers
    assert probe.headers["x-frame-options"] == "DENY"
    refused = await get(client, "/health/live", Origin=EVIL)
    assert refused.status == 403
    assert refused.json == {"error": CORS_FORBIDDEN_MESSAGE, "code": "cors_forbidden"}
    preflight = await get(client, "/api/conversations", method="options",
                          Origin="http://localhost:3000",
                          **{"Access-Control-Request-Method": "POST"})
    assert preflight.status == 204
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
