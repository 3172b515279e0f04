"""Search spaces of Weight Weaving: the scaling factor lam's values, and spaces over hyper-parameters.

`parse_search_space` parses params and CLI strings into lam values; `parse_axis` one axis of a
space over a method's hyper-parameters, and `WeaveSpace` is such a space once validated
(`weaving.request.validate_request` builds it; docs/merging.md, "Search spaces over
hyper-parameters", gives the semantics and the member order).

Accepted forms of a lam `spec` (`parse_search_space`):
- a range `[start, stop, step]` (a list or tuple of exactly three numbers), the mapping
  `{"start": a, "stop": b, "step": c}`, or the string `"a:b:c"`: both ends included, values
  `round(start + i * step, 10)` for `i = 0..n`, `n = round((stop - start) / step)`;
  `stop - start` must be a whole number of steps (within 1e-9 relative), so that `stop` is
  one of the values;
- an explicit list: a list or tuple of any other length, the mapping `{"values": [...]}`
  (for an explicit list of three values), the string `"a,b,c"`, or a single number
  (number or string).

Errors (`ParamError`): empty, non-numeric, NaN or inf, `step <= 0`, `stop < start`,
`stop` not reached by whole steps.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from weaving.errors import ParamError

SearchSpaceSpec = str | float | int | Sequence[float] | Mapping[str, object]


def _number(value: object, what: str, spec: object) -> float:
    if isinstance(value, bool):
        raise ParamError(f"search space {spec!r}: {what} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ParamError(f"search space {spec!r}: {what} must be a number, got {value!r}") from None
    if not isinstance(value, numbers.Real):
        raise ParamError(f"search space {spec!r}: {what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ParamError(f"search space {spec!r}: {what} must be finite, got {value!r}")
    return value


def lambda_range(start: float, stop: float, step: float, *, spec: object = None) -> list[float]:
    """`[start, start + step, ..., stop]`, both ends included, rounded to 10 decimals."""
    spec = [start, stop, step] if spec is None else spec
    start, stop, step = (_number(v, name, spec) for v, name in ((start, "start"), (stop, "stop"), (step, "step")))
    if step <= 0:
        raise ParamError(f"search space {spec!r}: step must be > 0, got {step!r}")
    if stop < start:
        raise ParamError(f"search space {spec!r}: stop ({stop!r}) must be >= start ({start!r})")
    steps = round((stop - start) / step)
    if abs(start + steps * step - stop) > 1e-9 * max(1.0, abs(stop), abs(start)):
        raise ParamError(
            f"search space {spec!r}: stop - start ({stop - start!r}) is not a whole number of steps of {step!r}; "
            "both ends are included, so stop must be start + n * step"
        )
    return [round(start + i * step, 10) for i in range(steps + 1)]


def _explicit(values: Sequence[object], spec: object) -> list[float]:
    if len(values) == 0:
        raise ParamError(f"search space {spec!r} is empty")
    return [_number(v, f"value {i}", spec) for i, v in enumerate(values)]


def parse_search_space(spec: SearchSpaceSpec) -> list[float]:
    """The lam values of `spec` (see the module docstring for the accepted forms)."""
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            raise ParamError("search space '' is empty")
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ParamError(f"search space {spec!r}: a range is 'start:stop:step' (three numbers)")
            return lambda_range(*parts, spec=spec)  # type: ignore[arg-type]
        return _explicit([p for p in text.split(",")], spec)
    if isinstance(spec, Mapping):
        if set(spec) == {"start", "stop", "step"}:
            return lambda_range(spec["start"], spec["stop"], spec["step"], spec=spec)  # type: ignore[arg-type]
        if set(spec) == {"values"} and isinstance(spec["values"], Sequence) and not isinstance(spec["values"], str):
            return _explicit(spec["values"], spec)
        raise ParamError(f"search space {spec!r}: a mapping is {{start, stop, step}} or {{values: [...]}}")
    if isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        return [_number(spec, "value", spec)]
    if isinstance(spec, Sequence):
        if len(spec) == 3:
            return lambda_range(*spec, spec=spec)  # type: ignore[arg-type]
        return _explicit(spec, spec)
    raise ParamError(f"search space {spec!r}: expected [start, stop, step], a list, 'a:b:c' or 'a,b,c'")


# ---------------------------------------------------------------------------- spaces over hyper-parameters

HParamValue = float | int | bool


def parse_axis(spec: object, *, boolean: bool = False) -> list[object]:
    """The raw values of one axis of a search space over hyper-parameters (unchecked).

    A string takes the command line's syntax (``'a:b:c'`` or ``'a,b,c'``; for a true/false
    hyper-parameter a comma list of ``true`` and ``false``); a mapping ``{start, stop, step}``
    or ``{values: [...]}`` as in `parse_search_space`; any other sequence is a list of values,
    taken literally (a list of three numbers is three values, not a range); a single value is
    a one-value axis. The caller checks each value against the hyper-parameter's range.
    """
    if isinstance(spec, str):
        if boolean:
            words = [w.strip().lower() for w in spec.split(",")] if spec.strip() else []
            if not words:
                raise ParamError("is empty")
            for word in words:
                if word not in ("true", "false"):
                    raise ParamError(f"{word!r} is not true or false")
            return [w == "true" for w in words]
        return list(parse_search_space(spec))
    if isinstance(spec, Mapping):
        return list(parse_search_space(spec))
    if isinstance(spec, (bytes, bytearray)):
        raise ParamError(f"expected values, got {spec!r}")
    if isinstance(spec, Sequence):
        if len(spec) == 0:
            raise ParamError("is empty")
        return list(spec)
    return [spec]


@dataclass(frozen=True)
class WeaveSpace:
    """A validated search space of Weight Weaving over lam and the method's hyper-parameters.

    `axes`: the swept hyper-parameters other than lam (the method's declaration order);
    `combinations`: their distinct value tuples, in order of first appearance among the points;
    `points`: the members `lam * f(taus, 1, **combination)`, in member order, as
    `(combination index, lam)`. `record`: the space as given, canonical and JSON-ready (a grid
    `{axis: [values]}` with `lam` last, or `{"points": [{...}, ...]}`), for output metadata.
    A space over lam only has no axes and one empty combination.
    """

    axes: tuple[str, ...]
    combinations: tuple[tuple[HParamValue, ...], ...]
    points: tuple[tuple[int, float], ...]
    record: Mapping[str, object] = field(default_factory=dict, compare=False)

    @classmethod
    def over_lam(cls, lambdas: Sequence[float]) -> WeaveSpace:
        return cls((), ((),), tuple((0, float(lam)) for lam in lambdas), {"lam": [float(v) for v in lambdas]})

    @property
    def lambdas(self) -> tuple[float, ...]:
        """The lam of every member, in member order."""
        return tuple(lam for _, lam in self.points)

    def hparams(self, combination: int) -> dict[str, HParamValue]:
        """The swept hyper-parameters' values of combination `combination`."""
        return dict(zip(self.axes, self.combinations[combination], strict=True))

    def groups(self) -> list[tuple[int, tuple[int, ...], tuple[float, ...]]]:
        """Per combination: `(index, member positions among the points, their lams)`."""
        positions: list[list[int]] = [[] for _ in self.combinations]
        for position, (combination, _) in enumerate(self.points):
            positions[combination].append(position)
        return [(c, tuple(p), tuple(self.points[i][1] for i in p)) for c, p in enumerate(positions)]
