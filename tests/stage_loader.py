"""Stage scripts (`stages/<name>.py`) loaded as modules, for tests that call their functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

STAGES = Path(__file__).resolve().parent.parent / "stages"


def load_stage(name: str, monkeypatch=None):
    """`stages/<name>.py` as a fresh module. With `monkeypatch`, `stages/` is on `sys.path` for the test, so
    the script's own `from _common import ...` resolves."""
    if monkeypatch is not None:
        monkeypatch.syspath_prepend(str(STAGES))
    spec = importlib.util.spec_from_file_location(f"stage_{name}", STAGES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
