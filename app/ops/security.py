"""Security headers (helmet-like) and the CORS allow-list.

Pages get the full set: a strict Content-Security-Policy (no inline script), HSTS with
preload, and framing denied twice (CSP frame-ancestors for modern browsers, X-Frame-Options
for old ones). JSON endpoints (/api/*, /health*, /metrics, JSON answers under /auth/*) get the
lighter API variant without CSP and HSTS, as the seed's API helmet did: a CSP means nothing
to a JSON consumer, and HSTS is the TLS terminator's (nginx) job for API hosts.

CORS: only origins listed in CORS_ORIGIN may call us from a browser, with credentials. A
cross-origin request from any other origin is refused with a JSON 403 and no CORS headers,
so the browser blocks it and the client sees why. Requests without Origin (curl, servers,
same-origin navigations) and same-origin requests (Origin host == Host) pass untouched.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from sanic import Request, Sanic
from sanic.response import BaseHTTPResponse, HTTPResponse

from app.config import Settings
from app.errors import json_error
from app.ops.fast_headers import register_constant_headers

CORS_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
CORS_HEADERS = "Content-Type, Authorization, X-Requested-With"
# Headers a browser script may read on a CORS response (rate-limit state, request id).
CORS_EXPOSE_HEADERS = ("X-Request-ID, RateLimit-Policy, RateLimit-Limit, RateLimit-Remaining, "
                       "RateLimit-Reset, Retry-After")
CORS_MAX_AGE_S = "600"
CORS_FORBIDDEN_MESSAGE = "Origin not allowed by CORS policy"

HSTS = "max-age=31536000; includeSubDomains; preload"

# Headers every response gets (helmet's defaults, with framing denied outright and the
# referrer policy the seed used).
COMMON_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "X-DNS-Prefetch-Control": "off",
    "X-Download-Options": "noopen",
    "X-Permitted-Cross-Domain-Policies": "none",
    # The legacy XSS auditor did more harm than good; helmet disables it explicitly.
    "X-XSS-Protection": "0",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Origin-Agent-Cluster": "?1",
}

API_PREFIXES = ("/api/", "/health", "/metrics")


def content_security_policy(upgrade_insecure: bool) -> str:
    directives = [
        "default-src 'self'",
        "base-uri 'self'",
        "connect-src 'self'",
        "font-src 'self' data:",
        "form-action 'self'",
        "frame-ancestors 'none'",
        # The pages embed nothing: no iframes of any origin (the seed's policy).
        "frame-src 'none'",
        # Google profile pictures are https images on Google hosts.
        "img-src 'self' data: https:",
        "object-src 'none'",
        "script-src 'self'",
        "script-src-attr 'none'",
        # Inline style attributes are harmless compared with script; helmet allows them too.
        "style-src 'self' 'unsafe-inline'",
    ]
    if upgrade_insecure:
        # Only where TLS exists: on http://localhost it would break every asset load.
        directives.append("upgrade-insecure-requests")
    return "; ".join(directives)


def is_api_response(path: str, response: BaseHTTPResponse) -> bool:
    if path.startswith(API_PREFIXES):
        return True
    content_type = response.content_type or ""
    return path.startswith("/auth/") and content_type.startswith("application/json")


def origin_host(origin: str) -> str | None:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc.lower()


class CorsPolicy:
    def __init__(self, allowed_origins: list[str]) -> None:
        self.allow_any = "*" in allowed_origins
        self.allowed = {o.rstrip("/").lower() for o in allowed_origins if o != "*"}

    def allows(self, origin: str, request_host: str) -> bool:
        if self.allow_any or origin.rstrip("/").lower() in self.allowed:
            return True
        # Same-origin requests (browsers send Origin on same-origin POSTs) are not CORS.
        host = origin_host(origin)
        return host is not None and host == request_host.lower()

    def is_cross_origin(self, origin: str, request_host: str) -> bool:
        return origin_host(origin) != request_host.lower()


def cors_headers(origin: str) -> dict[str, str]:
    # The origin is echoed (never "*") because credentials are allowed.
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": CORS_EXPOSE_HEADERS,
        "Vary": "Origin",
    }


def setup_security(app: Sanic, settings: Settings) -> None:
    policy = CorsPolicy(settings.cors_origin)
    page_csp = content_security_policy(upgrade_insecure=settings.app_env in ("production",
                                                                              "staging"))

    # The header sets, built once: a response that carries none of them yet (nearly all do)
    # gets its whole set with one extend() instead of a setdefault() per header.
    api_headers = list(COMMON_HEADERS.items())
    page_headers = [*api_headers, ("Content-Security-Policy", page_csp),
                    ("Strict-Transport-Security", HSTS)]
    page_header_names = frozenset(name.lower() for name, _ in page_headers)
    register_constant_headers(page_headers)

    # Plain (not async) middleware: nothing here awaits, and Sanic awaits only awaitables,
    # which saves a coroutine per request.
    def enforce_cors(request: Request) -> HTTPResponse | None:
        origin = request.headers.get("origin")
        if not origin:
            return None
        host = request.host or ""
        if not policy.allows(origin, host):
            request.ctx.cors_origin = None
            return json_error(403, CORS_FORBIDDEN_MESSAGE, "cors_forbidden")
        if not policy.is_cross_origin(origin, host):
            return None
        request.ctx.cors_origin = origin
        if request.method == "OPTIONS" and request.headers.get("access-control-request-method"):
            # Preflight: answered here, before routing, auth and rate limiting.
            headers = cors_headers(origin)
            headers.update({
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": CORS_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE_S,
            })
            return HTTPResponse(status=204, headers=headers)
        return None

    def add_security_headers(request: Request, response: BaseHTTPResponse) -> None:
        headers = response.headers
        wanted = api_headers if is_api_response(request.path, response) else page_headers
        if page_header_names.isdisjoint(map(str.lower, headers)):
            headers.extend(wanted)
        else:
            # A handler set some of them itself: keep its values, add only the rest.
            for name, value in wanted:
                headers.setdefault(name, value)
        origin = getattr(request.ctx, "cors_origin", None)
        if origin and "access-control-allow-origin" not in headers:
            for name, value in cors_headers(origin).items():
                if name == "Vary" and "vary" in headers:
                    if "origin" not in headers["vary"].lower():
                        headers["Vary"] = headers["vary"] + ", Origin"
                    continue
                headers[name] = value
        # Don't advertise the server software.
        if "server" in headers:
            del headers["server"]

    app.on_request(enforce_cors, priority=900)
    app.on_response(add_security_headers, priority=900)
