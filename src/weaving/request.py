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

import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from weaving.errors import ParamError, choices
from weaving.methods import METHODS
from weaving.methods.base import MergeMethod, derive_seed
from weaving.poolings import POOLINGS, MethodPooling, Pooling, check_pool_over
from weaving.search_space import HParamValue, WeaveSpace, parse_axis


def _no_method_hint(method: str) -> str | None:
    return None


def _no_hparam_hint(method: str, name: str) -> str | None:
    return None


@dataclass(frozen=True)
class Wording:
    """How errors name the request's fields, and hints for names known from elsewhere.

    `names` maps a field (``lam``, ``lambdas``, ``pooling``, ``pooling_params``, ``seed``, ``method_seed``,
    ``hparams``, ``space``) to what the caller wrote (e.g. ``--lam``); unlisted fields keep their name.
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
    """What a weave adds to a merge: the search space, the pooling, what it pools over.

    `lambdas`: the lam of every member, in member order. `space`: the search space over lam and
    the method's hyper-parameters (None: over lam only, `lambdas` with the request's hparams).
    """

    lambdas: tuple[float, ...]
    pooling: Pooling | MethodPooling
    pool_over: str = "all"
    materialize: bool = False  # Algorithm 1 as written (every member built, then pooled)
    space: WeaveSpace | None = None

    @property
    def search_space(self) -> WeaveSpace:
        """`space`, or the space over lam only of `lambdas`."""
        return self.space if self.space is not None else WeaveSpace.over_lam(self.lambdas)


@dataclass(frozen=True)
class MergeRequest:
    """A validated request: a merge at `lam`, or a weave (`weave` set); build it with `validate_request`.

    `method` None: the merged task vector at lam 1 is given (`weave_from_merged`).
    `hparams` are the method's, defaults filled in (the method's seed included), except those
    a weave's search space sweeps (`weave.space.axes`).
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
    space: object = None,
    pooling_params: Mapping[str, object] | None = None,
    wording: Wording = LIBRARY,
) -> MergeRequest:
    """The `MergeRequest` of these arguments; `ParamError` naming the culprit in `wording`.

    Give `lam` for a merge, or `lambdas` with a `pooling` for a weave. `method` None asks
    for no method (the merged vector is given; `hparams` must then be empty). `space` (a weave
    only) adds hyper-parameter axes: a grid `{name: values, ...}` (lam among them, or given as
    `lambdas`) or a list of points `[{name: value, ...}, ...]` (see `build_space`). `pooling` may
    name a merge method, with its hyper-parameters in `pooling_params` (see `resolve_pooling`).
    """
    merge_method = get_method(method, wording) if method is not None else None
    fixed = set(hparams or {})
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
    if space is not None:
        if lam is not None:
            raise ParamError(f"{wording.name('space')} needs a weave, but {wording.name('lam')}={lam!r} asks for a merge")
        if merge_method is None:
            raise ParamError(f"{wording.name('space')} needs a method (its axes are the method's hyper-parameters)")
        pooling_fn = resolve_pooling(pooling, pooling_params, seed, wording)
        check_pool_over(pool_over)
        weave_space = build_space(merge_method, space, lambdas, fixed=fixed, method_seed=method_seed, wording=wording)
        unswept = {name: value for name, value in resolved.items() if name not in weave_space.axes}
        weave = WeaveSpec(weave_space.lambdas, pooling_fn, pool_over, bool(materialize), weave_space)
        return MergeRequest(merge_method, unswept, int(seed), weave=weave)
    if (lam is None) == (lambdas is None):
        raise ParamError(f"give either {wording.name('lam')} (merge) or {wording.name('lambdas')} with a "
                         f"{wording.name('pooling')} (weave), not both or neither")
    if lam is not None:
        if pooling is not None:
            raise ParamError(f"{wording.name('pooling')} {pooling!r} needs {wording.name('lambdas')} (weave), "
                             f"but {wording.name('lam')}={lam!r} asks for a merge")
        if pooling_params:
            raise ParamError(f"{wording.name('pooling_params')} needs a weave, but {wording.name('lam')}={lam!r} "
                             "asks for a merge")
        return MergeRequest(merge_method, resolved, int(seed), lam=wording.finite(lam, wording.name("lam")))
    pooling_fn = resolve_pooling(pooling, pooling_params, seed, wording)
    check_pool_over(pool_over)
    weave = WeaveSpec(_lambdas(lambdas, wording), pooling_fn, pool_over, bool(materialize))
    return MergeRequest(merge_method, resolved, int(seed), weave=weave)


