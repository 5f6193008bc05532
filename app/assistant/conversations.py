"""Conversations API (the seed's sessions): /api/conversations and their messages.

POST /api/conversations/<id>/messages stores the user's message first, then runs the agent.
- `Accept: text/event-stream`: Server-Sent Events. `event: token` (data {"text"}) for each
  piece of the answer, `event: tool` (data {"name"}) when the email agent uses a tool, then
  `event: done` (data {"messageId", "userMessageId", "conversationId", "notice"}).
  The stream opens with the first event; a failure before it is a plain JSON error with
  its HTTP status (502/503/504), a failure after it is `event: error` (data {"code",
  "error"}).
- otherwise: JSON {"message": ..., "userMessage": ...}.
Either way an upstream failure keeps the user's message; the assistant's turn is stored
with status "error" and the error text.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from uuid import UUID

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, empty
from sanic.response import json as json_response
from sanic_ext.extensions.openapi import openapi
from tortoise.transactions import in_transaction

from app.assistant.agents import AgentContext, AgentRegistry, AgentResult
from app.assistant.llm import AssistantError, ModelClient, not_configured
from app.assistant.quota import spend_model_call
from app.auth.decorators import require_auth
from app.db.models import Conversation, Message, MessageRole, MessageStatus, User
from app.errors import json_error

MAX_MESSAGE_CHARS = 32_000
MAX_TITLE_CHARS = 255
HISTORY_LIMIT = 40
# Estimated tokens of history sent to the model (the newest messages are kept): the
# context window and the cost of a turn stay bounded however long a conversation gets.
HISTORY_TOKEN_BUDGET = 24_000
LIST_LIMIT_MAX = 100

bp = Blueprint("assistant", url_prefix="/api")
log = logging.getLogger(__name__)
# Turns still running after their client left; referenced so they are not garbage-collected.
_running_turns: set[asyncio.Future[Any]] = set()


# -- helpers --------------------------------------------------------------------------------
class BadInput(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _body(request: Request, *, required: bool) -> dict[str, Any]:
    """The JSON object body, or BadInput: our error shape, not the framework's."""
    raw = request.body or b""
    if not raw.strip():
        if required:
            raise BadInput(400, "A JSON body is required", "invalid_body")
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadInput(400, "The body is not valid JSON", "invalid_json") from None
    if not isinstance(data, dict):
        raise BadInput(400, "The body must be a JSON object", "invalid_body")
    return data


def _registry(request: Request) -> AgentRegistry:
    registry: AgentRegistry = request.app.ctx.agents
    return registry


def _agent_name(request: Request, value: Any, default: str) -> str:
    if value is None:
        return default
    registry = _registry(request)
    if not isinstance(value, str) or registry.get(value) is None:
        raise BadInput(400, f"agent must be one of: {', '.join(registry.names())}",
                       "unknown_agent")
    return value


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    return {"id": str(conversation.id), "title": conversation.title,
            "agent": conversation.agent, "createdAt": _iso(conversation.created_at),
            "updatedAt": _iso(conversation.updated_at)}


def message_json(message: Message) -> dict[str, Any]:
    return {"id": message.id, "role": str(message.role), "content": message.content,
            "status": str(message.status), "agent": message.agent,
            "createdAt": _iso(message.created_at)}


async def _own_conversation(request: Request, conversation_id: UUID) -> Conversation | None:
    # Someone else's conversation is "not found": its existence is not disclosed.
    return await Conversation.get_or_none(id=conversation_id, user_id=request.ctx.user_id)


def _not_found() -> HTTPResponse:
    return json_error(404, "Conversation not found", "not_found")


