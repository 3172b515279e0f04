"""What every part of the params schema shares: the strict base model and the distinct-list check.

A module of its own so that `params.py` and the families' schemas (`params_tsv.py`,
`params_c2m3.py`, `params_merge3.py`) import it without a cycle.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A params section: unknown keys are errors (a misspelled `dvc exp run -S` key is refused), values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def distinct(values: list) -> list:
    """`values` unchanged; a `ValueError` naming the values listed more than once."""
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        raise ValueError(f"listed more than once: {repeated}")
    return values
