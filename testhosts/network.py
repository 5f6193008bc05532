"""The host side of the test network: bridge aabr0, our nftables table, IPv4 forwarding.

Only things this module created are ever changed or removed: the bridge carries
our alias, the nftables table has our own name, and forwarding is restored to
the value recorded before we switched it on.
"""

from __future__ import annotations

import json
from pathlib import Path

from testhosts import settings
from testhosts.util import TestHostsError, locked, log, run

FORWARD_SYSCTL = Path("/proc/sys/net/ipv4/ip_forward")
# Every booted host's systemd (and its services) takes inotify instances from the machine's
# per-user budget (root's, for every host); the default 128 runs out at about a dozen hosts
# and then hosts fail to boot with "Too many open files".
INOTIFY_INSTANCES_SYSCTL = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_INSTANCES_MIN = 1024


def _state_file() -> Path:
    return settings.STATE_DIR / "network.json"


def _lock() -> Path:
    return settings.STATE_DIR / "network.lock"


def bridge_exists() -> bool:
    return Path(f"/sys/class/net/{settings.BRIDGE}").exists()


def bridge_is_ours() -> bool:
    alias = Path(f"/sys/class/net/{settings.BRIDGE}/ifalias")
    return alias.exists() and alias.read_text().strip() == settings.BRIDGE_ALIAS


def attached_ports() -> list[str]:
    ports = Path(f"/sys/class/net/{settings.BRIDGE}/brif")
    return sorted(p.name for p in ports.iterdir()) if ports.is_dir() else []


def table_exists() -> bool:
    return run(["nft", "list", "table", "inet", settings.NFT_TABLE], check=False).returncode == 0


def _default_interface() -> str:
    route = run(["ip", "-json", "route", "show", "default"]).stdout
    routes = json.loads(route or "[]")
    if not routes:
        raise TestHostsError("no default route: the hosts could not reach the Debian mirror")
    return str(routes[0]["dev"])


def _nft_ruleset(egress: str) -> str:
    # Masquerade only the test subnet, only out of the default interface.
    return f"""
table inet {settings.NFT_TABLE} {{
    comment "assistantapp test hosts NAT (testhosts up/down)"
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{egress}" ip saddr {settings.SUBNET} ip daddr != {settings.SUBNET} masquerade
    }}
}}
"""


def up() -> None:
    """Create bridge, NAT table and forwarding if missing. Safe to call any number of times."""
    with locked(_lock()):
        if bridge_exists() and not bridge_is_ours():
            raise TestHostsError(
                f"{settings.BRIDGE} exists but was not created by testhosts; not touching it"
            )
        if not bridge_exists():
            run(["ip", "link", "add", settings.BRIDGE, "type", "bridge"])
            run(["ip", "link", "set", settings.BRIDGE, "alias", settings.BRIDGE_ALIAS])
            run(
                [
                    "ip",
                    "addr",
                    "add",
                    f"{settings.GATEWAY}/{settings.PREFIX_LEN}",
                    "dev",
                    settings.BRIDGE,
                ]
            )
            run(["ip", "link", "set", settings.BRIDGE, "up"])
            log(f"bridge {settings.BRIDGE} {settings.GATEWAY}/{settings.PREFIX_LEN} up")
        if not table_exists():
            run(["nft", "-f", "-"], input_text=_nft_ruleset(_default_interface()))
            log(f"nftables table inet {settings.NFT_TABLE} loaded")
        state = json.loads(_state_file().read_text()) if _state_file().exists() else {}
        if FORWARD_SYSCTL.read_text().strip() != "1":
            state["ip_forward_before"] = FORWARD_SYSCTL.read_text().strip()
            FORWARD_SYSCTL.write_text("1\n")
            log("enabled net.ipv4.ip_forward (restored by `down`)")
        if int(INOTIFY_INSTANCES_SYSCTL.read_text()) < INOTIFY_INSTANCES_MIN:
            state.setdefault("inotify_instances_before",
                             INOTIFY_INSTANCES_SYSCTL.read_text().strip())
            INOTIFY_INSTANCES_SYSCTL.write_text(f"{INOTIFY_INSTANCES_MIN}\n")
            log(f"raised fs.inotify.max_user_instances to {INOTIFY_INSTANCES_MIN}"
                " (restored by `down`)")
        _state_file().parent.mkdir(parents=True, exist_ok=True)
        _state_file().write_text(json.dumps(state))


def down(*, force: bool = False) -> None:
    """Remove what `up` created. Refuses while hosts are still attached, unless forced."""
    with locked(_lock()):
        ports = attached_ports() if bridge_exists() and bridge_is_ours() else []
        if ports and not force:
            raise TestHostsError(
                f"hosts still attached to {settings.BRIDGE} ({', '.join(ports)}): "
                "stop them first or use --force"
            )
        if table_exists():
            run(["nft", "delete", "table", "inet", settings.NFT_TABLE])
            log(f"nftables table inet {settings.NFT_TABLE} removed")
        if bridge_exists() and bridge_is_ours():
            run(["ip", "link", "delete", settings.BRIDGE])
            log(f"bridge {settings.BRIDGE} removed")
        if _state_file().exists():
            state = json.loads(_state_file().read_text())
            before = state.get("ip_forward_before")
            if before is not None:
                FORWARD_SYSCTL.write_text(f"{before}\n")
                log(f"restored net.ipv4.ip_forward={before}")
            inotify_before = state.get("inotify_instances_before")
            if inotify_before is not None:
                INOTIFY_INSTANCES_SYSCTL.write_text(f"{inotify_before}\n")
                log(f"restored fs.inotify.max_user_instances={inotify_before}")
            _state_file().unlink()


def status() -> dict[str, object]:
    return {
        "bridge": settings.BRIDGE if bridge_exists() else None,
        "bridge_ours": bridge_is_ours(),
        "attached": attached_ports(),
        "nft_table": table_exists(),
        "ip_forward": FORWARD_SYSCTL.read_text().strip(),
    }
