"""What a release artifact is built from (`scripts/build-artifact --source DIR`), copied for
the tests that build artifacts from a copy of the app, changed or not; and the builds the
Molecule scenarios deploy (release, fleet, multi-host)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
RELEASE_ITEMS = ("app", "pyproject.toml", "requirements.lock", "README.md")


def copy_release_sources(dest: Path) -> Path:
    """Copies the project's release sources into the new directory `dest` (no git checkout:
    an artifact built from it is named nogit.<digest>)."""
    dest.mkdir(parents=True)
    for item in RELEASE_ITEMS:
        if (PROJECT_DIR / item).is_dir():
            shutil.copytree(PROJECT_DIR / item, dest / item,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (PROJECT_DIR / item).exists():
            shutil.copy(PROJECT_DIR / item, dest / item)
    return dest


Patch = Callable[[Path], None]


def build_artifact(workdir: Path, name: str, *patches: Patch,
                   pythons: tuple[str, ...] = ()) -> str:
    """An artifact (its path) built from a copy of the project's app sources in
    workdir/sources/<name>, changed by each patch(src), into workdir/artifacts, with a
    wheelhouse for each of `pythons` (build-artifact's default: 3.11 only)."""
    src = workdir / "sources" / name
    shutil.rmtree(src, ignore_errors=True)
    copy_release_sources(src)
    for patch in patches:
        patch(src)
    result = subprocess.run([str(PROJECT_DIR / "scripts/build-artifact"),
                             "--source", str(src), "--output", str(workdir / "artifacts"),
                             *(arg for python in pythons for arg in ("--python-version", python))],
                            capture_output=True, text=True, check=True, timeout=600)
    return result.stdout.strip().splitlines()[-1]


def migration(number: int, name: str, upgrade_sql: str, downgrade_sql: str,
              stem: str = "") -> Patch:
    """A patch adding one aerich migration (its model state copied from a shipped one), in
    the file <stem>.py (default <number>_2099123100<number>_<name>: after the shipped ones)."""
    def patch(src: Path) -> None:
        migrations = src / "app/db/migrations/models"
        template = sorted(migrations.glob("1_*.py"))[0].read_text()
        state = template[template.index("MODELS_STATE"):]
        (migrations / f"{stem or f'{number}_2099123100{number:04d}_{name}'}.py").write_text(
            "from tortoise import BaseDBAsyncClient\n\nRUN_IN_TRANSACTION = True\n\n\n"
            "async def upgrade(db: BaseDBAsyncClient) -> str:\n"
            f'    return """{upgrade_sql}"""\n\n\n'
            "async def downgrade(db: BaseDBAsyncClient) -> str:\n"
            f'    return """{downgrade_sql}"""\n\n\n' + state)
    return patch
