"""One merge or weave request, validated once, for the library API and the command line.

`validate_request` checks everything that needs no data (method, hyper-parameters, seeds,
lam or the search space, pooling, pool_over) and returns a `MergeRequest`; the streaming core
(`weaving.streaming.stream_request`) takes only validated requests. A bad request is a
`ParamError` naming the culprit as the caller knows it: the library's argument names
(`LIBRARY`, e.g. ``lam``) or the command line's flags (`weaving.cli.CLI_WORDING`, e.g.
``--lam``), a `Wording`.

Seeds: `seed` is the pooling seed and the seed of a method that draws (DARE) unless the method
seed is given on its own, as `method_seed` (library) or as a ``seed`` hyper-parameter (the
command line's ``--set seed=N``, which a method without a seed refuses as unknown).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from weaving.errors import ParamError, choices
from weaving.methods import METHODS
from weaving.methods.base import MergeMethod
from weaving.poolings import POOLINGS, Pooling, check_pool_over, get_pooling


def _no_method_hint(method: str) -> str | None:
    return None


def _no_hparam_hint(method: str, name: str) -> str | None:
    return None


@dataclass(frozen=True)
class Wording:
    """How errors name the request's fields, and hints for names known from elsewhere.

    `names` maps a field (``lam``, ``lambdas``, ``pooling``, ``seed``, ``method_seed``,
    ``hparams``) to what the caller wrote (e.g. ``--lam``); unlisted fields keep their name.
    `not_finite` is the message for a non-finite number (``{name}``, ``{value}``).
    `method_hint(method)` and `hparam_hint(method, name)` may explain an unknown name (the
    CLI's mergekit equivalents).
    """

    names: Mapping[str, str] = field(default_factory=dict)
    not_finite: str = "{name} must be a finite number, got {value!r}"
    method_hint: Callable[[str], str | None] = _no_method_hint
    hparam_hint: Callable[[str, str], str | None] = _no_hparam_hint

    def name(self, field_name: str) -> str:
        return self.names.get(field_name, field_name)

    def finite(self, value: object, field_name: str) -> float:
        """`value` as a float; `ParamError` unless it is a finite real number."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise ParamError(self.not_finite.format(name=field_name, value=value))
        return float(value)


LIBRARY = Wording()
"""The library API's wording: errors name the keyword arguments (``lam``, ``lambdas``, ...)."""


@dataclass(frozen=True)
class WeaveSpec:
    """What a weave adds to a merge: the search space, the pooling, what it pools over."""

    lambdas: tuple[float, ...]
    pooling: Pooling
    pool_over: str = "all"
    materialize: bool = False  # Algorithm 1 as written (every member built, then pooled)


@dataclass(frozen=True)
class MergeRequest:
    """A validated request: a merge at `lam`, or a weave (`weave` set); build it with `validate_request`.

    `method` None: the merged task vector at lam 1 is given (`weave_from_merged`).
    `hparams` are the method's, defaults filled in (the method's seed included).
    """

    method: MergeMethod | None
    hparams: Mapping[str, float | int]
    seed: int = 0
    lam: float | None = None
    weave: WeaveSpec | None = None

    def __post_init__(self) -> None:
        if (self.lam is None) == (self.weave is None):
            raise ValueError("a MergeRequest is a merge (lam) or a weave (weave), exactly one")

    @property
    def label(self) -> str:
        return self.method.name if self.method is not None else "merged"


def get_method(method: object, wording: Wording = LIBRARY) -> MergeMethod:
    """The registered method `method`; `ParamError` listing the valid ones."""
    if not isinstance(method, str) or method not in METHODS:
        hint = wording.method_hint(method) if isinstance(method, str) else None
        raise ParamError(f"unknown method {method!r}" + (f" ({hint})" if hint else "") + f"; valid: {choices(METHODS)}")
    return METHODS[method]


def validate_request(
    method: str | None,
    *,
    lam: float | None = None,
    lambdas: Sequence[float] | None = None,
    pooling: str | None = None,
    pool_over: str = "all",
    seed: int = 0,
    materialize: bool = False,
    method_seed: int | None = None,
    hparams: Mapping[str, object] | None = None,
    wording: Wording = LIBRARY,
) -> MergeRequest:
    """The `MergeRequest` of these arguments; `ParamError` naming the culprit in `wording`.

    Give `lam` for a merge, or `lambdas` with a `pooling` for a weave. `method` None asks
    for no method (the merged vector is given; `hparams` must then be empty).
    """
    merge_method = get_method(method, wording) if method is not None else None
    for name, value in (("seed", seed), ("method_seed", method_seed)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise ParamError(f"{wording.name(name)} must be an integer, got {value!r}")
    given = dict(hparams or {})
    if merge_method is not None:
        for name in given:
            if name not in merge_method.defaults and (hint := wording.hparam_hint(merge_method.name, name)) is not None:
                raise ParamError(f"method {merge_method.name!r}: {wording.name('hparams')} {name}: {hint}; "
                                 f"valid: {choices(merge_method.defaults)}")
        if "seed" in given and method_seed is not None:
            raise ParamError(f"the method's seed is given twice: {wording.name('method_seed')} and "
                             f"{wording.name('hparams')} seed")
        if "seed" in merge_method.defaults:
            given.setdefault("seed", seed if method_seed is None else method_seed)
    elif given:
        raise ParamError(f"{wording.name('hparams')} given without a method: {', '.join(map(repr, sorted(given)))}")
    resolved = merge_method.validate(given) if merge_method is not None else {}
    if (lam is None) == (lambdas is None):
        raise ParamError(f"give either {wording.name('lam')} (merge) or {wording.name('lambdas')} with a "
                         f"{wording.name('pooling')} (weave), not both or neither")
    if lam is not None:
        if pooling is not None:
            raise ParamError(f"{wording.name('pooling')} {pooling!r} needs {wording.name('lambdas')} (weave), "
                             f"but {wording.name('lam')}={lam!r} asks for a merge")
        return MergeRequest(merge_method, resolved, int(seed), lam=wording.finite(lam, wording.name("lam")))
    if pooling is None:
        raise ParamError(f"weaving needs a {wording.name('pooling')}; valid: {choices(POOLINGS)}")
    pooling_fn = get_pooling(pooling)
    check_pool_over(pool_over)
    if isinstance(lambdas, (str, bytes)) or not isinstance(lambdas, Iterable):
        raise ParamError(f"{wording.name('lambdas')} must be a sequence of numbers, got {lambdas!r}")
    values = tuple(wording.finite(v, f"{wording.name('lambdas')}[{i}]") for i, v in enumerate(lambdas))
    if not values:
        raise ParamError(f"the search space ({wording.name('lambdas')}) is empty")
    weave = WeaveSpec(values, pooling_fn, pool_over, bool(materialize))
    return MergeRequest(merge_method, resolved, int(seed), weave=weave)
