"""A deploy onto a nearly full releases disk: it fails before the switch, the live
release keeps serving (measured under load through nginx), and the half-written release
is cleaned up.

"Nearly full": an overlay on /opt/assistantapp/releases whose writable layer is an 8 MiB
tmpfs, so the existing releases stay readable (the live one keeps running) while a new
release runs out of space while it is unpacked and installed. The deploy gets a new
artifact: the live one repacked with another source digest, i.e. other code."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from stack_scenario import (
    APP_ROOT,
    PROJECT_DIR,
    SITE_URL,
    STACK_HOST,
    ca_file,
    client,
    deploy_state,
    status_of,
)

testinfra_hosts = [STACK_HOST]

RELEASES = f"{APP_ROOT}/releases"
SMALL_DISK = "/run/faults-small-disk"
SMALL_DISK_SIZE = "8m"
# Tasks of the app role that write the new release (roles/app/tasks/prepare.yml).
WRITING_THE_RELEASE = {
    "Create the release directory",
    "Unpack the artifact",
    "Create the release's virtualenv",
    "Install the release offline from its wheelhouse",
    "Compile the release's bytecode (the service runs on a read-only tree)",
    "Mark the release complete",
}


def new_release_artifact(live_manifest: dict, directory: Path) -> Path:
    """The live release's artifact with another source digest (the deploy sees new code)."""
    # The artifact this scenario's converge built and deployed (app_artifact in molecule.yml).
    source = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "artifact" / \
        f"{live_manifest['name']}.tar.gz"
    assert source.is_file(), f"the scenario's artifact {source} is missing"
    target = directory / f"{live_manifest['name']}-faults.tar.gz"
    manifest = {**live_manifest, "source_digest": "faults0000000000",
                "commit": "faults000000", "name": target.name.removesuffix(".tar.gz")}
    with tarfile.open(source, "r:gz") as old, \
            tarfile.open(target, "w:gz", compresslevel=1) as new:
        for member in old:
            if member.isfile() and member.name.endswith("/manifest.json"):
                data = json.dumps(manifest, indent=2).encode()
                member.size = len(data)
                new.addfile(member, io.BytesIO(data))
            else:
                new.addfile(member, old.extractfile(member) if member.isfile() else None)
    return target


@pytest.fixture
def small_releases_disk(host):
    mount = (f"mkdir -p {SMALL_DISK} && "
             f"mount -t tmpfs -o size={SMALL_DISK_SIZE},mode=0700 faults-small {SMALL_DISK} && "
             f"mkdir {SMALL_DISK}/upper {SMALL_DISK}/work && "
             f"mount -t overlay faults-releases -o lowerdir={RELEASES},"
             f"upperdir={SMALL_DISK}/upper,workdir={SMALL_DISK}/work {RELEASES}")
    result = host.run(mount)
    assert result.rc == 0, result.stderr
    yield f"{SMALL_DISK}/upper"
    # Lazy: the live instance may hold files opened through the overlay.
    host.run(f"umount -l {RELEASES}; umount -l {SMALL_DISK}; rmdir {SMALL_DISK}")


def test_deploy_onto_a_full_disk_fails_before_the_switch(host, small_releases_disk, tmp_path):
    state_before = deploy_state(host)
    current_before = host.file(f"{APP_ROOT}/current").linked_to
    releases_before = host.file(RELEASES).listdir()
    live_manifest = json.loads(host.file(f"{current_before}/.complete").content_string)
    artifact = new_release_artifact(live_manifest, tmp_path)

    playbook = Path(sys.executable).with_name("ansible-playbook")
    deploy = (f"{playbook} -i {os.environ['MOLECULE_INVENTORY_FILE']} "
              f"{PROJECT_DIR}/playbooks/deploy.yml -e app_artifact={artifact}")
    report = tmp_path / "zero_downtime.json"
    log = tmp_path / "deploy.log"
    measured = subprocess.run(  # noqa: S603 - our own script and arguments
        [sys.executable, str(PROJECT_DIR / "bench" / "zero_downtime.py"), "--url", SITE_URL,
         "--cacert", ca_file(), "--run", deploy, "--command-log", str(log),
         "--json", str(report), "--max-seconds", "600", "--warmup", "1", "--cooldown", "1"],
        capture_output=True, text=True, check=False)
    print(measured.stdout)
    deploy_output = log.read_text()
    # Exit 3: the command (the deploy) failed; 1 would mean requests failed.
    assert measured.returncode == 3, measured.stdout + measured.stderr + deploy_output[-3000:]
    # It ran out of space while writing the release (the tools' messages vary: tar says
    # "No space left on device", ensurepip just fails), i.e. before any switch.
    failed_in = re.search(r"failed in '(.+?)':", deploy_output)
    assert failed_in, deploy_output[-3000:]
    assert failed_in.group(1) in WRITING_THE_RELEASE, failed_in.group(1)
    assert "Nothing was switched: the live release kept serving." in deploy_output
    # The on_failure hook (molecule.yml) ran after the undo, with the failed release's facts.
    failed_release = re.search(r"Deploy of (\S+) failed in", deploy_output).group(1)
    hook_log = host.file("/var/log/assistantapp-hooks.jsonl").content_string.splitlines()
    on_failure = json.loads(hook_log[-1])
    assert on_failure["step"] == "on_failure"
    assert on_failure["release"] == failed_release != state_before["release"]
    assert on_failure["previous"] == state_before["release"]
    assert on_failure["failure"]["task"] == failed_in.group(1)

    whole_run = json.loads(report.read_text())["windows"][0]
    assert whole_run["requests"] > 0
    assert whole_run["failed"] == 0 and whole_run["non_2xx"] == 0, whole_run

    # The half-written release is gone and nothing else changed.
    assert host.file(RELEASES).listdir() == releases_before
    leftovers = host.run("find %s -mindepth 1 -maxdepth 1", small_releases_disk).stdout.split()
    assert leftovers == [], leftovers
    assert host.file(f"{APP_ROOT}/current").linked_to == current_before
    assert deploy_state(host) == state_before
    assert not host.file(f"{APP_ROOT}/deploy.lock").exists
    with client() as http:
        assert status_of(http, "/health/ready") == 200
