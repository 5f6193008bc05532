"""scripts/local-keys.sh, which `make deploy-local` (scripts/local-deploy) uses to take the
operator's own keys from the environment or a local.env file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET", "OPENAI_API_KEY", "OPENAI_BASE_URL",
        "OPENAI_MODEL"]


def load(tmp_path: Path, local_env: str | None, environ: dict[str, str]):
    """Sources the script in bash, loads tmp_path/local.env; returns (rc, keys, stderr)."""
    if local_env is not None:
        (tmp_path / "local.env").write_text(local_env)
    printed = " ".join(f'"${key}"' for key in KEYS)
    script = (f". {ROOT / 'scripts' / 'local-keys.sh'}; set -u; load_local_keys local.env; "
              f"rc=$?; printf '%s\\n' \"$rc\" {printed}")
    env = {name: value for name, value in os.environ.items() if name not in KEYS}
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env={**env, **environ},
        capture_output=True, text=True, check=True, timeout=30)
    rc, *values = result.stdout.split("\n")[: 1 + len(KEYS)]
    return int(rc), dict(zip(KEYS, values, strict=True)), result.stderr


def test_keys_come_from_local_env_with_exports_quotes_and_comments(tmp_path):
    rc, keys, _ = load(tmp_path, (
        "# my keys\n"
        "export GOOGLE_CLIENT_ID=1234-abc.apps.googleusercontent.com\n"
        'GOOGLE_CLIENT_SECRET="GOCSPX-with spaces"\n'
        "OPENAI_API_KEY='sk-local'\n"
        "UNRELATED=ignored\n"
        "OPENAI_MODEL=gpt-test"  # no newline at the end
    ), {})
    assert rc == 0
    assert keys == {
        "GOOGLE_CLIENT_ID": "1234-abc.apps.googleusercontent.com",
        "GOOGLE_CLIENT_SECRET": "GOCSPX-with spaces",
        "OPENAI_API_KEY": "sk-local",
        "OPENAI_BASE_URL": "",
        "OPENAI_MODEL": "gpt-test",
    }


def test_the_environment_wins_over_local_env(tmp_path):
    rc, keys, _ = load(tmp_path, "OPENAI_API_KEY=sk-from-file\nOPENAI_MODEL=file-model\n",
                       {"OPENAI_API_KEY": "sk-from-env"})
    assert rc == 0
    assert keys["OPENAI_API_KEY"] == "sk-from-env"
    assert keys["OPENAI_MODEL"] == "file-model"


def test_without_local_env_every_key_is_empty(tmp_path):
    rc, keys, _ = load(tmp_path, None, {})
    assert rc == 0
    assert set(keys.values()) == {""}


def test_half_a_google_client_is_refused(tmp_path):
    rc, _, stderr = load(tmp_path, "GOOGLE_CLIENT_ID=only-the-id\n", {})
    assert rc == 2
    assert "set both GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET, or neither" in stderr
