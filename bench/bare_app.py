"""The baseline: a bare Sanic hello-world app answering /health/live like ours does."""

from __future__ import annotations

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

app = Sanic("bare_hello")


@app.get("/health/live")
async def live(request: Request) -> HTTPResponse:
    return json({"status": "alive"})