def resolve_pooling(
    pooling: object, params: Mapping[str, object] | None, seed: int, wording: Wording = LIBRARY,
) -> Pooling | MethodPooling:
    """The pooling `pooling` names: a registered pooling, or a merge method at `params`.

    A pooling of `POOLINGS` takes no `params`. A method's `params` are checked by the method's own
    validation (defaults filled in), errors naming the key as `wording` writes `pooling_params`.
    A method that draws (a ``seed`` hyper-parameter, DARE) gets `derive_seed("pooling", name, seed)`
    unless `params` gives its seed.
    """
    if pooling is None:
        raise ParamError(f"weaving needs a {wording.name('pooling')}; valid: {choices(POOLINGS)}, or a method: "
                         f"{choices(METHODS)}")
    if isinstance(params, (str, bytes)) or (params is not None and not isinstance(params, Mapping)):
        raise ParamError(f"{wording.name('pooling_params')} must be a mapping {{name: value}}, got {params!r}")
    given = dict(params or {})
    if isinstance(pooling, str) and pooling in POOLINGS:
        if given:
            raise ParamError(f"{wording.name('pooling')} {pooling!r} takes no parameters, but "
                             f"{wording.name('pooling_params')} gives {', '.join(map(repr, sorted(given)))} "
                             "(only a merge method as the pooling has hyper-parameters)")
        return POOLINGS[pooling]
    if not isinstance(pooling, str) or pooling not in METHODS:
        raise ParamError(f"unknown pooling {pooling!r}; valid: {choices(POOLINGS)}, or a merge method as the "
                         f"pooling: {choices(METHODS)}")
    method = METHODS[pooling]
    if "seed" in method.defaults:
        given.setdefault("seed", derive_seed("pooling", method.name, seed))
    try:
        resolved = method.validate(given)
    except ParamError as error:
        raise ParamError(f"{wording.name('pooling_params')} ({wording.name('pooling')} {pooling!r}): {error}") from None
    return MethodPooling(method, resolved)


def _lambdas(lambdas: object, wording: Wording) -> tuple[float, ...]:
    if isinstance(lambdas, (str, bytes)) or not isinstance(lambdas, Iterable):
        raise ParamError(f"{wording.name('lambdas')} must be a sequence of numbers, got {lambdas!r}")
    values = tuple(wording.finite(v, f"{wording.name('lambdas')}[{i}]") for i, v in enumerate(lambdas))
    if not values:
        raise ParamError(f"the search space ({wording.name('lambdas')}) is empty")
    return values


