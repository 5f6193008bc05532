"""`python -m app db upgrade | downgrade (--to VERSION | --steps N) | current | history |
plan | smoke`.

The deployment records `current` (one line, the head version) for every release and
rolls back with `downgrade --to <recorded head>`. Before migrating it runs the new release's
`plan` (one line of JSON: current, target, pending with destructive/reasons, destructive,
unknown_head); after migrating, the live release's `smoke` (its ORM writes and reads every
model in a transaction that is rolled back). Exit codes: 0 ok, 1 bad input or
configuration, 2 database unreachable, migration failure or failed smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from app.config import ConfigError, load_settings
from app.db import migrate, smoke

EXIT_OK = 0
EXIT_USAGE = 1
EXIT_DATABASE = 2


def _parser() -> argparse.ArgumentParser:
    # --env-file is accepted before or after the command (two dests: argparse would let the
    # subcommand's default overwrite a value given before the command).
    env_help = "dotenv file to read settings from (default: .env if present)"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env-file", default=None, metavar="PATH", help=env_help)
    parser = argparse.ArgumentParser(prog="python -m app db",
                                     description="Database migrations (aerich).")
    parser.add_argument("--env-file", dest="global_env_file", default=None, metavar="PATH",
                        help=env_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("upgrade", parents=[common], help="apply all pending migrations")
    down = commands.add_parser("downgrade", parents=[common],
                               help="undo migrations until VERSION is the head, or the last N")
    target = down.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="VERSION",
                        help=f"version name or number as printed by `current`, or "
                             f"'{migrate.BASE_VERSION}' to undo everything")
    # A string, checked in main(): a bad N is bad input (exit 1), like every other mistake.
    target.add_argument("--steps", metavar="N",
                        help="undo the newest N applied migrations (N >= 1)")
    commands.add_parser("current", parents=[common], help="print the applied head version")
    commands.add_parser("history", parents=[common],
                        help="list shipped versions and whether each is applied")
    commands.add_parser("plan", parents=[common],
                        help="one line of JSON: applied head, target, pending migrations and "
                             "which are destructive (drop/rename a table or column, change a "
                             "column type); changes nothing")
    commands.add_parser("smoke", parents=[common],
                        help="write, read and update one row of every model with this code's "
                             "ORM in a transaction that is rolled back (schema compatibility)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "steps", None) is not None:
        steps = args.steps.strip()
        if not steps.isdigit() or int(steps) < 1:
            print(f"Error: --steps needs a whole number of migrations, at least 1 "
                  f"(got '{args.steps}')", file=sys.stderr)
            return EXIT_USAGE
        args.steps = int(steps)
    env_file = args.env_file or args.global_env_file
    if env_file is not None and not Path(env_file).is_file():
        print(f"Env file not found: {env_file}", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = load_settings(env_file=env_file if env_file is not None else ".env")
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_dispatch(args, settings.database_url))
    except migrate.DatabaseUnavailableError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    except smoke.SmokeTestError as exc:
        print(f"Error: schema smoke test failed: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    except migrate.MigrationError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # a failing migration: say which error, without a traceback
        what = {"plan": "migration plan", "smoke": "schema smoke test"}.get(args.command,
                                                                             "migration")
        print(f"Error: {what} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_DATABASE


async def _dispatch(args: argparse.Namespace, database_url: str) -> int:
    if args.command == "upgrade":
        applied = await migrate.upgrade(database_url)
        for version in applied:
            print(f"Applied {version}")
        head = await migrate.current(database_url)
        print(f"Database is at {head}" if applied else f"Already up to date at {head}")
    elif args.command == "downgrade":
        undone = (await migrate.downgrade_steps(database_url, args.steps)
                  if args.steps is not None else
                  await migrate.downgrade_to(database_url, args.to))
        for version in undone:
            print(f"Reverted {version}")
        head = await migrate.current(database_url)
        print(f"Database is at {head}" if undone else f"Already at {head}")
    elif args.command == "current":
        print(await migrate.current(database_url))
    elif args.command == "history":
        for status in await migrate.history(database_url):
            print(f"{status.name}\t{'applied' if status.applied else 'pending'}")
    elif args.command == "plan":
        print(json.dumps((await migrate.plan(database_url)).as_dict()))
    elif args.command == "smoke":
        count = await smoke.run(database_url)
        print(f"Schema smoke test passed: {count} models written and read")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
