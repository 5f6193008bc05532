"""assistantapp: an AI assistant web app. Run with `sanic app:create_app --factory`."""

from app.factory import create_app

__all__ = ["create_app"]
