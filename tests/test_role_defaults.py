"""Role defaults that compute values from the inventory, rendered by the real ansible-playbook
(Ansible's templating differs from plain Jinja: a regex back-reference that works in a Jinja
shell rendered literally here once, and every deploy failed check-config)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))

INVENTORY = """
all:
  hosts:
    lb4: {ansible_host: 10.0.0.5, private_address: 10.1.0.5, ansible_connection: local}
    lb6: {ansible_host: "2001:db8::7", ansible_connection: local}
    lbnamed: {ansible_host: lb.example.com, ansible_connection: local}
    app1: {ansible_host: 10.0.0.9, ansible_connection: local,
           ansible_python_interpreter: "{{ ansible_playbook_python }}"}
  children:
    lb:
      hosts: {lb4: {}, lb6: {}, lbnamed: {}}
"""

PLAY = """
- hosts: app1
  gather_facts: false
  vars_files: [{defaults}]
  tasks:
    - ansible.builtin.copy:
        content: "{{{{ app_trusted_proxies | to_json }}}}"
        dest: {out}
        mode: "0600"
"""


def test_trusted_proxies_are_every_lb_address_with_its_own_prefix(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text(INVENTORY)
    out = tmp_path / "proxies.json"
    (tmp_path / "play.yml").write_text(PLAY.format(
        defaults=ROOT / "roles/app/defaults/main.yml", out=out))
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # IPv4 /32, IPv6 /128, host names skipped (TRUSTED_PROXIES takes addresses only).
    assert json.loads(out.read_text()) == [
        "127.0.0.1/32", "::1/128", "10.1.0.5/32", "10.0.0.5/32", "2001:db8::7/128"]


ENV_FILE_PLAY = """
- hosts: local1
  gather_facts: false
  vars_files: [{role_vars}]
  tasks:
    - ansible.builtin.template:
        src: {template}
        dest: {out}
        mode: "0600"
"""
OPERATOR_KEYS = {
    "GOOGLE_CLIENT_ID": "1234567890-operator.apps.googleusercontent.com",
    "GOOGLE_CLIENT_SECRET": "GOCSPX-operator-secret-0123456789",
    "OPENAI_API_KEY": "sk-operator-0123456789",
    "OPENAI_BASE_URL": "http://127.0.0.1:11434/v1",
    "OPENAI_MODEL": "llama3.2",
}


def render_local_env_file(tmp_path: Path, keys: dict[str, str]) -> dict[str, str]:
    """The app's env file as `make deploy-local` renders it (the real local inventory, the
    app role's defaults, vars and template), with `keys` in the environment."""
    import os
    import shutil

    from app.config import read_env_file

    inventory = tmp_path / "local"
    shutil.copytree(ROOT / "inventories/local", inventory,
                    ignore=shutil.ignore_patterns(".secrets", "pki"))
    # Role defaults below the inventory (loaded first in group_vars/all), role vars above it
    # (vars_files), as in a real run.
    shutil.copy(ROOT / "roles/app/defaults/main.yml",
                inventory / "group_vars/all/00-app-role-defaults.yml")
    out = tmp_path / "app.env"
    (tmp_path / "play.yml").write_text(ENV_FILE_PLAY.format(
        role_vars=ROOT / "roles/app/vars/main.yml",
        template=ROOT / "roles/app/templates/opt/assistantapp/releases/app.env.j2", out=out))
    env = {k: v for k, v in os.environ.items() if k not in OPERATOR_KEYS}
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(inventory / "hosts.yml"), str(tmp_path / "play.yml"),
         "-e", "ansible_connection=local",
         "-e", '{"ansible_python_interpreter": "' + sys.executable + '"}'],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**env, **keys})
    assert result.returncode == 0, result.stdout + result.stderr
    return read_env_file(out)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app", "check-config", "--env-file", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=path.parent,
                          env={"PATH": "/usr/bin:/bin"})


def test_a_local_deploy_renders_the_operators_keys_into_the_env_file(tmp_path: Path) -> None:
    env = render_local_env_file(tmp_path, OPERATOR_KEYS)
    for name, value in OPERATOR_KEYS.items():
        assert env[name] == value, name
    checked = check_config(tmp_path / "app.env")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_local_deploy_without_keys_turns_those_features_off(tmp_path: Path) -> None:
    from app.config import load_settings

    env = render_local_env_file(tmp_path, {})
    assert env["GOOGLE_CLIENT_ID"] == env["GOOGLE_CLIENT_SECRET"] == env["OPENAI_API_KEY"] == ""
    assert "OPENAI_BASE_URL" not in env and "OPENAI_MODEL" not in env
    # The staging app starts with them off, and says so.
    checked = check_config(tmp_path / "app.env")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    settings = load_settings({}, env_file=tmp_path / "app.env")
    assert settings.app_env == "staging"
    assert not settings.features()["signIn"]["enabled"]
    assert not settings.features()["assistant"]["enabled"]
