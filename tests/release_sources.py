"""What a release artifact is built from (`scripts/build-artifact --source DIR`), copied for
the tests that build artifacts from a copy of the app, changed or not."""

from __future__ import annotations

import shutil
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
