"""The agent registry (the seed's AgentFactory) and the general-purpose agent.

An agent turns a conversation history into the next assistant answer. Each run is timed
and counted through app.ops.metrics, which feeds /health and /metrics.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.assistant.llm import ModelClient, TokenCallback

if TYPE_CHECKING:
    from sanic import Sanic

    from app.db.models import User

from app.ops import metrics

# (event name, data) for progress the client may show, e.g. ("tool", {"name": ...}).
EventCallback = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass
class AgentContext:
    app: Sanic
    user: User
    model: ModelClient
    on_token: TokenCallback | None = None
    on_event: EventCallback | None = None
    # The conversation of this turn (draft proposals are linked to it).
    conversation_id: Any = None

    async def event(self, name: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            await self.on_event(name, data)


@dataclass
class AgentResult:
    content: str
    # Intermediate messages (assistant tool calls and tool outputs) to persist in order
    # before the final answer, so later turns keep the context.
    steps: list[dict[str, Any]] = field(default_factory=list)
    # A stable code when the agent answered with an explanation instead of doing the task
    # (e.g. "gmail_access_missing").
    notice: str | None = None


class Agent(ABC):
    name: str
    description: str
    uses_tools = False

    @abstractmethod
    async def run(self, ctx: AgentContext, history: list[dict[str, Any]]) -> AgentResult:
        """Answer the last user message of `history` (OpenAI chat message dicts)."""


GENERAL_SYSTEM_PROMPT = (
    "You are a helpful, concise assistant in a web app. Answer in the user's language. "
    "You cannot read the user's email in this mode; if asked to, tell the user to switch "
    "to the email agent."
)


class GeneralAgent(Agent):
    name = "general"
    description = "General-purpose chat assistant."

    async def run(self, ctx: AgentContext, history: list[dict[str, Any]]) -> AgentResult:
        messages = [{"role": "system", "content": GENERAL_SYSTEM_PROMPT}, *history]
        turn = await ctx.model.chat(messages, on_token=ctx.on_token)
        return AgentResult(content=turn.content)


class AgentRegistry:
    """Name -> agent. The factory the routes ask for the agent a message should go to."""

    def __init__(self) -> None:
        self._agents: dict[str, Agent] = {}

    def register(self, agent: Agent) -> None:
        self._agents[agent.name] = agent

    def get(self, name: str) -> Agent | None:
        return self._agents.get(name)

    def names(self) -> list[str]:
        return sorted(self._agents)

    def describe(self) -> list[dict[str, str]]:
        return [{"name": a.name, "description": a.description}
                for _, a in sorted(self._agents.items())]

    async def run(self, agent: Agent, ctx: AgentContext,
                  history: list[dict[str, Any]]) -> AgentResult:
        """Run one agent and record its execution statistics, success or failure."""
        started = time.perf_counter()
        success = False
        try:
            result = await agent.run(ctx, history)
            success = True
            return result
        finally:
            record_agent_execution(ctx.app, agent.name, success,
                                   time.perf_counter() - started)


def record_agent_execution(app: Sanic, agent: str, success: bool, duration_s: float) -> None:
    # app.ops.metrics aggregates the statistics across worker processes for /health and
    # /metrics; looked up at call time so tests can observe the calls.
    metrics.record_agent_execution(app, agent, success, duration_s)


def default_registry() -> AgentRegistry:
    from app.assistant.email_agent import EmailAgent

    registry = AgentRegistry()
    registry.register(GeneralAgent())
    registry.register(EmailAgent())
    return registry
