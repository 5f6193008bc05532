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
