"""Command line: `python -m testhosts COMMAND ...` (see --help)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from testhosts import hosts, network, rootfs, settings
from testhosts.util import TestHostsError, ensure_host_packages, log

T = TypeVar("T")
R = TypeVar("R")


def _in_parallel(func: Callable[[T], R], items: list[T]) -> list[R]:
    """Run func over items in threads; raise one error naming every failure."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(func, item) for item in items]
    errors = [str(f.exception()) for f in futures if f.exception() is not None]
    if errors:
        raise TestHostsError("\n".join(errors))
    return [f.result() for f in futures]


def _names(args: argparse.Namespace) -> list[str]:
    if getattr(args, "all", False):
        return hosts.all_names()
    if not args.names:
        raise TestHostsError("name at least one host (or --all)")
    return list(args.names)


def cmd_build(args: argparse.Namespace) -> None:
    for distro in args.distro or [settings.DEFAULT_DISTRO]:
        print(rootfs.build(distro, force=args.force))


def cmd_up(args: argparse.Namespace) -> None:
    specs = [hosts.HostSpec.parse(text) for text in args.hosts]
    # Build each needed rootfs once, before the parallel copies.
    for distro in sorted({spec.distro for spec in specs}):
        rootfs.build(distro)
    network.up()
    _in_parallel(hosts.create, specs)
    _in_parallel(hosts.start, [spec.name for spec in specs])
    if args.json:
        print(json.dumps([hosts.status(spec.name) for spec in specs], indent=2))


def cmd_create(args: argparse.Namespace) -> None:
    _in_parallel(hosts.create, [hosts.HostSpec.parse(text) for text in args.hosts])


def cmd_start(args: argparse.Namespace) -> None:
    _in_parallel(hosts.start, _names(args))


def cmd_stop(args: argparse.Namespace) -> None:
    _in_parallel(hosts.stop, _names(args))


def cmd_destroy(args: argparse.Namespace) -> None:
    _in_parallel(hosts.destroy, _names(args))


def cmd_net_up(_args: argparse.Namespace) -> None:
    network.up()


def cmd_net_down(args: argparse.Namespace) -> None:
    network.down(force=args.force)


def cmd_down(args: argparse.Namespace) -> None:
    """Destroy every host of this state dir, then the bridge and NAT (the CI cleanup)."""
    _in_parallel(hosts.destroy, hosts.all_names())
    network.down(force=args.force)


def cmd_status(args: argparse.Namespace) -> None:
    cached = {d: rootfs.is_cached(d) for d in settings.DISTROS}
    net = network.status()
    host_reports = [hosts.status(name) for name in hosts.all_names()]
    if args.json:
        report = {
            "cache_dir": str(settings.CACHE_DIR),
            "state_dir": str(settings.STATE_DIR),
            "rootfs": {d: str(rootfs.rootfs_path(d)) if ok else None for d, ok in cached.items()},
            "network": net,
            "hosts": host_reports,
        }
        print(json.dumps(report, indent=2))
        return
    rootfs_text = ", ".join(f"{d}={'yes' if ok else 'no'}" for d, ok in cached.items())
    print(f"cache  {settings.CACHE_DIR}  rootfs: {rootfs_text}")
    ports = ",".join(net["attached"]) or "-"  # type: ignore[arg-type]
    table = "yes" if net["nft_table"] else "no"
    print(f"net    bridge={net['bridge'] or '-'} nft_table={table} ports={ports}")
    for host in host_reports:
        state = host["system_state"] or ("running" if host["running"] else "stopped")
        print(f"host   {host['name']:<24} {host['address']:<14} {host['distro']:<9} {state}")


def cmd_ssh(args: argparse.Namespace) -> None:
    spec = hosts.load_spec(args.name)
    ssh = [
        "ssh",
        "-i",
        str(settings.ssh_key_path()),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        f"root@{spec.address}",
        *args.command,
    ]
    os.execvp("ssh", ssh)  # noqa: S606 - replaces this process with a fixed ssh argv


def cmd_supervise(args: argparse.Namespace) -> int:
    return hosts.supervise(args.name)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="testhosts", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build/cache the base rootfs (debootstrap)")
    p.add_argument("--distro", action="append", choices=settings.DISTROS)
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "up", help="create (if missing) and boot hosts in parallel, wait until SSH answers"
    )
    p.add_argument("hosts", nargs="+", metavar="NAME:ADDRESS[:DISTRO]")
    p.add_argument("--json", action="store_true", help="print connection details as JSON")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("create", help="create hosts without booting them")
    p.add_argument("hosts", nargs="+", metavar="NAME:ADDRESS[:DISTRO]")
    p.set_defaults(func=cmd_create)

    for name, func, text in (
        ("start", cmd_start, "boot existing hosts"),
        ("stop", cmd_stop, "power hosts off"),
        ("destroy", cmd_destroy, "stop and delete hosts"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("names", nargs="*")
        p.add_argument("--all", action="store_true", help="every host in the state dir")
        p.set_defaults(func=func)

    p = sub.add_parser("net-up", help="bridge aabr0 + NAT table (idempotent)")
    p.set_defaults(func=cmd_net_up)
    for name, func, text in (
        ("net-down", cmd_net_down, "remove bridge + NAT table (refuses while hosts are attached)"),
        ("down", cmd_down, "destroy all hosts, then remove bridge + NAT table"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--force", action="store_true", help="even with foreign veths still attached"
        )
        p.set_defaults(func=func)

    p = sub.add_parser("status", help="rootfs cache, network and hosts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("ssh", help="ssh into a host as root with the throwaway key")
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_ssh)

    p = sub.add_parser("_supervise", help=argparse.SUPPRESS)
    p.add_argument("name")
    p.set_defaults(func=cmd_supervise)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command in ("build", "up", "create", "start", "net-up"):
            ensure_host_packages()
        result = args.func(args)
    except TestHostsError as exc:
        log(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
