"""aerich migrations driven programmatically (used by `python -m app db ...` and tests).

Versions are named like aerich's files without ".py", e.g. ``1_20261127025439_add_x``.
``base`` names the state before the first migration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from aerich import Command
from aerich.migrate import Migrate
from aerich.models import Aerich
from tortoise import Tortoise
from tortoise.context import TortoiseContext
from tortoise.exceptions import OperationalError

from app.db import APP_LABEL, CONNECTION_NAME, MIGRATIONS_DIR, tortoise_config

BASE_VERSION = "base"
CONNECT_TIMEOUT_S = 10.0

T = TypeVar("T")


class MigrationError(Exception):
    """A problem the operator can act on; the CLI prints it without a traceback."""


class DatabaseUnavailableError(MigrationError):
    pass


@dataclass(frozen=True)
class VersionStatus:
    name: str
    applied: bool


def version_name(file_name: str) -> str:
    return file_name.removesuffix(".py")


def available_versions() -> list[str]:
    """Migration versions shipped with this code, oldest first."""
    Migrate.migrate_location = Migrate.get_migration_dir(str(MIGRATIONS_DIR), APP_LABEL)
    return [version_name(f) for f in Migrate.get_all_version_files()]


async def _run(database_url: str, action: Callable[[Command], Awaitable[T]]) -> T:
    """Run `action` with an aerich Command in a private tortoise context (the caller may
    have its own, e.g. a running app or a test)."""
    config = tortoise_config(database_url)
    with TortoiseContext():
        try:
            await Tortoise.init(config=config)
            await _check_connection(database_url)
            command = Command(config, app=APP_LABEL, location=str(MIGRATIONS_DIR))
            await command.init()
            return await action(command)
        finally:
            await Tortoise.close_connections()


async def _check_connection(database_url: str) -> None:
    connection = Tortoise.get_connection(CONNECTION_NAME)
    try:
        await asyncio.wait_for(connection.execute_query("SELECT 1"), CONNECT_TIMEOUT_S)
    except Exception as exc:
        raise DatabaseUnavailableError(
            f"Cannot connect to the database {_describe(database_url)}: {_reason(exc)}"
        ) from None


def _describe(database_url: str) -> str:
    parts = urlsplit(database_url)  # no password in messages
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:g}s"
    return str(exc) or type(exc).__name__


async def _applied_versions() -> list[str]:
    """Applied versions, oldest first ([] on a database aerich never touched)."""
    try:
        rows = await Aerich.filter(app=APP_LABEL).order_by("id").values_list("version", flat=True)
    except OperationalError:
        return []
    return [version_name(str(v)) for v in rows]


async def upgrade(database_url: str) -> list[str]:
    """Apply every pending migration; returns the versions applied now."""

    async def action(command: Command) -> list[str]:
        return [version_name(v) for v in await command.upgrade(run_in_transaction=True)]

    return await _run(database_url, action)


async def current(database_url: str) -> str:
    """The newest applied version, or "base" when none is."""

    async def action(command: Command) -> str:
        applied = await _applied_versions()
        return applied[-1] if applied else BASE_VERSION

    return await _run(database_url, action)


async def history(database_url: str) -> list[VersionStatus]:
    async def action(command: Command) -> list[VersionStatus]:
        applied = set(await _applied_versions())
        return [VersionStatus(v, v in applied) for v in available_versions()]

    return await _run(database_url, action)


def _resolve(target: str, candidates: list[str]) -> str | None:
    """Exact name (with or without .py), or the bare number of a version."""
    target = version_name(target.strip())
    for name in candidates:
        if name == target or (target.isdigit() and name.split("_", 1)[0] == target):
            return name
    return None


async def downgrade_to(database_url: str, target: str) -> list[str]:
    """Undo every migration applied after `target`, newest first, so that `target` becomes
    the head. Returns the versions undone (empty when already there)."""

    async def action(command: Command) -> list[str]:
        applied = await _applied_versions()
        if version_name(target.strip()) == BASE_VERSION:
            keep = -1
        else:
            name = _resolve(target, applied)
            if name is None:
                known = _resolve(target, available_versions())
                if known is not None:
                    raise MigrationError(
                        f"Version {known} is not applied to this database (head: "
                        f"{applied[-1] if applied else BASE_VERSION}); nothing to downgrade to")
                raise MigrationError(
                    f"Unknown migration version '{target}'. Known versions: "
                    + ", ".join([BASE_VERSION, *available_versions()]))
            keep = applied.index(name)
        return await _undo_after(command, applied, keep)

    return await _run(database_url, action)


async def downgrade_steps(database_url: str, steps: int) -> list[str]:
    """Undo the newest `steps` applied migrations (the seed's `rollback(steps)`). Refuses,
    touching nothing, when fewer than `steps` are applied."""
    if steps < 1:
        raise MigrationError(f"--steps must be at least 1, got {steps}")

    async def action(command: Command) -> list[str]:
        applied = await _applied_versions()
        if steps > len(applied):
            raise MigrationError(
                f"Cannot undo {steps} migration{'s' if steps != 1 else ''}: only "
                f"{len(applied)} {'is' if len(applied) == 1 else 'are'} applied (head: "
                f"{applied[-1] if applied else BASE_VERSION}); nothing was changed")
        return await _undo_after(command, applied, len(applied) - steps - 1)

    return await _run(database_url, action)


async def _undo_after(command: Command, applied: list[str], keep: int) -> list[str]:
    """Undo applied[keep + 1:], newest first (keep = -1 undoes everything)."""
    to_undo = applied[keep + 1:]
    if not to_undo:
        return []
    missing = [v for v in to_undo if v not in available_versions()]
    if missing:
        raise MigrationError(
            "The database has migrations this code does not ship (downgrade with the "
            f"newer release): {', '.join(missing)}")
    first_number = int(to_undo[0].split("_", 1)[0])
    undone = await command.downgrade(version=first_number, delete=False)
    return [version_name(v) for v in undone]
