"""The merge engine: task vectors, `merge`, `weave`, and streaming over state-dict sources.

One code path serves dicts in memory and files: the in-memory API wraps its dicts in
`DictSource`s and runs the same streaming core as `stream_merge`. The core visits keys in
sorted order holding one key's tensors at a time: model-wide methods (TIES, PCB) first run
their statistics passes over every key, then every key is finalised, scaled or pooled.

Numerics: every float tensor is computed in one compute dtype for the whole model,
float64 if any floating tensor is float64, else float32; results are cast back to each
key's own dtype. Task vectors cover floating-point tensors only (integer and bool buffers
come from the pretrained model unchanged).
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from tqdm import tqdm

from weaving.errors import InputError, ParamError, choices
from weaving.methods import METHODS
from weaving.methods.base import MergeMethod, MethodRun, ModelLayout, PassNeeded, Workspace
from weaving.poolings import POOLINGS, Pooling, check_pool_over, get_pooling, pool_members, weave_tensor

TensorDict = dict[str, torch.Tensor]


@runtime_checkable
class StateDictSource(Protocol):
    """A state dict readable key by key (a dict, a safetensors file, a sharded checkpoint)."""

    name: str

    def keys(self) -> list[str]: ...

    def spec(self, key: str) -> tuple[tuple[int, ...], torch.dtype]: ...

    def load(self, key: str) -> torch.Tensor: ...


class DictSource:
    """A `StateDictSource` over a `dict[str, Tensor]` held in memory."""

    def __init__(self, sd: Mapping[str, torch.Tensor], name: str = "<state dict>") -> None:
        if not isinstance(sd, Mapping):
            raise InputError(f"{name}: expected a dict of tensors, got {type(sd).__name__}")
        for key, value in sd.items():
            if not isinstance(key, str):
                raise InputError(f"{name}: key {key!r} is not a string")
            if not isinstance(value, torch.Tensor):
                raise InputError(f"{name}: key {key!r} holds a {type(value).__name__}, not a tensor")
        self._sd = sd
        self.name = name

    def keys(self) -> list[str]:
        return list(self._sd.keys())

    def spec(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        tensor = self._get(key)
        return tuple(tensor.shape), tensor.dtype

    def load(self, key: str) -> torch.Tensor:
        return self._get(key)

    def _get(self, key: str) -> torch.Tensor:
        if key not in self._sd:
            raise InputError(f"{self.name}: no key {key!r}")
        return self._sd[key]


# ---------------------------------------------------------------------------- validation


def compute_dtype(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    """float64 if any of the floating `dtypes` is float64, else float32."""
    return torch.float64 if any(d == torch.float64 for d in dtypes) else torch.float32


def _listing(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _check_same_layout(reference: StateDictSource, others: Sequence[StateDictSource]) -> None:
    """Every source in `others` has `reference`'s key set, shapes and dtypes."""
    reference_keys = set(reference.keys())
    specs = {key: reference.spec(key) for key in reference_keys}
    for other in others:
        other_keys = set(other.keys())
        if other_keys != reference_keys:
            missing, extra = reference_keys - other_keys, other_keys - reference_keys
            parts = []
            if missing:
                parts.append(f"missing {_listing(missing)}")
            if extra:
                parts.append(f"extra {_listing(extra)}")
            raise InputError(f"{other.name}: key set differs from {reference.name}: {'; '.join(parts)}")
        for key in sorted(other_keys):
            shape, dtype = other.spec(key)
            want_shape, want_dtype = specs[key]
            if tuple(shape) != tuple(want_shape):
                raise InputError(
                    f"{other.name}: key {key!r} has shape {tuple(shape)}, {reference.name} has {tuple(want_shape)}"
                )
            if dtype != want_dtype:
                raise InputError(f"{other.name}: key {key!r} has dtype {dtype}, {reference.name} has {want_dtype}")