def _repair_tool_steps(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep only complete tool rounds: an assistant message with tool_calls must be followed
    by one tool result per call (the OpenAI API rejects anything else, and then every later
    turn of the conversation would fail). A round cut short by a failure is dropped, as are
    tool results without their call."""
    repaired: list[dict[str, Any]] = []
    i = 0
    while i < len(out):
        message = out[i]
        if message["role"] == "assistant" and message.get("tool_calls"):
            ids = [c.get("id") for c in message["tool_calls"] if isinstance(c, dict)]
            j = i + 1
            results: list[dict[str, Any]] = []
            while j < len(out) and out[j]["role"] == "tool":
                results.append(out[j])
                j += 1
            answered = {r.get("tool_call_id") for r in results}
            if ids and all(call_id in answered for call_id in ids):
                repaired.append(message)
                repaired.extend(r for r in results if r.get("tool_call_id") in ids)
            i = j
            continue
        if message["role"] == "tool":
            i += 1  # a result without its call
            continue
        repaired.append(message)
        i += 1
    return repaired


def estimated_tokens(message: dict[str, Any]) -> int:
    """A cheap upper-ish estimate (about 4 characters per token, plus overhead)."""
    size = len(str(message.get("content") or ""))
    if message.get("tool_calls"):
        size += len(json.dumps(message["tool_calls"]))
    return size // 4 + 8


def history_for_model(messages: list[Message], *, include_tools: bool,
                      token_budget: int = HISTORY_TOKEN_BUDGET) -> list[dict[str, Any]]:
    """Stored messages as OpenAI chat messages: completed ones only, newest HISTORY_LIMIT,
    and no more than `token_budget` (estimated) tokens — the newest messages win.

    Without tools (general agent), tool calls and their outputs are left out: email
    content then never reaches a prompt that did not ask for it.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.status != MessageStatus.COMPLETE:
            continue
        if message.role == MessageRole.USER:
            out.append({"role": "user", "content": message.content})
        elif message.role == MessageRole.ASSISTANT and message.tool_calls:
            if include_tools:
                out.append({"role": "assistant", "content": message.content or None,
                            "tool_calls": message.tool_calls})
        elif message.role == MessageRole.ASSISTANT:
            out.append({"role": "assistant", "content": message.content})
        elif message.role == MessageRole.TOOL and include_tools:
            out.append({"role": "tool", "tool_call_id": message.tool_call_id,
                        "content": message.content})
    out = _repair_tool_steps(out)[-HISTORY_LIMIT:]
    kept: list[dict[str, Any]] = []
    spent = 0
    for message in reversed(out):
        cost = estimated_tokens(message)
        if kept and spent + cost > token_budget:
            break
        kept.append(message)
        spent += cost
    out = kept[::-1]
    # Never start with a tool output or an assistant turn whose question was cut off.
    while out and out[0]["role"] != "user":
        out.pop(0)
    return out


# -- conversations ----------------------------------------------------------------------------
@bp.post("/conversations")
@openapi.tag("assistant")
@openapi.secured("bearerAuth")
@openapi.response(401, description="Missing or invalid access token (auth_required, ...)")
@openapi.summary("Start a conversation")
@openapi.body({"application/json": {"title": str, "agent": str}},
              description='Optional: {"title": str, "agent": "general" | "email"}')
@openapi.response(201, description='{"conversation": {id, title, agent, createdAt, updatedAt}}')
@openapi.response(400, description="invalid_json, invalid_body, validation_error, unknown_agent")
@require_auth()
async def create_conversation(request: Request) -> HTTPResponse:
    try:
        body = _body(request, required=False)
        title = body.get("title", "")
        if not isinstance(title, str) or len(title) > MAX_TITLE_CHARS:
            raise BadInput(400, f"title must be a string of at most {MAX_TITLE_CHARS} "
                           "characters", "validation_error")
        agent = _agent_name(request, body.get("agent"), "general")
    except BadInput as exc:
        return json_error(exc.status, exc.message, exc.code)
    conversation = await Conversation.create(user_id=request.ctx.user_id, title=title.strip(),
                                             agent=agent)
    return json_response({"conversation": conversation_json(conversation)}, status=201)


@bp.get("/conversations")
@openapi.tag("assistant")
@openapi.secured("bearerAuth")
@openapi.response(401, description="Missing or invalid access token (auth_required, ...)")
@openapi.summary("List your conversations, most recently active first")
@openapi.parameter("limit", int, "query", description="1-100, default 50")
@openapi.parameter("offset", int, "query", description="default 0")
@openapi.response(200, description='{"conversations": [...], "total", "limit", "offset"}')
@openapi.response(400, description="validation_error")
@require_auth()
async def list_conversations(request: Request) -> HTTPResponse:
    try:
        limit = int(request.args.get("limit", 50))
        offset = int(request.args.get("offset", 0))
        if not 1 <= limit <= LIST_LIMIT_MAX or offset < 0:
            raise ValueError
    except ValueError:
        return json_error(400, f"limit must be 1-{LIST_LIMIT_MAX} and offset >= 0",
                          "validation_error")
    query = Conversation.filter(user_id=request.ctx.user_id)
    total = await query.count()
    conversations = await query.order_by("-updated_at", "-created_at").offset(offset).limit(limit)
    return json_response({"conversations": [conversation_json(c) for c in conversations],
                          "total": total, "limit": limit, "offset": offset})


@bp.get("/conversations/<conversation_id:uuid>")
@openapi.tag("assistant")
@openapi.secured("bearerAuth")
@openapi.response(401, description="Missing or invalid access token (auth_required, ...)")
@openapi.summary("A conversation with its messages")
@openapi.response(200, description='{"conversation": {..., "messages": [{id, role, content, '
                  'status, agent, createdAt}]}}')
@openapi.response(404, description="not_found (unknown, or someone else's)")
@require_auth()
async def get_conversation(request: Request, conversation_id: UUID) -> HTTPResponse:
    conversation = await _own_conversation(request, conversation_id)
    if conversation is None:
        return _not_found()
    messages = await Message.filter(conversation_id=conversation.id).order_by("id")
    # The page shows the dialogue; tool plumbing stays internal.
    visible = [m for m in messages
               if m.role in (MessageRole.USER, MessageRole.ASSISTANT) and not m.tool_calls]
    return json_response({"conversation": {**conversation_json(conversation),
                                           "messages": [message_json(m) for m in visible]}})


@bp.delete("/conversations/<conversation_id:uuid>")
@openapi.tag("assistant")
@openapi.secured("bearerAuth")
@openapi.response(401, description="Missing or invalid access token (auth_required, ...)")
@openapi.summary("Delete a conversation and its messages")
@openapi.response(204, description="Deleted")
@openapi.response(404, description="not_found (unknown, or someone else's)")
@require_auth()
async def delete_conversation(request: Request, conversation_id: UUID) -> HTTPResponse:
    deleted = await Conversation.filter(id=conversation_id, user_id=request.ctx.user_id).delete()
    if not deleted:
        return _not_found()
    return empty(status=204)


@bp.get("/agents")
@openapi.tag("assistant")
@openapi.secured("bearerAuth")
@openapi.response(401, description="Missing or invalid access token (auth_required, ...)")
@openapi.summary("The available agents")
@openapi.response(200, description='{"agents": [{"name", "description"}]}')
@require_auth()
async def list_agents(request: Request) -> HTTPResponse:
    return json_response({"agents": _registry(request).describe()})


# -- messages ---------------------------------------------------------------------------------
class _Stream:
    """Opens the SSE response lazily, so errors before any output keep their HTTP status."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.response: HTTPResponse | None = None
        self.client_gone = False

    async def send(self, event: str, data: dict[str, Any]) -> None:
        if self.client_gone:
            return
        try:
            if self.response is None:
                self.response = await self.request.respond(
                    content_type="text/event-stream; charset=utf-8",
                    # no-transform/X-Accel-Buffering: proxies must pass each event at once.
                    headers={"Cache-Control": "no-cache, no-transform",
                             "X-Accel-Buffering": "no"})
            payload = json.dumps(data, ensure_ascii=False)
            await self.response.send(f"event: {event}\ndata: {payload}\n\n")
        except Exception as exc:
            # The browser went away: finish the turn anyway so the answer is stored.
            log.debug("SSE client gone: %s: %s", type(exc).__name__, exc)
            self.client_gone = True

    async def close(self) -> None:
        if self.response is not None and not self.client_gone:
            try:
                await self.response.eof()
            except Exception:
                self.client_gone = True


async def _persist_result(conversation: Conversation, agent_name: str,
                          result: AgentResult) -> Message:
    async with in_transaction():
        for step in result.steps:
            await Message.create(
                conversation_id=conversation.id, agent=agent_name,
                role=MessageRole(step["role"]), content=step.get("content") or "",
                tool_calls=step.get("tool_calls"), tool_call_id=step.get("tool_call_id"))
        message = await Message.create(conversation_id=conversation.id, agent=agent_name,
                                       role=MessageRole.ASSISTANT, content=result.content)
        await Conversation.filter(id=conversation.id).update(updated_at=message.created_at)
    return message


@bp.post("/conversations/<conversation_id:uuid>/messages")
@openapi.tag("assistant")
@openapi.secured("bearerAuth")
@openapi.response(401, description="Missing or invalid access token (auth_required, ...)")
@openapi.summary("Send a message; the agent's reply as JSON or Server-Sent Events")
@openapi.description(
    "The message is stored before the model is called. With `Accept: text/event-stream` "
    "the reply streams as `event: token` ({text}), `event: tool` ({name}), then "
    "`event: done` ({messageId, userMessageId, conversationId, notice}); a failure after "
    "the stream started is `event: error` ({code, error}). Otherwise JSON "
    "{message, userMessage, notice}. The email agent never sends mail; "
    "`notice: gmail_access_missing` means Gmail permission is missing.")
@openapi.body({"application/json": {"content": str, "agent": str}}, required=True,
              description='{"content": str (<= 32000 chars), "agent"?: "general" | "email"}')
@openapi.response(200, description="The reply (JSON or text/event-stream)")
@openapi.response(400, description="invalid_json, invalid_body, validation_error, unknown_agent")
@openapi.response(404, description="not_found")
@openapi.response(413, description="message_too_large")
@openapi.response(429, description="quota_exceeded (per-user message quota; Retry-After)")
@openapi.response(502, description="upstream_error: the model service failed")
@openapi.response(503, description="upstream_rate_limited or assistant_not_configured")
@openapi.response(504, description="upstream_timeout")
@require_auth()
async def post_message(request: Request, conversation_id: UUID) -> HTTPResponse | None:
    conversation = await _own_conversation(request, conversation_id)
    if conversation is None:
        return _not_found()
    try:
        body = _body(request, required=True)
        content = body.get("content")
        if not isinstance(content, str) or not content.strip():
            raise BadInput(400, "content must be a non-empty string", "validation_error")
        if len(content) > MAX_MESSAGE_CHARS:
            raise BadInput(413, f"content is longer than {MAX_MESSAGE_CHARS} characters",
                           "message_too_large")
        agent_name = _agent_name(request, body.get("agent"), conversation.agent)
    except BadInput as exc:
        return json_error(exc.status, exc.message, exc.code)

    model: ModelClient | None = request.app.ctx.llm
    if model is None:
        error = not_configured()
        return json_error(error.status, error.message, error.code)
    retry_after = await spend_model_call(getattr(request.app.ctx, "redis", None),
                                         request.ctx.user_id, request.app.config.SETTINGS)
    if retry_after is not None:
        response = json_error(429, "You have sent too many messages; try again later",
                              "quota_exceeded", retryAfter=retry_after)
        response.headers["Retry-After"] = str(retry_after)
        return response
    user = await User.get_or_none(id=request.ctx.user_id)
    if user is None:
        return json_error(401, "The user of this token no longer exists", "unauthorized")

    # Stored before the model is called: an upstream failure must not lose what was typed.
    user_message = await Message.create(conversation_id=conversation.id, role=MessageRole.USER,
                                        content=content, agent=agent_name)
    if not conversation.title:
        conversation.title = " ".join(content.split())[:80]
    await conversation.save(update_fields=["title", "updated_at"])

    registry = _registry(request)
    agent = registry.get(agent_name)
    assert agent is not None  # validated above
    stored = await Message.filter(conversation_id=conversation.id).order_by("id")
    history = history_for_model(stored, include_tools=agent.uses_tools)

    streaming = "text/event-stream" in request.headers.get("accept", "")
    stream = _Stream(request) if streaming else None

    async def on_token(text: str) -> None:
        assert stream is not None
        await stream.send("token", {"text": text})

    async def on_event(name: str, data: dict[str, Any]) -> None:
        if stream is not None:
            await stream.send(name, data)

    ctx = AgentContext(app=request.app, user=user, model=model,
                       on_token=on_token if streaming else None, on_event=on_event,
                       conversation_id=conversation.id)

    async def complete_turn() -> tuple[Message, str | None] | AssistantError:
        try:
            result = await registry.run(agent, ctx, history)
        except Exception as exc:
            if not isinstance(exc, AssistantError):
                # A bug or an unexpected failure inside the turn: logged with its traceback,
                # answered as an error (an `error` event when streaming), never a cut stream.
                log.exception("agent %s failed", agent_name)
                exc = AssistantError(502, "agent_error",
                                     "The assistant failed to answer. Please try again.")
            await Message.create(conversation_id=conversation.id, role=MessageRole.ASSISTANT,
                                 content=exc.message, status=MessageStatus.ERROR,
                                 agent=agent_name)
            return exc
        return await _persist_result(conversation, agent_name, result), result.notice

    # Shielded: if the browser goes away mid-answer (Sanic then cancels this handler), the
    # turn still completes and is stored, so a reload shows the whole answer.
    turn = asyncio.ensure_future(complete_turn())
    _running_turns.add(turn)
    turn.add_done_callback(_running_turns.discard)
    try:
        outcome = await asyncio.shield(turn)
    except asyncio.CancelledError:
        if stream is not None:
            stream.client_gone = True
        raise

    if isinstance(outcome, AssistantError):
        if stream is not None and stream.response is not None:
            await stream.send("error", {"code": outcome.code, "error": outcome.message,
                                        "userMessageId": user_message.id})
            await stream.close()
            return None
        return json_error(outcome.status, outcome.message, outcome.code,
                          userMessageId=user_message.id)

    message, notice = outcome
    if stream is not None:
        await stream.send("done", {"messageId": message.id, "userMessageId": user_message.id,
                                   "conversationId": str(conversation.id), "notice": notice})
        await stream.close()
        return None
    return json_response({"message": message_json(message),
                          "userMessage": message_json(user_message), "notice": notice})
