"""Streaming through a real listening server (the ASGI test client buffers whole bodies):
tokens reach the client as the model produces them, and a client that leaves mid-answer
does not lose the answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.servers import free_port


@pytest.fixture
async def live_url(app: Any) -> AsyncIterator[str]:
    port = free_port()
    server = await app.create_server(host="127.0.0.1", port=port,
                                     return_asyncio_server=True, access_log=False)
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.before_stop()
        server.close()
        await server.wait_closed()
        await server.after_stop()


async def test_tokens_arrive_while_the_model_is_still_answering(
        live_url: str, make_user: Any, auth_headers: Any, fake_openai: FakeOpenAI) -> None:
    user = await make_user()
    headers = auth_headers(user)
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as client:
        created = await client.post("/api/conversations", headers=headers, json={})
        cid = created.json()["conversation"]["id"]
        fake_openai.enqueue(Reply(content="one two three four five six", token_delay=0.25))
        started = time.perf_counter()
        arrivals: list[float] = []
        async with client.stream("POST", f"/api/conversations/{cid}/messages",
                                 headers={**headers, "Accept": "text/event-stream"},
                                 json={"content": "count"}) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                arrivals.extend([time.perf_counter() - started] * chunk.count(b"event: token"))
    assert len(arrivals) == 6
    # The model needs >= 1.25 s for all six tokens; the first one must not wait for them.
    assert arrivals[0] < 1.0
    assert arrivals[-1] - arrivals[0] >= 1.0


async def test_answer_is_stored_when_the_client_leaves(
        live_url: str, make_user: Any, auth_headers: Any, fake_openai: FakeOpenAI,
        stored_messages: Any) -> None:
    user = await make_user()
    headers = auth_headers(user)
    async with httpx.AsyncClient(base_url=live_url, timeout=10) as client:
        created = await client.post("/api/conversations", headers=headers, json={})
        cid = created.json()["conversation"]["id"]
        fake_openai.enqueue(Reply(content="a rather long answer that keeps coming",
                                  token_delay=0.15))
        async with client.stream("POST", f"/api/conversations/{cid}/messages",
                                 headers={**headers, "Accept": "text/event-stream"},
                                 json={"content": "tell me"}) as response:
            async for chunk in response.aiter_raw():
                if b"event: token" in chunk:
                    break  # the browser tab closes after the first token
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stored = await stored_messages(cid)
        if len(stored) == 2:
            break
        await asyncio.sleep(0.2)
    assert [(m.role, m.content, m.status) for m in stored] == [
        ("user", "tell me", "complete"),
        ("assistant", "a rather long answer that keeps coming", "complete")]