def build_space(
    method: MergeMethod,
    space: object,
    lambdas: Sequence[float] | None,
    *,
    fixed: Iterable[str] = (),
    method_seed: int | None = None,
    wording: Wording = LIBRARY,
) -> WeaveSpace:
    """The validated `WeaveSpace` of `space` for `method`; `ParamError` naming the key.

    `space` is a grid, a mapping `{name: axis}` (an axis as `weaving.search_space.parse_axis`
    reads it), or a list of points, mappings `{name: value}` with the same names. Names are
    ``lam`` and the method's hyper-parameters. lam comes from the space or from `lambdas`,
    never both; points without lam are each crossed with `lambdas`. Members: the non-lam
    combinations in grid order (the product of the axes in the method's declaration order,
    the last varying fastest) or in the points' order, each with its lams inner. `fixed`: the
    hyper-parameters given with fixed values, which no axis may sweep.
    """
    where = wording.name("space")
    known = {p.name: p for p in method.hparams}
    fixed = set(fixed)

    def axis(name: object) -> str:
        if name == "lam":
            return "lam"
        if not isinstance(name, str) or name not in known:
            hint = wording.hparam_hint(method.name, name) if isinstance(name, str) else None
            raise ParamError(f"{where} {name!r}: method {method.name!r} has no hyper-parameter {name!r}"
                             + (f" ({hint})" if hint else "") + f"; valid: {choices(['lam', *known])}")
        if name in fixed:
            raise ParamError(f"{where} {name!r}: {name} is given twice, as an axis and as a fixed value "
                             f"({wording.name('hparams')} {name})")
        if name == "seed" and method_seed is not None:
            raise ParamError(f"{where} 'seed': the method's seed is given twice, as an axis and as "
                             f"{wording.name('method_seed')}")
        return name

    def check(name: str, value: object, label: str) -> HParamValue:
        if name == "lam":
            return wording.finite(value, label)
        try:
            return known[name].check(value, method.name)
        except ParamError as error:
            raise ParamError(f"{label}: {error}") from None

    def lam_values(has_lam: bool) -> tuple[float, ...]:
        if has_lam and lambdas is not None:
            raise ParamError(f"lam is given twice: {wording.name('lambdas')} and {where} lam")
        if not has_lam and lambdas is None:
            raise ParamError(f"the search space has no lam: give {wording.name('lambdas')} or a lam axis in {where}")
        return () if has_lam else _lambdas(lambdas, wording)

    combinations: dict[tuple[HParamValue, ...], int] = {}
    points: list[tuple[int, float]] = []

    def add(combination: tuple[HParamValue, ...], lams: Iterable[float]) -> None:
        index = combinations.setdefault(combination, len(combinations))
        points.extend((index, float(lam)) for lam in lams)

    if isinstance(space, Mapping):
        values: dict[str, list[HParamValue]] = {}
        for name, spec in space.items():
            key = axis(name)
            try:
                raw = parse_axis(spec, boolean=key != "lam" and known[key].kind is bool)
            except ParamError as error:
                raise ParamError(f"{where} {name}: {error}") from None
            values[key] = [check(key, v, f"{where} {name}[{i}]") for i, v in enumerate(raw)]
        given_lams = lam_values("lam" in values)
        lams = tuple(values.pop("lam")) if "lam" in values else given_lams
        axes = tuple(name for name in known if name in values)
        for combination in itertools.product(*(values[name] for name in axes)):
            add(combination, lams)
        record: dict[str, object] = {**{name: values[name] for name in axes}, "lam": list(lams)}
        return WeaveSpace(axes, tuple(combinations), tuple(points), record)
    if isinstance(space, Sequence) and not isinstance(space, (str, bytes)):
        if len(space) == 0:
            raise ParamError(f"{where}: the list of points is empty")
        for i, point in enumerate(space):
            if not isinstance(point, Mapping) or not point:
                raise ParamError(f"{where}[{i}]: a point is a non-empty mapping {{name: value}}, got {point!r}")
        names = set(space[0])
        for i, point in enumerate(space):
            if set(point) != names:
                raise ParamError(f"{where}[{i}]: names {choices(point)} differ from point 0's ({choices(names)})")
        for name in sorted(names, key=str):
            axis(name)
        lams = lam_values("lam" in names)
        axes = tuple(name for name in known if name in names)
        listed: list[dict[str, object]] = []
        for i, point in enumerate(space):
            combination = tuple(check(name, point[name], f"{where}[{i}] {name}") for name in axes)
            point_lams = (check("lam", point["lam"], f"{where}[{i}] lam"),) if "lam" in names else lams
            add(combination, point_lams)  # type: ignore[arg-type]
            listed.append({**dict(zip(axes, combination, strict=True)),
                           **({"lam": point_lams[0]} if "lam" in names else {})})
        record = {"points": listed} if "lam" in names else {"points": listed, "lam": list(lams)}
        return WeaveSpace(axes, tuple(combinations), tuple(points), record)
    raise ParamError(f"{where} must be a mapping {{name: values}} (a grid) or a list of points {{name: value}}, "
                     f"got {space!r}")
