"""Placeholder until its owner lands it."""

from __future__ import annotations

from typing import Any


def setup_auth(app: Any, settings: Any) -> None:
    return None
