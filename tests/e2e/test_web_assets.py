"""The web page's assets and the OpenAPI documentation, over HTTP (no browser): the page
and the docs must work under a strict CSP (no inline script/style) and without any CDN."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from sanic import Sanic

from app.auth.google import GoogleAuthError, error_response
from app.web import STATIC_DIR, static_versions


class InlineCodeFinder(HTMLParser):
    """Collects everything a `default-src 'self'` CSP would block or that loads from afar."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"inline handler {name} on <{tag}>")
            if name == "style":
                self.problems.append(f"style attribute on <{tag}>")
            if name in ("src", "href") and value and value.startswith(("http:", "https:", "//")):
                self.problems.append(f"remote {name} {value}")
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "script":
            self._in_script = True
            if not attributes.get("src"):
                self.problems.append("inline <script>")
            else:
                self.scripts.append(str(attributes["src"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script content")


def csp_problems(html: str) -> tuple[list[str], list[str]]:
    finder = InlineCodeFinder()
    finder.feed(html)
    return finder.problems, finder.scripts


async def test_index_page_is_served_and_csp_clean(app: Sanic) -> None:
    _, response = await app.asgi_client.get("/")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "Sign in with Google" in response.text
    assert 'href="/auth/google"' in response.text
    problems, scripts = csp_problems(response.text)
    assert problems == []
    assert scripts == [f"/static/app.js?v={static_versions()['app.js']}"]
    # Revalidated with its ETag: a 304 while it is unchanged.
    assert response.headers["cache-control"] == "no-cache"
    _, again = await app.asgi_client.get("/", headers={"If-None-Match": response.headers["etag"]})
    assert again.status == 304


async def test_versioned_assets_are_kept_a_year_and_others_revalidated(app: Sanic) -> None:
    _, page = await app.asgi_client.get("/")
    referenced = re.findall(r'"(/static/[\w.-]+)\?v=(\w+)"', page.text)
    assert {path for path, _ in referenced} == {"/static/favicon.svg", "/static/app.css",
                                                "/static/app.js"}
    for path, version in referenced:
        # The version is the file's content digest: a changed file gets a new URL.
        content = (STATIC_DIR / path.removeprefix("/static/")).read_bytes()
        assert version == hashlib.sha256(content).hexdigest()[:12]
        _, current = await app.asgi_client.get(f"{path}?v={version}")
        assert current.headers["cache-control"] == "public, max-age=31536000, immutable"
        _, stale = await app.asgi_client.get(f"{path}?v=000000000000")
        assert stale.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(("path", "mime", "marker"), [
    ("/static/app.js", "javascript", "text/event-stream"),
    ("/static/app.css", "text/css", ".message.user"),
    ("/static/docs.js", "javascript", "openapi"),
    ("/static/favicon.svg", "image/svg+xml", "<svg"),
])
async def test_static_assets(app: Sanic, path: str, mime: str, marker: str) -> None:
    _, response = await app.asgi_client.get(path)
    assert response.status == 200
    assert mime in response.headers["content-type"]
    assert marker in response.text
    assert response.headers.get("cache-control") == "no-cache"


async def test_script_never_stores_tokens_in_web_storage(app: Sanic) -> None:
    _, response = await app.asgi_client.get("/static/app.js")
    for storage in ("localStorage", "document.cookie"):
        assert storage not in response.text
    # The one use of sessionStorage: a "sign-out not confirmed yet" flag (constant key,
    # constant value), never a token.
    calls = re.findall(r"sessionStorage\.(\w+)\(([^)]*)\)", response.text)
    assert calls and response.text.count("sessionStorage") == len(calls)
    for method, arguments in calls:
        assert method in ("getItem", "setItem", "removeItem"), method
        assert arguments in ("LOGOUT_PENDING", 'LOGOUT_PENDING, "1"'), arguments


@pytest.mark.parametrize("path", ["/static/../__init__.py", "/static/%2e%2e/__init__.py",
                                  "/static/missing.js"])
async def test_static_does_not_escape_its_folder(app: Sanic, path: str) -> None:
    _, response = await app.asgi_client.get(path)
    assert response.status == 404


async def test_openapi_document_and_offline_reference_page(app: Sanic) -> None:
    _, response = await app.asgi_client.get("/docs/openapi.json")
    assert response.status == 200
    spec: dict[str, Any] = response.json
    assert spec["info"]["title"] == "assistantapp API"
    assert "/auth/google" in spec["paths"] and "/auth/google/callback" in spec["paths"]
    callback = spec["paths"]["/auth/google/callback"]["get"]
    assert callback["tags"] == ["auth"] and "403" in callback["responses"]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"

    _, page = await app.asgi_client.get("/docs")
    assert page.status == 200
    problems, scripts = csp_problems(page.text)
    assert problems == [] and scripts == ["/static/docs.js"]
    assert 'data-spec-url="/docs/openapi.json"' in page.text
    # sanic-ext's CDN-backed UIs (and the Swagger OAuth2 page fetched from a CDN) are off.
    for path in ("/docs/swagger", "/docs/oauth2-redirect.html"):
        _, missing = await app.asgi_client.get(path)
        assert missing.status == 404


async def test_no_documentation_in_production(app_settings: Any) -> None:
    from app.factory import create_app

    Sanic.test_mode = True
    settings = dataclasses.replace(app_settings, app_env="production",
                                   google_token_encryption_key="p" * 40)
    production = create_app(settings)
    try:
        for path in ("/docs/openapi.json", "/docs", "/docs/redoc"):
            _, response = await production.asgi_client.get(path)
            assert response.status == 404, path
        _, index = await production.asgi_client.get("/")
        assert index.status == 200
    finally:
        Sanic._app_registry.pop(production.name, None)


async def test_error_page_is_csp_clean(app: Sanic) -> None:
    request = type("R", (), {"headers": {"accept": "text/html"}})()
    response = error_response(request, GoogleAuthError(400, "x", "message <b>"))  # type: ignore[arg-type]
    body = response.body.decode()
    assert csp_problems(body)[0] == []
    assert "message &lt;b&gt;" in body
