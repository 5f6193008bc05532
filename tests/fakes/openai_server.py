"""A fake OpenAI-compatible API: POST /v1/chat/completions (JSON and SSE), GET /v1/models.

Tests script its answers with `enqueue(Reply(...))`; without a script it echoes the last user
message. Every request is recorded (`requests`, `chat_requests()`), the Bearer key is checked,
and errors, rate limits and slow answers can be injected to exercise the client's handling.

    fake = FakeOpenAI().start()
    fake.enqueue(Reply(tool_calls=[ToolCall("search_messages", {"q": "from:bob"})]))
    fake.enqueue(Reply(content="Bob wrote about lunch."))
    ...
    fake.stop()
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes import FakeServer, RecordedRequest

DEFAULT_API_KEY = "sk-test-0123456789abcdef"
MODELS = ("gpt-4o-mini", "gpt-4o")


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] | str
    id: str = ""

    def arguments_json(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


@dataclass
class Reply:
    """One scripted answer. status != 200 makes it an error answer of that status."""

    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    status: int = 200
    error_message: str = "The server had an error while processing your request."
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the response starts (timeout injection)
    token_delay: float = 0.0  # seconds between streamed chunks
    cut_after: int | None = None  # streamed: drop the connection after this many tokens


Responder = Callable[[dict[str, Any]], Reply]


def _tokens(text: str) -> list[str]:
    """Split like a tokenizer would, roughly: words with their trailing whitespace."""
    return re.findall(r"\S+\s*|\s+", text) or [text]


def echo_responder(body: dict[str, Any]) -> Reply:
    last_user = next((m for m in reversed(body.get("messages", []))
                      if m.get("role") == "user"), None)
    text = last_user.get("content") if last_user else ""
    if isinstance(text, list):  # content parts
        text = " ".join(p.get("text", "") for p in text if isinstance(p, dict))
    return Reply(content=f"You said: {text}")


class FakeOpenAI(FakeServer):
    def __init__(self, api_key: str = DEFAULT_API_KEY,
                 responder: Responder = echo_responder) -> None:
        super().__init__()
        self.api_key = api_key
        self.responder = responder
        self._script: deque[Reply] = deque()
        self._ids = itertools.count(1)
        # perf_counter() when the first content token of each streamed answer was written.
        self.first_token_at: list[float] = []
        self.completed = threading.Event()

    # -- scripting -------------------------------------------------------------------------
    def enqueue(self, *replies: Reply) -> None:
        with self.lock:
            self._script.extend(replies)

    def fail_next(self, status: int, times: int = 1, **kwargs: Any) -> None:
        self.enqueue(*[Reply(status=status, **kwargs) for _ in range(times)])

    def pending(self) -> int:
        with self.lock:
            return len(self._script)

    def chat_requests(self) -> list[dict[str, Any]]:
        """Bodies of the chat completion requests, in order."""
        with self.lock:
            return [r.json() for r in self.requests
                    if r.method == "POST" and r.path.endswith("/chat/completions")]

    def reset(self) -> None:
        with self.lock:
            self._script.clear()
            self.requests.clear()
            self.first_token_at.clear()

    # -- protocol --------------------------------------------------------------------------
    def handle(self, handler: BaseHTTPRequestHandler, request: RecordedRequest) -> None:
        if self.bearer(request) != self.api_key:
            self.send_json(handler, 401, {"error": {
                "message": "Incorrect API key provided.", "type": "invalid_request_error",
                "param": None, "code": "invalid_api_key"}})
            return
        if request.method == "GET" and request.path == "/v1/models":
            self.send_json(handler, 200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                for m in MODELS]})
            return
        if request.method != "POST" or request.path != "/v1/chat/completions":
            self.send_json(handler, 404, {"error": {
                "message": f"Unknown request URL: {request.method} {request.path}",
                "type": "invalid_request_error", "param": None, "code": "unknown_url"}})
            return
        try:
            body = request.json()
            assert isinstance(body, dict) and isinstance(body.get("messages"), list)
            assert isinstance(body.get("model"), str)
        except (ValueError, AssertionError):
            self.send_json(handler, 400, {"error": {
                "message": "'messages' and 'model' are required", "type":
                "invalid_request_error", "param": None, "code": None}})
            return

        with self.lock:
            reply = self._script.popleft() if self._script else None
        if reply is None:
            reply = self.responder(body)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.status != 200:
            error_type = {429: "rate_limit_exceeded", 401: "invalid_request_error"}.get(
                reply.status, "server_error")
            self.send_json(handler, reply.status, {"error": {
                "message": reply.error_message, "type": error_type, "param": None,
                "code": error_type}}, headers=reply.headers)
            return

        completion_id = f"chatcmpl-fake{next(self._ids)}"
        calls = [ToolCall(c.name, c.arguments, c.id or f"call_{completion_id}_{i}")
                 for i, c in enumerate(reply.tool_calls)]
        prompt_tokens = sum(len(str(m.get("content") or "")) // 4 + 1 for m in body["messages"])
        completion_tokens = len(_tokens(reply.content or "")) + len(calls) * 8
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(handler, body, completion_id, reply, calls,
                         usage if include_usage else None)
        else:
            message: dict[str, Any] = {"role": "assistant", "content": reply.content,
                                       "refusal": None}
            if calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments_json()}}
                    for c in calls]
            self.send_json(handler, 200, {
                "id": completion_id, "object": "chat.completion", "created": int(time.time()),
                "model": body["model"], "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "tool_calls" if calls else "stop"}],
                "usage": usage})
        self.completed.set()

    def _stream(self, handler: BaseHTTPRequestHandler, body: dict[str, Any], completion_id: str,
                reply: Reply, calls: list[ToolCall], usage: dict[str, int] | None) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                    "model": body["model"], "system_fingerprint": "fp_fake",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}], **(extra or {})}

        def write(payload: str) -> None:
            data = f"data: {payload}\n\n".encode()
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()

        write(json.dumps(chunk({"role": "assistant", "content": "", "refusal": None})))
        first = True
        for number, token in enumerate(_tokens(reply.content) if reply.content else []):
            if reply.cut_after is not None and number >= reply.cut_after:
                # A broken upstream: the chunked body ends without its terminator.
                handler.close_connection = True
                handler.wfile.flush()
                handler.connection.shutdown(2)
                return
            if reply.token_delay and not first:
                time.sleep(reply.token_delay)
            if first:
                with self.lock:
                    self.first_token_at.append(time.perf_counter())
                first = False
            write(json.dumps(chunk({"content": token})))
        for index, call in enumerate(calls):
            write(json.dumps(chunk({"tool_calls": [{
                "index": index, "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": ""}}]})))
            arguments = call.arguments_json()
            # Arguments arrive in pieces in the real API; the client must concatenate them.
            for start in range(0, len(arguments), 7):
                write(json.dumps(chunk({"tool_calls": [{
                    "index": index, "function": {"arguments": arguments[start:start + 7]}}]})))
        write(json.dumps(chunk({}, "tool_calls" if calls else "stop")))
        if usage is not None:
            write(json.dumps({"id": completion_id, "object": "chat.completion.chunk",
                              "created": created, "model": body["model"], "choices": [],
                              "usage": usage}))
        write("[DONE]")
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()
