"""The assistant: conversations API, the model client and the agents (general, email)."""

from __future__ import annotations

import logging

import httpx
from sanic import Sanic

from app.config import Settings
from app.http import httpx_tls_context

# Gmail answers within seconds; a hung connection must not hold a chat turn for minutes.
GMAIL_TIMEOUT = httpx.Timeout(20.0, connect=5.0)


def quiet_http_client_logs() -> None:
    """httpx logs every request URL at INFO: for Gmail that is the user's private search
    terms (q=...) and message ids. Only its warnings and errors reach our logs."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_assistant(app: Sanic, settings: Settings) -> None:
    from app.assistant import drafts  # noqa: F401 - registers the /api/drafts routes on bp
    from app.assistant.agents import default_registry
    from app.assistant.conversations import bp
    from app.assistant.llm import ModelClient

    quiet_http_client_logs()
    app.blueprint(bp)
    app.ctx.agents = default_registry()
    app.ctx.llm = None

    @app.before_server_start
    async def start_assistant_clients(app: Sanic) -> None:
        # Without a key (allowed in development only) the assistant answers "not configured".
        app.ctx.llm = ModelClient(settings) if settings.openai_configured else None
        app.ctx.gmail_http = httpx.AsyncClient(timeout=GMAIL_TIMEOUT, verify=httpx_tls_context())

    @app.after_server_stop
    async def stop_assistant_clients(app: Sanic) -> None:
        if app.ctx.llm is not None:
            await app.ctx.llm.close()
        await app.ctx.gmail_http.aclose()
