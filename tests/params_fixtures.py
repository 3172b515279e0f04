"""A writer of edited params files, shared by the params tests (the `default` params fixture is in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import yaml


def write(tmp_path: Path, params: dict) -> Path:
    """`params` written to `tmp_path/params.yaml`."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path
