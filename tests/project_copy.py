"""A copy of the project's source files in a fresh folder, for tests that run DVC on it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Tests, benchmarks and the committed run of the embedded profile (its lock and outputs) stay out.
RUN_OUTPUTS = ("tests/", "benchmarks/", "dvc.lock", "data/", "models/", "metrics/", "reports/")


def copy_project(dest: Path, profile: str) -> Path:
    """Copy the tracked and untracked-but-not-ignored files into `dest`, with `profiles/<profile>.yaml` as params.yaml."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(RUN_OUTPUTS):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    shutil.copy2(ROOT / "profiles" / f"{profile}.yaml", dest / "params.yaml")
    return dest
