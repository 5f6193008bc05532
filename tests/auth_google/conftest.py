"""Fixtures for the Google sign-in tests: the app served for real (in this process, on a
loopback port, real PostgreSQL + Redis) and identity providers it can talk to.

A real server rather than the ASGI test client: the client runs the server start/stop
listeners around every request, which would reset the provider metadata and JWKS caches
these tests are about, and a browser-style flow needs cookies across several requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from oidc_provider_mock import run_server_in_thread
from sanic import Sanic

from app.config import Settings
from tests.auth_google.fake_idp import FakeIdP, run_fake_idp
from tests.servers import free_port


class LiveApp:
    def __init__(self, app: Sanic, settings: Settings, port: int) -> None:
        self.app = app
        self.settings = settings
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self._server: Any = None

    async def start(self) -> None:
        self._server = await self.app.create_server(
            host="127.0.0.1", port=self.port, return_asyncio_server=True,
            access_log=False)
        assert self._server is not None
        await self._server.startup()
        await self._server.before_start()
        await self._server.after_start()

    async def stop(self) -> None:
        if self._server is None:
            return
        await self._server.before_stop()
        self._server.close()
        await self._server.wait_closed()
        await self._server.after_stop()
        self._server = None
        Sanic._app_registry.pop(self.app.name, None)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=15, **kwargs)


StartApp = Callable[..., Awaitable[LiveApp]]


@pytest.fixture
async def start_app(app_settings: Settings) -> AsyncIterator[StartApp]:
    """`await start_app(discovery_url, **settings_overrides)` -> a running LiveApp."""
    from app.factory import create_app

    started: list[LiveApp] = []

    async def start(discovery_url: str, **overrides: Any) -> LiveApp:
        port = free_port()
        settings = dataclasses.replace(
            app_settings, google_discovery_url=discovery_url,
            google_redirect_uri=f"http://127.0.0.1:{port}/auth/google/callback", **overrides)
        Sanic.test_mode = True
        live = LiveApp(create_app(settings), settings, port)
        await live.start()
        started.append(live)
        return live

    yield start
    for live in started:
        await live.stop()


@pytest.fixture(scope="module")
def oidc_mock() -> Iterator[str]:
    """oidc-provider-mock in a thread; yields its discovery URL."""
    with run_server_in_thread() as server:
        yield f"http://localhost:{server.server_port}/.well-known/openid-configuration"


@pytest.fixture
def fake_idp(app_settings: Settings) -> Iterator[FakeIdP]:
    with run_fake_idp(app_settings.google_client_id, app_settings.google_client_secret) as idp:
        yield idp


def fake_idp_discovery(idp: FakeIdP) -> str:
    return f"{idp.base_url}/.well-known/openid-configuration"
