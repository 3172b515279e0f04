"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent

# `make test` (and so CI) runs the property tests on a fixed sequence of examples
# (HYPOTHESIS_PROFILE=ci): a pass or a failure repeats on every run. A plain `pytest` draws new
# examples each run, to keep looking for counterexamples; pin one that turns up with `@example`.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="module")
def default() -> dict:
    """`params.yaml` as loaded YAML, for a test to edit a copy of."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())
