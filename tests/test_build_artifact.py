"""Artifacts for several Pythons (Debian 12 app hosts run CPython 3.11, Debian 13 ones 3.13).

scripts/build-artifact: one wheelhouse with the compiled wheels of each, the Pythons in the
manifest and in the name, so the reuse of an artifact "already built for this commit" never
hands a 3.11-only artifact to a 3.13 host. Real builds (pip download from the configured index)
of a copy of the app sources, as molecule/release/tests build() does.

The app role, run by the real ansible-playbook on local hosts: roles/app/tasks/build.yml asks
for the Python of every app host of the play, and prepare.yml refuses an artifact without
wheels for the host's python3 before it unpacks anything."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.release_sources import copy_release_sources

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build-artifact"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
# Compiled dependencies of requirements.lock (one wheel per CPython version, no abi3).
COMPILED = ("asyncpg", "uvloop", "pydantic_core")


def pinned(name: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        pin = line.split("#")[0].strip()
        if pin.lower().replace("-", "_").startswith(name.lower() + "=="):
            return pin.split("==", 1)[1]
    raise AssertionError(f"{name} is not pinned in requirements.lock")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what makes a release (not a git checkout: the commit is nogit.<digest>)."""
    return copy_release_sources(tmp_path_factory.mktemp("build-artifact") / "src")


def build(source: Path, *pythons: str) -> tuple[Path, str]:
    """(artifact path, stderr) of scripts/build-artifact --python-version P ... ."""
    args = [arg for python in pythons for arg in ("--python-version", python)]
    result = subprocess.run([str(BUILD), "--source", str(source),
                             "--output", str(source.parent / "artifacts"), *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1]), result.stderr


def contents(artifact: Path) -> tuple[dict, list[str]]:
    """(manifest, wheel file names) of an artifact."""
    with tarfile.open(artifact) as tar:
        names = tar.getnames()
        manifest_file = tar.extractfile(next(n for n in names if n.endswith("/manifest.json")))
        assert manifest_file is not None
        manifest = json.load(manifest_file)
    wheels = [Path(n).name for n in names if "/wheelhouse/" in n and n.endswith(".whl")]
    return manifest, wheels


@pytest.fixture(scope="module")
def multi(source: Path) -> tuple[Path, str]:
    return build(source, "3.11", "3.13")


def test_one_wheelhouse_holds_the_wheels_of_both_pythons(multi: tuple[Path, str]) -> None:
    artifact, _ = multi
    manifest, wheels = contents(artifact)
    assert manifest["target_pythons"] == ["3.11", "3.13"]
    assert manifest["target_python"] == "3.11"  # the first, for readers of the old field
    assert manifest["name"] == artifact.name.removesuffix(".tar.gz")
    assert re.fullmatch(r"assistantapp-[0-9.]+-nogit\.[0-9a-f]{8}-py3\.11\+3\.13\.tar\.gz",
                        artifact.name), artifact.name
    for name in COMPILED:
        prefix = f"{name}-{pinned(name)}-"
        for tag in ("cp311-cp311", "cp313-cp313"):
            assert any(w.startswith(prefix + tag + "-") and "x86_64" in w for w in wheels), (
                f"no {tag} wheel of {name} in {sorted(wheels)}")
    # A pure-Python dependency is there once, shared by both Pythons.
    assert len([w for w in wheels if w.startswith(f"sanic-{pinned('sanic')}-")]) == 1
    assert len([w for w in wheels if w.startswith("assistantapp-")]) == 1


def test_the_same_set_of_pythons_in_any_order_is_the_same_artifact(
        source: Path, multi: tuple[Path, str]) -> None:
    artifact, _ = multi
    again, stderr = build(source, "3.13", "3.11", "3.13")
    assert again == artifact
    assert "already built" in stderr


def test_the_default_build_is_3_11_only_under_the_plain_name(
        source: Path, multi: tuple[Path, str]) -> None:
    # Built after the 3.11+3.13 one from the same tree: not reused, since the name differs.
    artifact, stderr = build(source)
    assert "already built" not in stderr
    assert re.fullmatch(r"assistantapp-[0-9.]+-nogit\.[0-9a-f]{8}\.tar\.gz", artifact.name), (
        artifact.name)
    assert artifact.name.removesuffix(".tar.gz") + "-py3.11+3.13.tar.gz" == multi[0].name
    manifest, wheels = contents(artifact)
    assert (manifest["target_python"], manifest["target_pythons"]) == ("3.11", ["3.11"])
    assert any(w.startswith(f"asyncpg-{pinned('asyncpg')}-cp311-cp311-") for w in wheels)
    assert not any("cp313" in w for w in wheels)


