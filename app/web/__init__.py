"""The web page (plain HTML/CSS/JS in app/web/static) and the OpenAPI documentation.

The page is static: it talks to the JSON API with fetch, so it needs no templates and runs
under the strict Content-Security-Policy of app.ops.security (every script and style is a
file from 'self'; nothing inline, no CDN).
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from pathlib import Path

from sanic import Request, Sanic
from sanic.response import HTTPResponse, html, json

from app.config import Settings

STATIC_DIR = Path(__file__).parent / "static"
INDEX_FILE = STATIC_DIR / "index.html"
DOCS_PAGE = Path(__file__).parent / "docs" / "index.html"
OPENAPI_JSON_PATH = "/docs/openapi.json"
# A versioned asset URL (/static/app.js?v=<its digest>) never changes content: browsers and
# caches keep it a year. The page itself is revalidated (ETag), so a new release's page
# names the new versions at once.
IMMUTABLE = "public, max-age=31536000, immutable"
STATIC_REFERENCE = re.compile(r"""(["'])/static/([\w.-]+)\1""")

API_DESCRIPTION = """\
JSON API of the assistant. Sign in with Google at `/auth/google` (browser flow); the
callback issues an access token (Bearer, short-lived) and a refresh token. Send
`Authorization: Bearer <accessToken>` to `/api/*`. Errors are always
`{"error": message, "code": stable_code}` with a 4xx/5xx status.
"""


def setup_openapi(app: Sanic, settings: Settings) -> None:
    """OpenAPI via sanic-ext, with an offline reference page instead of a CDN-loaded UI.

    sanic-ext's Swagger and ReDoc pages load their scripts from public CDNs (and its
    Swagger OAuth2 redirect page is even fetched from one at request time), which neither
    our CSP nor an offline host allows. Its "redoc" slot serves our own page instead
    (app/web/docs/index.html + static/docs.js render /docs/openapi.json), at /docs.
    Production serves no documentation at all.
    """
    enabled = not settings.is_production
    app.config.update({
        "OAS": enabled,
        "OAS_UI_DEFAULT": "redoc",
        "OAS_UI_REDOC": True,
        "OAS_PATH_TO_REDOC_HTML": str(DOCS_PAGE),
        "OAS_UI_REDOC_HTML_TITLE": "assistantapp API reference",
        "OAS_UI_SWAGGER": False,
        "OAS_URL_PREFIX": "/docs",
        "OAS_URI_TO_JSON": "/openapi.json",
        "OAS_IGNORE_HEAD": True,
        "OAS_IGNORE_OPTIONS": True,
    })
    if not enabled:
        return
    app.ext.openapi.describe("assistantapp API", version="0.1.0",
                             description=API_DESCRIPTION)
    app.ext.openapi.add_security_scheme("bearerAuth", "http", scheme="bearer",
                                        bearer_format="JWT")


@cache
def static_versions() -> dict[str, str]:
    """Each static file's content digest (its version), read once per process."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            for path in STATIC_DIR.iterdir() if path.is_file()}


def with_versioned_assets(page: str) -> str:
    """`/static/<name>` references in a page, with `?v=<digest>` appended."""
    versions = static_versions()

    def versioned(match: re.Match[str]) -> str:
        quote, name = match.group(1), match.group(2)
        if name not in versions:
            return match.group(0)
        return f"{quote}/static/{name}?v={versions[name]}{quote}"

    return STATIC_REFERENCE.sub(versioned, page)


def setup_web(app: Sanic, settings: Settings) -> None:
    setup_openapi(app, settings)
    index_page = with_versioned_assets(INDEX_FILE.read_text(encoding="utf-8"))
    index_etag = '"' + hashlib.sha256(index_page.encode()).hexdigest()[:16] + '"'

    @app.get("/", name="web_index")
    async def index(request: Request) -> HTTPResponse:
        # The page is tiny and changes with each release: always revalidated.
        headers = {"Cache-Control": "no-cache", "ETag": index_etag}
        if index_etag in request.headers.get("if-none-match", ""):
            return HTTPResponse(status=304, headers=headers)
        return html(index_page, headers=headers)

    @app.get("/api/features", name="api_features")
    async def features(request: Request) -> HTTPResponse:
        """Which features this server has on, and the variables that turn an off one on
        (the page shows it instead of failing at the first click)."""
        return json(settings.features(), headers={"Cache-Control": "no-cache"})

    app.static("/static", STATIC_DIR, name="web_static", use_modified_since=True)

    # Plain (not async) middleware: it runs on every response and never awaits.
    @app.on_response
    def cache_static(request: Request, response: HTTPResponse) -> None:
        if request.path.startswith("/static/") and response.status == 200:
            name = request.path.removeprefix("/static/")
            current = static_versions().get(name)
            # Only the current version may be kept: an old or made-up ?v= is revalidated.
            response.headers["Cache-Control"] = (
                IMMUTABLE if current and request.args.get("v") == current else "no-cache")
