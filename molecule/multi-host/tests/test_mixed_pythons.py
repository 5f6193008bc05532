"""A mixed fleet takes ONE artifact: mh-app1 runs Debian 13 (Python 3.13), mh-app2 Debian 12
(3.11). The deploy built one wheelhouse for both Pythons and each host's release venv runs its
own python3 with the compiled wheels for that version."""

from __future__ import annotations

import json

import pytest
from multihost_scenario import APP_HOSTS, APP_ROOT, PLATFORMS, remote

testinfra_hosts = [APP_HOSTS[0]]

PYTHON_OF = {"bookworm": "3.11", "trixie": "3.13"}
# Compiled dependencies: each module's extension file names the CPython it was built for.
PROBE = ("import sys, asyncpg.protocol.protocol as p, uvloop.loop as u,"
         " pydantic_core._pydantic_core as c; print('%d.%d' % sys.version_info[:2]);"
         " print(p.__file__); print(u.__file__); print(c.__file__)")


def release_manifest(name: str) -> dict:
    return json.loads(remote(name).file(f"{APP_ROOT}/current/.complete").content_string)


def test_the_fleet_is_mixed() -> None:
    assert {PLATFORMS[name]["distro"] for name in APP_HOSTS} == {"bookworm", "trixie"}


def test_every_app_host_runs_the_same_artifact_built_for_both_pythons() -> None:
    manifests = [release_manifest(name) for name in APP_HOSTS]
    assert manifests[0]["name"] == manifests[1]["name"]
    assert manifests[0]["source_digest"] == manifests[1]["source_digest"]
    assert manifests[0]["target_pythons"] == ["3.11", "3.13"]
    assert manifests[0]["name"].endswith("-py3.11+3.13")


@pytest.mark.parametrize("name", APP_HOSTS)
def test_the_release_venv_runs_the_hosts_python_with_its_own_compiled_wheels(name: str) -> None:
    host = remote(name)
    python = PYTHON_OF[PLATFORMS[name]["distro"]]
    assert host.check_output("python3 -c %s", "import sys; print('%d.%d' % sys.version_info[:2])"
                             ) == python
    # As the service runs it (the app user); the extension modules load, for this Python.
    result = host.run("runuser -u assistantapp -- %s/current/venv/bin/python -c %s",
                      APP_ROOT, PROBE)
    assert result.rc == 0, result.stderr
    version, *extensions = result.stdout.split()
    assert version == python
    tag = f"cpython-{python.replace('.', '')}-x86_64-linux-gnu.so"
    assert all(path.endswith(tag) for path in extensions), extensions
