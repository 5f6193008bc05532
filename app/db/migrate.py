"""aerich migrations driven programmatically (used by `python -m app db ...` and tests).

Versions are named like aerich's files without ".py", e.g. ``1_20261127025439_add_x``.
``base`` names the state before the first migration.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
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


# --- the plan: what an upgrade would do, and whether old code survives it ------------------

REASON_MAX_CHARS = 200


@dataclass(frozen=True)
class PendingMigration:
    name: str
    destructive: bool
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MigrationPlan:
    current: str
    target: str
    pending: list[PendingMigration]
    # The applied head is not a version this code ships: a newer release migrated the database.
    unknown_head: bool

    @property
    def destructive(self) -> bool:
        return any(m.destructive for m in self.pending)

    def as_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "target": self.target,
            "pending": [{"name": m.name, "destructive": m.destructive, "reasons": m.reasons}
                        for m in self.pending],
            "destructive": self.destructive,
            "unknown_head": self.unknown_head,
        }


async def plan(database_url: str) -> MigrationPlan:
    """Where the database is, what `upgrade` would apply, and which pending migrations are
    destructive (read-only: nothing is executed, not even the migrations' upgrade())."""

    async def action(command: Command) -> list[str]:
        return await _applied_versions()

    applied = await _run(database_url, action)
    shipped = available_versions()
    done = set(applied)
    pending = []
    for name in (v for v in shipped if v not in done):
        try:
            reasons = destructive_statements(await upgrade_sql(name))
        except Exception as exc:
            # Unreadable means unknown: refused like a destructive one unless allowed.
            reasons = [_shorten(f"cannot read the upgrade SQL of {name}: "
                                f"{type(exc).__name__}: {exc}")]
        pending.append(PendingMigration(name, bool(reasons), reasons))
    head = applied[-1] if applied else BASE_VERSION
    return MigrationPlan(current=head, target=shipped[-1] if shipped else BASE_VERSION,
                         pending=pending,
                         unknown_head=head != BASE_VERSION and head not in shipped)


async def upgrade_sql(version: str) -> str:
    """The SQL a shipped migration's upgrade() returns, loaded the way aerich loads it. Its
    upgrade() gets no connection (None): reading a plan must never touch the database."""
    available_versions()  # points aerich's Migrate at this code's migrations
    for module in Migrate.get_all_version_modules():
        if module.name == version_name(version):
            info = Migrate.get_migration_info_for_file(module)
            sql = await info.upgrade(None)  # type: ignore[arg-type]
            if not isinstance(sql, str):
                raise TypeError(f"upgrade() returned {type(sql).__name__}, not SQL text")
            return sql
    raise MigrationError(f"Unknown migration version '{version}'")


# Statements (comments stripped, literals and quoted identifiers masked, whitespace
# collapsed) that lose data or break code that still uses the old names and types.
_DROP_TABLE = re.compile(r"^DROP\s+TABLE\b", re.IGNORECASE)
_ALTER_TABLE = re.compile(
    r"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?\S+(?:\s*\*)?\s+(?P<actions>.+)$",
    re.IGNORECASE | re.DOTALL)
_DESTRUCTIVE_ACTIONS = (
    # DROP [COLUMN] [IF EXISTS] x; not DROP CONSTRAINT (nor MySQL's DROP INDEX / KEY)
    re.compile(r"^DROP\s+(?!(?:CONSTRAINT|INDEX|KEY|FOREIGN\s+KEY|PRIMARY\s+KEY)\b)",
               re.IGNORECASE),
    # RENAME [COLUMN] x TO y, RENAME TO t; not RENAME CONSTRAINT
    re.compile(r"^RENAME\s+(?!CONSTRAINT\b)", re.IGNORECASE),
    # ALTER [COLUMN] x [SET DATA] TYPE t
    re.compile(r"^ALTER\s+(?:COLUMN\s+)?\S+\s+(?:SET\s+DATA\s+)?TYPE\b", re.IGNORECASE),
)
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_DO_BLOCK = re.compile(r"^DO\b", re.IGNORECASE)
_DDL_START = re.compile(r"\b(?:DROP|ALTER)\s+TABLE\b", re.IGNORECASE)


def destructive_statements(sql: str) -> list[str]:
    """The statements of `sql` that drop or rename a table or column, or change a column's
    type (each shortened to REASON_MAX_CHARS); [] when the SQL is additive only. The body of
    a DO block counts too (its statements may follow BEGIN, THEN, ...)."""
    return [_shorten(text) for text, masked in _split_statements(sql)
            if _is_destructive(masked) or (_DO_BLOCK.match(masked) and _do_block_destructive(text))]


def _is_destructive(masked: str) -> bool:
    if _DROP_TABLE.match(masked):
        return True
    alter = _ALTER_TABLE.match(masked)
    if alter is None:
        return False
    return any(pattern.match(action) for action in _top_level(alter["actions"])
               for pattern in _DESTRUCTIVE_ACTIONS)


def _do_block_destructive(text: str) -> bool:
    opening = _DOLLAR_TAG.search(text)
    if opening is None:
        return False
    close = text.find(opening.group(), opening.end())
    body = text[opening.end():close if close >= 0 else len(text)]
    for _, masked in _split_statements(body):
        start = _DDL_START.search(masked)
        if start and _is_destructive(masked[start.start():]):
            return True
    return False


def _shorten(text: str) -> str:
    return text if len(text) <= REASON_MAX_CHARS else text[:REASON_MAX_CHARS - 3] + "..."


def _top_level(actions: str) -> list[str]:
    """ALTER TABLE's comma-separated actions (commas inside parentheses belong to one)."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(actions):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            parts.append(actions[start:i].strip())
            start = i + 1
    parts.append(actions[start:].strip())
    return parts


def _split_statements(sql: str) -> list[tuple[str, str]]:
    """(statement, masked statement) pairs: comments removed, whitespace collapsed; in the
    masked one string literals read '' and quoted identifiers "_", so their contents (e.g.
    COMMENT ON ... IS 'drop table') never match."""
    statements: list[tuple[str, str]] = []
    text: list[str] = []
    masked: list[str] = []

    def emit(original: str, mask: str) -> None:
        text.append(original)
        masked.append(mask)

    def end_statement() -> None:
        original, mask = " ".join("".join(text).split()), " ".join("".join(masked).split())
        if original:
            statements.append((original, mask))
        text.clear()
        masked.clear()

    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            emit(" ", " ")
        elif sql.startswith("/*", i):  # PostgreSQL block comments nest
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            emit(" ", " ")
        elif char == "'" or (char in "eE" and sql.startswith("'", i + 1)
                             and not (i and (sql[i - 1].isalnum() or sql[i - 1] in "_$"))):
            start = i
            escapes = char != "'"
            i += 2 if escapes else 1
            while i < n:
                if escapes and sql[i] == "\\":
                    i += 2
                elif sql.startswith("''", i):
                    i += 2
                elif sql[i] == "'":
                    i += 1
                    break
                else:
                    i += 1
            emit(sql[start:i], "''")
        elif char == '"':
            end = i + 1
            while end < n:
                if sql.startswith('""', end):
                    end += 2
                elif sql[end] == '"':
                    break
                else:
                    end += 1
            emit(sql[i:end + 1], '"_"')
            i = end + 1
        elif char == "$" and (tag := _DOLLAR_TAG.match(sql, i)) and not (
                i and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            close = sql.find(tag.group(), tag.end())
            end = n if close < 0 else close + len(tag.group())
            emit(sql[i:end], "''")
            i = end
        elif char == ";":
            end_statement()
            i += 1
        else:
            emit(char, char)
            i += 1
    end_statement()
    return statements
