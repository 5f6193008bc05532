"""Placeholder until its owner lands it."""

from __future__ import annotations

from typing import Any


def setup_assistant(app: Any, settings: Any) -> None:
    return None
