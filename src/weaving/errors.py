"""Errors raised by `weaving`.

Every error is a `WeavingError`, itself a `ValueError`, so callers may catch either.
Messages name the culprit: the source (file path), the key, the parameter, and list the
valid choices where there is a finite set of them.
"""

from __future__ import annotations


class WeavingError(ValueError):
    """Base class of every error that `weaving` raises on purpose."""


class InputError(WeavingError):
    """Bad input data: missing or extra keys, shape or dtype mismatch, NaN/inf values."""


class ParamError(WeavingError):
    """Bad request: unknown method, pooling or hyper-parameter, value out of range."""


def choices(valid: object) -> str:
    """Render a collection of valid choices for an error message."""
    names = sorted(str(v) for v in valid)  # type: ignore[attr-defined]
    return ", ".join(names) if names else "(none)"
