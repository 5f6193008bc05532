"""The deploy gate: scripts/record-results (what `make test` / `make lint` record per
commit), its manifest merge (scripts/build-artifact), roles/app/tasks/verify_artifact.yml,
roles/app/tasks/verify_promotion.yml and playbooks/preflight.yml — the task files run by the
real ansible-playbook against localhost (connection local)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "scripts" / "record-results"
PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))


def head() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def record(step: str, script: str, results: Path) -> subprocess.CompletedProcess[str]:
    """record-results STEP -- python -c SCRIPT (a stand-in command with known output)."""
    return subprocess.run([str(RECORD), step, "--", sys.executable, "-c", script],
                          env={**os.environ, "RESULTS_DIR": str(results)},
                          capture_output=True, text=True, timeout=60)


# --- scripts/record-results -------------------------------------------------------------------

def test_tests_step_keeps_the_exit_status_and_records_counts_and_coverage(
        tmp_path: Path) -> None:
    failing = record("tests", "print('TOTAL   100  10  20  2  87%');"
                              "print('==== 3 failed, 250 passed, 2 skipped in 9.1s ====');"
                              "raise SystemExit(1)", tmp_path)
    assert failing.returncode == 1  # `make test` still fails
    assert "250 passed" in failing.stdout  # the output passes through
    data = json.loads((tmp_path / f"{head()}.json").read_text())
    tests = data["steps"]["tests"]
    assert (tests["status"], tests["exitCode"]) == ("failed", 1)
    assert (tests["passed"], tests["failed"], tests["skipped"]) == (250, 3, 2)
    assert tests["coverage"] == 87.0
    assert data["summary"]["tests"] == "failed"

    passing = record("tests", "print('TOTAL  100 10 20 2 91.5%');"
                              "print('== 253 passed in 9.0s ==')", tmp_path)
    assert passing.returncode == 0
    summary = json.loads((tmp_path / f"{head()}.json").read_text())["summary"]
    assert (summary["tests"], summary["passed"], summary["failed"]) == ("passed", 253, 0)
    assert summary["coverage"] == 91.5
    assert summary["lint"] == "missing"  # lint has not run for this commit


def test_lint_passes_only_when_every_linter_passed_and_steps_merge(tmp_path: Path) -> None:
    for step in ("ruff", "mypy", "yamllint", "promtool", "promtool-tests"):
        assert record(step, "pass", tmp_path).returncode == 0
    assert json.loads((tmp_path / f"{head()}.json").read_text())["summary"]["lint"] == "missing"
    assert record("ansible-lint", "raise SystemExit(2)", tmp_path).returncode == 2
    data = json.loads((tmp_path / f"{head()}.json").read_text())
    assert data["summary"]["lint"] == "failed"
    assert record("ansible-lint", "pass", tmp_path).returncode == 0
    data = json.loads((tmp_path / f"{head()}.json").read_text())
    assert data["summary"]["lint"] == "passed"
    assert set(data["steps"]) == {"ruff", "mypy", "yamllint", "ansible-lint", "promtool",
                                  "promtool-tests"}


PIP_AUDIT_STANDIN = """
import json, sys
out = sys.argv[sys.argv.index('--output') + 1]
json.dump({'dependencies': %s, 'fixes': []}, open(out, 'w'))
"""


@pytest.mark.parametrize(("dependencies", "status"), [
    ([{"name": "sanic", "version": "25.3.0", "vulns": []}], "passed"),
    # pip-audit exits 0 when it cannot reach PyPI: a skipped pin is not an audited pin.
    ([{"name": "sanic", "version": "25.3.0", "vulns": []},
      {"name": "aerich", "skip_reason": "Dependency not found on PyPI"}], "incomplete"),
    ([{"name": "jinja2", "version": "3.1.2", "vulns": [{"id": "GHSA-h5c8-rqwp-cp95"}]}],
     "vulnerable"),
])
def test_pip_audit_step_reads_the_json_report(dependencies: list[dict[str, Any]], status: str,
                                              tmp_path: Path) -> None:
    result = subprocess.run(
        [str(RECORD), "pip-audit", "--", sys.executable, "-c",
         PIP_AUDIT_STANDIN % repr(dependencies)],
        env={**os.environ, "RESULTS_DIR": str(tmp_path)}, capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / f"{head()}.json").read_text())["summary"]
    assert summary["pipAudit"] == status
    if status == "vulnerable":
        assert summary["vulnerable"] == ["jinja2==3.1.2: GHSA-h5c8-rqwp-cp95"]


def test_manifest_gets_the_commits_summary(tmp_path: Path) -> None:
    record("tests", "print('TOTAL 1 0 0 0 88%'); print('== 5 passed in 1.0s ==')", tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"name": "assistantapp-0.1.0-x", "commit": "x"}))
    subprocess.run([str(RECORD), "manifest", str(manifest)], check=True, timeout=60,
                   env={**os.environ, "RESULTS_DIR": str(tmp_path)})
    checks = json.loads(manifest.read_text())["checks"]
    assert checks["tests"] == "passed" and checks["coverage"] == 88.0
    assert checks["commit"] == head()
    assert isinstance(checks["treeDirtyAtBuild"], bool)


# --- the task files, run by ansible-playbook --------------------------------------------------

def run_tasks(tmp_path: Path, task_file: str, extra_vars: dict[str, Any],
              show: str) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent(f"""\
        - name: Gate
          hosts: localhost
          gather_facts: false
          connection: local
          tasks:
            - name: Run the task file
              ansible.builtin.include_tasks: {ROOT / task_file}
            - name: Save the result
              ansible.builtin.copy:
                content: "{{{{ {show} | to_json }}}}"
                dest: {tmp_path / "result.json"}
                mode: "0600"
        """))
    (tmp_path / "vars.json").write_text(json.dumps(
        {"ansible_python_interpreter": sys.executable, **extra_vars}))
    return subprocess.run([PLAYBOOK, "-i", "localhost,", str(playbook),
                           "-e", f"@{tmp_path / 'vars.json'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1",
                               "ANSIBLE_STDOUT_CALLBACK": "default"})


def result_of(run: subprocess.CompletedProcess[str]) -> Any:
    return json.loads((Path(run.args[3]).parent / "result.json").read_text())


GOOD_CHECKS = {"tests": "passed", "passed": 430, "failed": 0, "coverage": 86.4,
               "lint": "passed", "pipAudit": "passed", "vulnerable": [], "dirty": False,
               "treeDirtyAtBuild": False}


def test_verify_artifact_accepts_clean_passing_results(tmp_path: Path) -> None:
    run = run_tasks(tmp_path, "roles/app/tasks/verify_artifact.yml",
                    {"app_manifest": {"name": "a", "commit": "0123456789ab",
                                      "checks": GOOD_CHECKS}}, "app_override_record")
    assert run.returncode == 0, run.stdout
    assert result_of(run) == {}
    assert run.stdout.count("✓ ") == 6 and "✗" not in run.stdout


def test_verify_artifact_refuses_low_coverage_dirty_or_missing_results(tmp_path: Path) -> None:
    checks = {**GOOD_CHECKS, "coverage": 79.9, "treeDirtyAtBuild": True,
              "pipAudit": "vulnerable", "vulnerable": ["jinja2==3.1.2: GHSA-x"]}
    run = run_tasks(tmp_path, "roles/app/tasks/verify_artifact.yml",
                    {"app_manifest": {"name": "a", "commit": "0123456789ab", "checks": checks}},
                    "app_override_record")
    assert run.returncode != 0
    assert "Refusing to deploy a" in run.stdout
    assert "✗ coverage at least 80.0 % — 79.9 %" in run.stdout
    assert "✗ results from a clean tree" in run.stdout
    assert ("✗ no known-vulnerable pins (pip-audit) — vulnerable: jinja2==3.1.2: GHSA-x"
            in run.stdout)
    assert "✓ tests passed" in run.stdout and "✓ lint passed" in run.stdout
    # No results at all (an artifact built before `make test`): refused too.
    run = run_tasks(tmp_path, "roles/app/tasks/verify_artifact.yml",
                    {"app_manifest": {"name": "a", "commit": "0123456789ab"}},
                    "app_override_record")
    assert run.returncode != 0 and "✗ results recorded for commit 0123456789ab" in run.stdout


def test_verify_artifact_override_deploys_and_records_the_reason(tmp_path: Path) -> None:
    checks = {**GOOD_CHECKS, "pipAudit": "incomplete"}
    run = run_tasks(tmp_path, "roles/app/tasks/verify_artifact.yml",
                    {"app_manifest": {"name": "a", "commit": "0123456789ab", "checks": checks},
                     "app_override_checks": "PyPI unreachable from the build host",
                     "app_deployer": "ops@controller"}, "app_override_record")
    assert run.returncode == 0, run.stdout
    override = result_of(run)
    assert override["reason"] == "PyPI unreachable from the build host"
    assert override["failed"] == ["no known-vulnerable pins (pip-audit)"]
    assert override["by"] == "ops@controller" and override["at"].endswith("Z")


def test_verify_promotion_needs_a_staging_deploy_of_the_commit(tmp_path: Path) -> None:
    log = tmp_path / "staging-releases.log"
    log.write_text("\n".join(json.dumps(e) for e in [
        {"event": "deploy", "release": "20261201T100000Z-aaaaaaaaaaaa", "commit": "aaaaaaaaaaaa"},
        {"event": "rollback", "release": "20261201T090000Z-bbbbbbbbbbbb",
         "commit": "bbbbbbbbbbbb"},
    ]) + "\n")
    common = {"app_env_name": "production", "app_promotion_source": str(log)}
    run = run_tasks(tmp_path, "roles/app/tasks/verify_promotion.yml",
                    {**common, "app_manifest": {"commit": "aaaaaaaaaaaa"}},
                    "app_promotion_record")
    assert run.returncode == 0, run.stdout
    assert result_of(run) == {} and "✓ commit aaaaaaaaaaaa deployed to staging first" in run.stdout
    # Only rolled back to on staging, never deployed there: refused.
    run = run_tasks(tmp_path, "roles/app/tasks/verify_promotion.yml",
                    {**common, "app_manifest": {"commit": "bbbbbbbbbbbb"}},
                    "app_promotion_record")
    assert run.returncode != 0
    assert "staging has no successful deploy of it" in run.stdout
    # Staging itself is not gated.
    run = run_tasks(tmp_path, "roles/app/tasks/verify_promotion.yml",
                    {"app_env_name": "staging", "app_manifest": {"commit": "cccccccccccc"}},
                    "app_promotion_record")
    assert run.returncode == 0, run.stdout


def test_verify_promotion_unreadable_staging_log_is_refused_unless_overridden(
        tmp_path: Path) -> None:
    closed = free_port()  # nothing listens: ssh cannot read the log
    common = {"app_env_name": "production", "app_promotion_source": "root@127.0.0.1",
              "app_promotion_ssh_args": ["-p", str(closed)],
              "app_manifest": {"commit": "aaaaaaaaaaaa"}}
    run = run_tasks(tmp_path, "roles/app/tasks/verify_promotion.yml", common,
                    "app_promotion_record")
    assert run.returncode != 0
    assert "cannot read staging release log from root@127.0.0.1" in run.stdout
    # ...and says why, in ssh's words.
    assert "Connection refused" in run.stdout, run.stdout
    run = run_tasks(tmp_path, "roles/app/tasks/verify_promotion.yml",
                    {**common, "app_override_checks": "staging down, hotfix INC-42"},
                    "app_promotion_record")
    assert run.returncode == 0, run.stdout
    override = result_of(run)
    assert override["reason"] == "staging down, hotfix INC-42"
    assert override["failed"] == ["deployed to staging first"]


def test_preflight_runs_against_the_local_inventory_and_prints_the_checklist(
        tmp_path: Path) -> None:
    """Issue 16: the implicit localhost play read the local inventory's SSH key path, built
    from inventory_dir, which localhost lacks. The local inventory as it is, except that its
    host points at a closed loopback port (no test host needed): the controller's items are
    judged, the host is reported unreachable, and the checklist still prints everything."""
    inventory = tmp_path / "inventories" / "local"
    shutil.copytree(ROOT / "inventories" / "local", inventory)
    hosts = inventory / "hosts.yml"
    original = hosts.read_text()
    assert "ansible_host: 10.213.0.100" in original
    hosts.write_text(original.replace(
        "ansible_host: 10.213.0.100",
        f"ansible_host: 127.0.0.1\n      ansible_port: {free_port()}"))
    results = tmp_path / "results"
    record("tests", "print('TOTAL 1 0 0 0 90%'); print('== 9 passed in 1.0s ==')", results)
    run = subprocess.run(
        [PLAYBOOK, "-i", str(hosts), "playbooks/preflight.yml"], cwd=ROOT, capture_output=True,
        text=True, timeout=300,
        env={**os.environ, "RESULTS_DIR": str(results), "ANSIBLE_NOCOLOR": "1"})
    output = run.stdout + run.stderr
    assert "inventory_dir" not in output
    assert "PLAY [Pre-deployment checklist]" in output
    assert "controller: ✓ tests passed — passed, 9 passed" in output
    assert "controller: ✓ coverage at least 80.0 % — 90.0 %" in output
    assert "controller: ✗ lint passed (ruff, mypy, yamllint, ansible-lint) — missing" in output
    assert "local1: ✗ connectivity: host unreachable over SSH" in output
    # The local inventory has no backup repository: nothing to check, said as such.
    assert "local1: \u2013 WAL archiving: no `backup` group in this inventory" in output
    assert run.returncode != 0
    assert "Pre-deployment checks failed" in output
