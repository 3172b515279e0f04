"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def default() -> dict:
    """`params.yaml` as loaded YAML, for a test to edit a copy of."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())