def test_a_python_version_that_is_not_major_minor_is_refused(tmp_path: Path) -> None:
    result = subprocess.run([str(BUILD), "--output", str(tmp_path), "--python-version", "313"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "'313' is not 3.X" in result.stderr
    assert not list(tmp_path.glob("*.tar.gz"))


# --- the app role -----------------------------------------------------------------------------

# Sets the python facts (ansible_facts.python) a real fact gathering on that Python would.
FAKE_PYTHON_MODULE = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={"version": {"type": "str", "required": True}})
major, minor = (int(part) for part in module.params["version"].split("."))
module.exit_json(ansible_facts={"python": {
    "version": {"major": major, "minor": minor, "micro": 0, "releaselevel": "final",
                "serial": 0},
    "version_info": [major, minor, 0, "final", 0], "type": "cpython"}})
"""

# Records its arguments and prints an artifact's path, as scripts/build-artifact does.
FAKE_BUILD = """#!/bin/sh
printf '%s\\n' "$@" > "$(dirname "$0")/argv"
echo "$(dirname "$0")/artifact.tar.gz"
"""

BUILD_PLAY = """
- hosts: all
  gather_facts: false
  vars:
    app_artifact: ""
    app_source_dir: {src}
    app_artifact_dir: {src}/out
  tasks:
    - fake_python:
        version: "{{{{ python }}}}"
      when: python is defined
    - ansible.builtin.include_tasks: {tasks}/build.yml
"""


def artifact_with(path: Path, manifest: dict) -> Path:
    data = json.dumps(manifest).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("assistantapp-test/manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def playbook(tmp_path: Path, hosts: dict[str, dict], play: str,
             *extra: str) -> subprocess.CompletedProcess[str]:
    inventory = {"all": {"hosts": {
        name: {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
               **host_vars} for name, host_vars in hosts.items()}}}
    (tmp_path / "hosts.yml").write_text(json.dumps(inventory))
    (tmp_path / "play.yml").write_text(play)
    (tmp_path / "library").mkdir(exist_ok=True)
    (tmp_path / "library" / "fake_python.py").write_text(FAKE_PYTHON_MODULE)
    return subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml"), *extra],
        capture_output=True, text=True, timeout=180, cwd=tmp_path)


@pytest.mark.parametrize(("hosts", "pythons"), [
    # One artifact for a mixed fleet, each Python once; a host without facts counts as 3.11.
    ({"app1": {"python": "3.13"}, "app2": {"python": "3.13"}, "app3": {}}, ["3.11", "3.13"]),
    ({"app1": {"python": "3.13"}}, ["3.13"]),
])
def test_the_deploy_builds_for_the_python_of_every_app_host(
        tmp_path: Path, hosts: dict[str, dict], pythons: list[str]) -> None:
    src = tmp_path / "src"
    (src / "scripts").mkdir(parents=True)
    (src / "scripts" / "build-artifact").write_text(FAKE_BUILD)
    (src / "scripts" / "build-artifact").chmod(0o755)
    artifact_with(src / "scripts" / "artifact.tar.gz", {"name": "assistantapp-test"})
    result = playbook(tmp_path, hosts, BUILD_PLAY.format(src=src, tasks=ROOT / "roles/app/tasks"))
    assert result.returncode == 0, result.stdout + result.stderr
    argv = (src / "scripts" / "argv").read_text().split()
    assert argv == ["--source", str(src), "--output", str(src / "out"),
                    *[arg for python in pythons for arg in ("--python-version", python)]]


PREPARE_PLAY = """
- hosts: all
  gather_facts: true
  gather_subset: [min, mounts]
  vars:
    app_root: {root}
    app_release_id: 20260101T000000Z-test
    app_artifact_path: {artifact}
    app_manifest: {manifest}
  tasks:
    - ansible.builtin.include_tasks: {tasks}/prepare.yml
"""


@pytest.mark.parametrize("manifest", [
    {"target_python": "3.11", "target_pythons": ["3.1", "2.7"]},
    {"target_python": "2.7"},  # an artifact of before target_pythons
])
def test_a_host_whose_python_the_artifact_lacks_stops_before_unpacking(
        tmp_path: Path, manifest: dict) -> None:
    host_python = subprocess.run(
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True).stdout.strip()
    root = tmp_path / "opt"
    (root / "releases").mkdir(parents=True)
    (root / "artifacts").mkdir()
    artifact = artifact_with(tmp_path / "assistantapp-0.1.0-test.tar.gz", manifest)
    result = playbook(tmp_path, {"app1": {}}, PREPARE_PLAY.format(
        root=root, artifact=artifact, manifest=json.dumps(manifest),
        tasks=ROOT / "roles/app/tasks"))
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, out
    wanted = manifest.get("target_pythons", [manifest["target_python"]])
    assert (f"app1 runs Python {host_python} (python3), but the artifact "
            f"assistantapp-0.1.0-test.tar.gz has wheels for Python {', '.join(wanted)} only."
            ) in out
    assert "A deploy without -e app_artifact builds for the Python of every app host" in out
    assert (f"scripts/build-artifact --python-version {host_python} "
            + " ".join(f"--python-version {v}" for v in wanted)) in out
    # Nothing was unpacked or uploaded.
    assert list((root / "releases").iterdir()) == []
    assert list((root / "artifacts").iterdir()) == []
