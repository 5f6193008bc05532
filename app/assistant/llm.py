"""The model client: the official openai SDK against any OpenAI-compatible base URL.

Every upstream failure is turned into an `AssistantError` with an HTTP status and a stable
code, so handlers never leak SDK exceptions (or tracebacks) to API clients.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx2
import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageFunctionToolCall

from app.config import Settings
from app.http import httpx2_tls_context

NOT_CONFIGURED_MESSAGE = ("The assistant is off on this server. Its operator turns it on by "
                          "setting OPENAI_API_KEY (and OPENAI_BASE_URL for another "
                          "OpenAI-compatible server).")

TokenCallback = Callable[[str], Awaitable[None]]


class AssistantError(Exception):
    """A failure with a stable API shape: status + code + human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_configured() -> AssistantError:
    return AssistantError(503, "assistant_not_configured", NOT_CONFIGURED_MESSAGE)


def translate_openai_error(exc: Exception) -> AssistantError:
    """Map an SDK exception to our error; order matters (timeouts are connection errors)."""
    if isinstance(exc, openai.APITimeoutError):
        return AssistantError(504, "upstream_timeout", "The model did not answer in time")
    if isinstance(exc, openai.RateLimitError):
        return AssistantError(503, "upstream_rate_limited",
                              "The model is rate limited; try again shortly")
    if isinstance(exc, openai.APIStatusError):
        return AssistantError(502, "upstream_error",
                              f"The model service failed (HTTP {exc.status_code})")
    if isinstance(exc, openai.APIConnectionError):
        return AssistantError(502, "upstream_error", "The model service is unreachable")
    return AssistantError(502, "upstream_error", "The model service returned an invalid answer")


@dataclass
class ToolCallRequest:
    id: str
    name: str
    arguments: str  # JSON text as produced by the model; parsed (and validated) by the agent

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}

    def parsed_arguments(self) -> dict[str, Any]:
        try:
            value = json.loads(self.arguments or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass
class ModelTurn:
    """One model answer: text and/or tool calls."""

    content: str = ""
    tool_calls: list[ToolCallRequest] = field(default_factory=list)


class ModelClient:
    def __init__(self, settings: Settings) -> None:
        self.model = settings.openai_model
        self.client = AsyncOpenAI(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            timeout=float(settings.openai_timeout),
            max_retries=settings.openai_max_retries,
            # The SDK's default client, but with the process-wide TLS context (app/http.py).
            http_client=openai.DefaultAsyncHttpxClient(
                base_url=settings.openai_base_url, timeout=float(settings.openai_timeout),
                verify=httpx2_tls_context()),
        )

    async def close(self) -> None:
        await self.client.close()

    async def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                   on_token: TokenCallback | None = None) -> ModelTurn:
        """One completion. With `on_token` the answer is streamed and each text delta passed on
        as it arrives; without, a plain JSON completion is requested."""
        extra: dict[str, Any] = {"tools": tools} if tools else {}
        try:
            if on_token is None:
                completion = await self.client.chat.completions.create(
                    model=self.model, messages=messages, **extra)  # type: ignore[arg-type]
                if not completion.choices:
                    raise AssistantError(502, "upstream_error", "The model returned no answer")
                message = completion.choices[0].message
                calls = [c for c in (message.tool_calls or [])
                         if isinstance(c, ChatCompletionMessageFunctionToolCall)]
                return ModelTurn(
                    content=message.content or "",
                    tool_calls=[ToolCallRequest(c.id, c.function.name, c.function.arguments)
                                for c in calls])
            return await self._stream(messages, extra, on_token)
        except AssistantError:
            raise
        except openai.OpenAIError as exc:
            raise translate_openai_error(exc) from exc
        except (httpx2.HTTPError, ValueError) as exc:
            # A stream that breaks half-way surfaces the transport's exception, unwrapped.
            raise AssistantError(502, "upstream_error",
                                 "The model service broke off its answer") from exc

    async def _stream(self, messages: list[dict[str, Any]], extra: dict[str, Any],
                      on_token: TokenCallback) -> ModelTurn:
        stream = cast(AsyncStream[ChatCompletionChunk],
                      await self.client.chat.completions.create(
                          model=self.model, messages=messages,  # type: ignore[arg-type]
                          stream=True, **extra))
        text: list[str] = []
        calls: dict[int, ToolCallRequest] = {}
        async with stream:
            async for chunk in stream:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta.content:
                    text.append(delta.content)
                    await on_token(delta.content)
                for part in delta.tool_calls or []:
                    call = calls.setdefault(part.index, ToolCallRequest("", "", ""))
                    if part.id:
                        call.id = part.id
                    if part.function is not None:
                        call.name += part.function.name or ""
                        call.arguments += part.function.arguments or ""
        return ModelTurn(content="".join(text),
                         tool_calls=[calls[i] for i in sorted(calls) if calls[i].name])