def _float_layout(source: StateDictSource, num_tasks: int) -> ModelLayout:
    specs = {key: source.spec(key) for key in source.keys()}
    keys = tuple(sorted(k for k, (_, dtype) in specs.items() if dtype.is_floating_point))
    return ModelLayout(
        keys=keys,
        shapes={k: tuple(specs[k][0]) for k in keys},
        num_tasks=num_tasks,
        compute_dtype=compute_dtype(specs[k][1] for k in keys),
    )


def _check_sources(sources: Sequence[StateDictSource], what: str) -> list[StateDictSource]:
    sources = list(sources)
    if not sources:
        raise InputError(f"need at least one {what}, got none")
    for i, source in enumerate(sources):
        if not isinstance(source, StateDictSource):
            raise InputError(f"{what} {i}: expected a state-dict source, got {type(source).__name__}")
    return sources


@dataclass(frozen=True)
class _Request:
    """A validated merge (`lam` set) or weave (`lambdas` and `pooling` set) request."""

    method: MergeMethod | None  # None: the merged vector at lam 1 is given
    hparams: Mapping[str, float | int]
    lam: float | None
    lambdas: tuple[float, ...] | None
    pooling: Pooling | None
    pool_over: str
    seed: int
    materialize: bool

    @property
    def label(self) -> str:
        return self.method.name if self.method is not None else "merged"


