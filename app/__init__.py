"""assistantapp: an AI assistant web app. Run with `sanic app:create_app --factory`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.factory import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # `create_app` is imported on first use: the command line (`python -m app ...`,
    # `python -m app.db.cli ...`) needs only the settings and the ORM, and importing the
    # whole web stack (sanic, openai, authlib) for it costs about a second per command.
    if name == "create_app":
        from app.factory import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