def _get_method(method: str) -> MergeMethod:
    if not isinstance(method, str) or method not in METHODS:
        raise ParamError(f"unknown method {method!r}; valid: {choices(METHODS)}")
    return METHODS[method]


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ParamError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _validate_request(
    method: str | None,
    *,
    lam: float | None,
    lambdas: Sequence[float] | None,
    pooling: str | None,
    pool_over: str,
    seed: int,
    materialize: bool,
    method_seed: int | None,
    hparams: Mapping[str, object],
) -> _Request:
    """Check everything that needs no data; `ParamError` names the culprit."""
    merge_method = _get_method(method) if method is not None else None
    for name, value in (("seed", seed), ("method_seed", method_seed)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise ParamError(f"{name} must be an integer, got {value!r}")
    given = dict(hparams)
    if merge_method is not None and "seed" in merge_method.defaults:
        given["seed"] = seed if method_seed is None else method_seed
    resolved = merge_method.validate(given) if merge_method is not None else {}
    if (lam is None) == (lambdas is None):
        raise ParamError("give either lam (merge) or lambdas with a pooling (weave), not both or neither")
    if lam is not None:
        if pooling is not None:
            raise ParamError(f"pooling {pooling!r} needs lambdas (weave), but lam={lam!r} asks for a merge")
        return _Request(merge_method, resolved, _finite(lam, "lam"), None, None, "all", int(seed), False)
    if pooling is None:
        raise ParamError(f"weaving needs a pooling; valid: {choices(POOLINGS)}")
    pooling_fn = get_pooling(pooling)
    check_pool_over(pool_over)
    if isinstance(lambdas, (str, bytes)) or not isinstance(lambdas, Iterable):
        raise ParamError(f"lambdas must be a sequence of numbers, got {lambdas!r}")
    values = tuple(_finite(v, f"lambdas[{i}]") for i, v in enumerate(lambdas))
    if not values:
        raise ParamError("the search space (lambdas) is empty")
    return _Request(merge_method, resolved, None, values, pooling_fn, pool_over, int(seed), bool(materialize))


# ---------------------------------------------------------------------------- task vector stacks


def _check_finite(tensor: torch.Tensor, source: StateDictSource, key: str) -> None:
    """`InputError` if `tensor` holds NaN or inf.

    NaN and inf make the sum non-finite, so a finite sum proves the tensor finite; only a
    non-finite sum (possibly an overflow of finite values) needs the element-wise check.
    """
    if not tensor.dtype.is_floating_point or tensor.numel() == 0:
        return
    if bool(torch.isfinite(tensor.sum())):
        return
    if not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{source.name}: key {key!r} contains NaN or inf")


def _checked_load(source: StateDictSource, key: str, shape: tuple[int, ...], check_values: bool) -> torch.Tensor:
    tensor = source.load(key)
    if tuple(tensor.shape) != tuple(shape):
        raise InputError(f"{source.name}: key {key!r} loaded with shape {tuple(tensor.shape)}, declared {tuple(shape)}")
    if check_values:
        _check_finite(tensor, source, key)
    return tensor


class _TaskVectorStack:
    """Stacked task vectors `[T, *shape]` per float key, in the compute dtype.

    The stack lives in a buffer reused for the next key (no fresh allocation per key).
    """

    def __init__(self, layout: ModelLayout) -> None:
        self.layout = layout
        self._checked: set[str] = set()
        self._workspace = Workspace()

    def _first_visit(self, key: str) -> bool:
        first = key not in self._checked
        self._checked.add(key)
        return first

    def _stack_buffer(self, key: str, name: str = "stack", rows: int | None = None) -> torch.Tensor:
        rows = self.layout.num_tasks if rows is None else rows
        return self._workspace.take(name, (rows, *self.layout.shapes[key]), self.layout.compute_dtype)

    def load(self, key: str) -> torch.Tensor:
        raise NotImplementedError


class _SourceStack(_TaskVectorStack):
    """Task vectors read directly from one source per task."""

    def __init__(self, layout: ModelLayout, taus: Sequence[StateDictSource]) -> None:
        super().__init__(layout)
        self._taus = taus

    def load(self, key: str) -> torch.Tensor:
        check = self._first_visit(key)
        stacked = self._stack_buffer(key)
        for row, source in zip(stacked, self._taus, strict=True):
            row.copy_(_checked_load(source, key, self.layout.shapes[key], check))
        return stacked


class _DifferenceStack(_TaskVectorStack):
    """`theta_t - theta_pre` from a pretrained and the fine-tuned sources."""

    def __init__(self, layout: ModelLayout, pretrained: StateDictSource, finetuned: Sequence[StateDictSource]) -> None:
        super().__init__(layout)
        self._pretrained = pretrained
        self._finetuned = finetuned
        self._base_key: str | None = None

    def base(self, key: str, check: bool = True) -> torch.Tensor:
        """`theta_pre[key]` in the compute dtype (kept from the last `load` of `key`)."""
        base = self._stack_buffer(key, "base", rows=1)[0]
        if self._base_key != key:
            base.copy_(_checked_load(self._pretrained, key, self.layout.shapes[key], check))
            self._base_key = key
        return base

    def load(self, key: str) -> torch.Tensor:
        check = self._first_visit(key)
        self._base_key = None
        base = self.base(key, check)
        stacked = self._stack_buffer(key)
        for row, source in zip(stacked, self._finetuned, strict=True):
            row.copy_(_checked_load(source, key, self.layout.shapes[key], check))
        return stacked.sub_(base)


class _GivenRun(MethodRun):
    """The merged vector at lam 1 read from a source (for `weave_from_merged`)."""

    def __init__(self, merged: StateDictSource, layout: ModelLayout) -> None:
        self._merged = merged
        self._layout = layout

    def finalize(self, key: str, taus: torch.Tensor) -> torch.Tensor:
        tensor = _checked_load(self._merged, key, self._layout.shapes[key], True)
        return tensor.to(self._layout.compute_dtype)


# ---------------------------------------------------------------------------- streaming core


def _bar(keys: Sequence[str], label: str, progress: bool) -> Iterable[str]:
    return tqdm(keys, desc=label, unit="key", file=sys.stderr, disable=not progress, dynamic_ncols=True)


def _stream_task_vectors(
    stack: _TaskVectorStack, request: _Request, progress: bool, merged: StateDictSource | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(key, result)` over the float keys (sorted), results in the compute dtype."""
    layout = stack.layout
    if merged is not None:
        run: MethodRun = _GivenRun(merged, layout)
    else:
        assert request.method is not None
        run = request.method.start(request.hparams, layout)

    def statistics_pass(label: str) -> None:
        for key in _bar(layout.keys, label, progress):
            run.observe(key, stack.load(key))
        run.end_pass()

    while (label := run.next_pass()) is not None:
        statistics_pass(label)
    dtype = layout.compute_dtype
    if request.lam is not None:
        lam = torch.tensor(request.lam, dtype=dtype)
        final_label = f"{request.label}: merge (lam={request.lam:g})"
    else:
        assert request.lambdas is not None and request.pooling is not None
        lambdas = torch.tensor(request.lambdas, dtype=dtype)
        final_label = f"{request.label}: weave ({request.pooling.name} over {request.pool_over})"
    linear = request.method is None or request.method.linear_in_lam

    def finalized(key: str, lam: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(taus, f(taus, lam))` of `key` (lam None: at 1), after any statistics pass it needs."""
        for attempt in range(2):
            taus = stack.load(key)
            try:
                result = run.finalize(key, taus) if lam is None else run.finalize_at(key, taus, lam)
                break
            except PassNeeded as needed:
                if attempt:
                    raise
                statistics_pass(f"{needed.label} (needed by {key})")
        if tuple(result.shape) != layout.shapes[key]:
            raise AssertionError(f"{request.label}: key {key!r} merged to shape {tuple(result.shape)}")
        return taus, result

    for key in _bar(layout.keys, final_label, progress):
        if not linear:
            yield key, _nonlinear_result(request, key, finalized)
            continue
        taus, at_one = finalized(key)
        if request.lam is not None:
            yield key, lam * at_one
        else:
            assert request.pooling is not None
            yield key, weave_tensor(
                request.pooling,
                taus,
                at_one,
                lambdas,
                pool_over=request.pool_over,
                seed=request.seed,
                key=key,
                materialize=request.materialize,
            )


def _nonlinear_result(
    request: _Request, key: str, finalized: Callable[..., tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """A method not linear in lam: its merge at `request.lam`, or Algorithm 1 with one merge per lam."""
    if request.lam is not None:
        return finalized(key, request.lam)[1]
    assert request.lambdas is not None and request.pooling is not None
    merges = [finalized(key, lam) for lam in request.lambdas]
    taus = merges[0][0]
    scaled = torch.stack([result for _, result in merges])
    members = torch.cat([taus, scaled]) if request.pool_over == "all" else scaled
    return pool_members(request.pooling, members, seed=request.seed, key=key)


def stream_merge(
    pretrained: StateDictSource,
    finetuned: Sequence[StateDictSource],
    method: str,
    *,
    lam: float | None = None,
    lambdas: Sequence[float] | None = None,
    pooling: str | None = None,
    pool_over: str = "all",
    seed: int = 0,
    materialize: bool = False,
    progress: bool = False,
    method_seed: int | None = None,
    **hparams: object,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Merged (`lam`) or woven (`lambdas` + `pooling`) model, yielded key by key.

    Validates method, hparams, pooling, pool_over, lambdas and the sources' key sets,
    shapes and dtypes before anything is read, then yields `(key, theta_pre + result)` for
    every key of `pretrained` in sorted order (non-float keys: pretrained's tensor). `seed`
    is the pooling seed and DARE's seed unless `method_seed` is given (ignored by methods
    without a seed); `materialize` (Algorithm 1 as written) only concerns weaving. NaN/inf
    raises `InputError` naming the source and key when reached. Nothing is read until the
    first item is requested.
    """
    request = _validate_request(
        method, lam=lam, lambdas=lambdas, pooling=pooling, pool_over=pool_over, seed=seed,
        materialize=materialize, method_seed=method_seed, hparams=hparams,
    )
    if not isinstance(pretrained, StateDictSource):
        raise InputError(f"pretrained: expected a state-dict source, got {type(pretrained).__name__}")
    finetuned = _check_sources(finetuned, "fine-tuned source")
    _check_same_layout(pretrained, finetuned)
    layout = _float_layout(pretrained, len(finetuned))
    stack = _DifferenceStack(layout, pretrained, finetuned)
    return _with_pretrained(pretrained, stack, _stream_task_vectors(stack, request, progress))


def _with_pretrained(
    pretrained: StateDictSource, stack: _DifferenceStack, results: Iterator[tuple[str, torch.Tensor]]
) -> Iterator[tuple[str, torch.Tensor]]:
    float_keys = set(stack.layout.keys)
    for key in sorted(pretrained.keys()):
        if key not in float_keys:
            yield key, pretrained.load(key)
            continue
        result_key, result = next(results)
        assert result_key == key, (result_key, key)
        yield key, (stack.base(key) + result).to(pretrained.spec(key)[1])
    for result_key, _ in results:  # runs the core to its end, which closes its progress bar
        raise AssertionError(f"unexpected merged key {result_key!r}")


# ---------------------------------------------------------------------------- in-memory API


def _tau_sources(taus: Sequence[Mapping[str, torch.Tensor]], what: str = "task vector") -> list[DictSource]:
    if isinstance(taus, Mapping) or not isinstance(taus, Sequence):
        raise InputError(f"expected a list of {what}s (dicts of tensors), got {type(taus).__name__}")
    if not taus:
        raise InputError(f"need at least one {what}, got none")
    sources = [DictSource(tau, name=f"{what} {i}") for i, tau in enumerate(taus)]
    for source in sources:
        for key in source.keys():
            _, dtype = source.spec(key)
            if not dtype.is_floating_point:
                raise InputError(
                    f"{source.name}: key {key!r} has dtype {dtype}; task vectors hold floating-point "
                    "tensors only (see task_vectors)"
                )
    _check_same_layout(sources[0], sources[1:])
    return sources


def _collect(sources: Sequence[DictSource], results: Iterator[tuple[str, torch.Tensor]]) -> TensorDict:
    return {key: value.to(sources[0].spec(key)[1]) for key, value in results}


def task_vectors(pretrained_sd: Mapping[str, torch.Tensor], finetuned_sds: Sequence[Mapping[str, torch.Tensor]]) -> list[TensorDict]:
    """`tau_t = theta_t - theta_pre` for every floating tensor (computed in the compute dtype,
    stored in the key's dtype); integer and bool buffers are left out."""
    pretrained = DictSource(pretrained_sd, name="pretrained state dict")
    if isinstance(finetuned_sds, Mapping):
        raise InputError("finetuned_sds must be a list of state dicts, got a single dict")
    finetuned = _check_sources(
        [DictSource(sd, name=f"fine-tuned state dict {i}") for i, sd in enumerate(finetuned_sds)], "fine-tuned state dict"
    )
    _check_same_layout(pretrained, finetuned)
    layout = _float_layout(pretrained, len(finetuned))
    stack = _DifferenceStack(layout, pretrained, finetuned)
    taus: list[TensorDict] = [{} for _ in finetuned]
    for key in layout.keys:
        stacked = stack.load(key)
        dtype = pretrained.spec(key)[1]
        for t, tau in enumerate(taus):
            tau[key] = stacked[t].to(dtype, copy=True)
    return taus


def apply_task_vector(pretrained_sd: Mapping[str, torch.Tensor], tau: Mapping[str, torch.Tensor]) -> TensorDict:
    """`theta_pre + tau` for the floating keys (in the compute dtype, cast back); every
    other key is pretrained's tensor. `tau` must hold exactly pretrained's floating keys."""
    pretrained = DictSource(pretrained_sd, name="pretrained state dict")
    vector = DictSource(tau, name="task vector")
    layout = _float_layout(pretrained, 1)
    float_keys, tau_keys = set(layout.keys), set(vector.keys())
    if tau_keys != float_keys:
        missing, extra = float_keys - tau_keys, tau_keys - float_keys
        raise InputError(
            f"task vector: keys differ from the pretrained floating keys: "
            f"missing {_listing(missing) or '(none)'}; extra {_listing(extra) or '(none)'}"
        )
    for key in layout.keys:
        shape, dtype = vector.spec(key)
        want_shape, want_dtype = pretrained.spec(key)
        if tuple(shape) != tuple(want_shape) or dtype != want_dtype:
            raise InputError(
                f"task vector: key {key!r} is {tuple(shape)} {dtype}, pretrained has {tuple(want_shape)} {want_dtype}"
            )
    out: TensorDict = {}
    for key in pretrained.keys():
        base = pretrained.load(key)
        if key in float_keys:
            _check_finite(base, pretrained, key)
            delta = vector.load(key)
            _check_finite(delta, vector, key)
            out[key] = (base.to(layout.compute_dtype) + delta.to(layout.compute_dtype)).to(base.dtype)
        else:
            out[key] = base
    return out


def merge(
    method: str,
    taus: Sequence[Mapping[str, torch.Tensor]],
    lam: float = 1.0,
    *,
    seed: int = 0,
    progress: bool = False,
    **hparams: object,
) -> TensorDict:
    """The merged task vector `f(taus, lam) = lam * f(taus, 1)` (keys sorted, dtypes kept).

    `seed` seeds the method's randomness (DARE); deterministic methods ignore it.
    """
    request = _validate_request(
        method, lam=lam, lambdas=None, pooling=None, pool_over="all", seed=seed,
        materialize=False, method_seed=None, hparams=hparams,
    )
    sources = _tau_sources(taus)
    stack = _SourceStack(_float_layout(sources[0], len(sources)), sources)
    return _collect(sources, _stream_task_vectors(stack, request, progress))


def weave(
    method: str,
    taus: Sequence[Mapping[str, torch.Tensor]],
    lambdas: Sequence[float],
    pooling: str = "avg",
    pool_over: str = "all",
    seed: int = 0,
    *,
    materialize: bool = False,
    progress: bool = False,
    method_seed: int | None = None,
    **hparams: object,
) -> TensorDict:
    """Weight Weaving: the pooled task vector over `taus` and `lam_k * f(taus, 1)`.

    `seed` is the pooling seed and DARE's seed unless `method_seed` is given.
    `materialize=True` runs Algorithm 1 as written (every member built, then pooled).
    """
    request = _validate_request(
        method, lam=None, lambdas=lambdas, pooling=pooling, pool_over=pool_over, seed=seed,
        materialize=materialize, method_seed=method_seed, hparams=hparams,
    )
    sources = _tau_sources(taus)
    stack = _SourceStack(_float_layout(sources[0], len(sources)), sources)
    return _collect(sources, _stream_task_vectors(stack, request, progress))


def weave_from_merged(
    taus: Sequence[Mapping[str, torch.Tensor]],
    merged: Mapping[str, torch.Tensor],
    lambdas: Sequence[float],
    pooling: str = "avg",
    pool_over: str = "all",
    seed: int = 0,
    *,
    materialize: bool = False,
    progress: bool = False,
) -> TensorDict:
    """Weight Weaving from a merged task vector `merged = merge(method, taus, lam=1)`."""
    request = _validate_request(
        None, lam=None, lambdas=lambdas, pooling=pooling, pool_over=pool_over, seed=seed,
        materialize=materialize, method_seed=None, hparams={},
    )
    sources = _tau_sources(taus)
    merged_source = DictSource(merged, name="merged task vector")
    _check_same_layout(sources[0], [merged_source])
    stack = _SourceStack(_float_layout(sources[0], len(sources)), sources)
    return _collect(sources, _stream_task_vectors(stack, request, progress, merged=merged_source))
