"""The streaming core: a validated `MergeRequest` over state-dict sources, key by key.

One code path serves dicts in memory and files: the in-memory API (`weaving.engine`) wraps
its dicts in `DictSource`s and runs the same core as `stream_request`. The core visits keys in
sorted order holding one key's tensors at a time: model-wide methods (TIES, PCB) first run
their statistics passes over every key, then every key is finalised, scaled or pooled.

Numerics: every float tensor is computed in one compute dtype for the whole model,
float64 if any floating tensor is float64, else float32; results are cast back to each
key's own dtype. Task vectors cover floating-point tensors only (integer and bool buffers
come from the pretrained model unchanged).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from tqdm import tqdm

from weaving.errors import InputError, ParamError
from weaving.methods.base import Members, MethodRun, ModelLayout, PassNeeded, PoolingShape, Workspace
from weaving.poolings import MethodPooling, build_group_members, pool_members, weave_groups
from weaving.request import MergeRequest, validate_request
from weaving.search_space import WeaveSpace
from weaving.sources import StateDictSource, check_same_layout, check_sources, checked_load, float_layout

# ---------------------------------------------------------------------------- task vector stacks


class TaskVectorStack:
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

    def load(self, key: str, check: bool = True) -> torch.Tensor:
        """`key`'s stacked task vectors; inputs checked finite on the first visit unless `check` is False."""
        raise NotImplementedError

    def check(self, key: str) -> None:
        """Check `key` in every input as a first visit's `load` would (`InputError` on NaN or inf)."""
        raise NotImplementedError


class SourceStack(TaskVectorStack):
    """Task vectors read directly from one source per task."""

    def __init__(self, layout: ModelLayout, taus: Sequence[StateDictSource]) -> None:
        super().__init__(layout)
        self._taus = taus

    def load(self, key: str, check: bool = True) -> torch.Tensor:
        check = self._first_visit(key) and check
        stacked = self._stack_buffer(key)
        for row, source in zip(stacked, self._taus, strict=True):
            row.copy_(checked_load(source, key, self.layout.shapes[key], check))
        return stacked

    def check(self, key: str) -> None:
        for source in self._taus:
            checked_load(source, key, self.layout.shapes[key], True)

    def rows(self, key: str, check: bool = True) -> list[torch.Tensor]:
        """`key`'s task vectors in the compute dtype, unstacked (not copied where already in it)."""
        check = self._first_visit(key) and check
        dtype = self.layout.compute_dtype
        return [checked_load(source, key, self.layout.shapes[key], check).to(dtype) for source in self._taus]


class DifferenceStack(TaskVectorStack):
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
            base.copy_(checked_load(self._pretrained, key, self.layout.shapes[key], check))
            self._base_key = key
        return base

    def check(self, key: str) -> None:
        for source in (self._pretrained, *self._finetuned):
            checked_load(source, key, self.layout.shapes[key], True)

    def load(self, key: str, check: bool = True) -> torch.Tensor:
        check = self._first_visit(key) and check
        self._base_key = None
        base = self.base(key, check)
        stacked = self._stack_buffer(key)
        for row, source in zip(stacked, self._finetuned, strict=True):
            row.copy_(checked_load(source, key, self.layout.shapes[key], check))
        return stacked.sub_(base)


class _GivenRun(MethodRun):
    """The merged vector at lam 1 read from a source (for `weave_from_merged`)."""

    def __init__(self, merged: StateDictSource, layout: ModelLayout) -> None:
        self._merged = merged
        self._layout = layout

    def finalize(self, key: str, taus: torch.Tensor) -> torch.Tensor:
        tensor = checked_load(self._merged, key, self._layout.shapes[key], True)
        return tensor.to(self._layout.compute_dtype)


# ---------------------------------------------------------------------------- the core


def _bar(keys: Sequence[str], label: str, progress: bool) -> Iterable[str]:
    return tqdm(keys, desc=label, unit="key", file=sys.stderr, disable=not progress, dynamic_ncols=True)


def stream_task_vectors(
    stack: TaskVectorStack, request: MergeRequest, progress: bool, merged: StateDictSource | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(key, result)` over the float keys (sorted), results in the compute dtype.

    `merged`: the merged vector at lam 1, read instead of running `request.method`.
    A weave over a search space with hyper-parameter axes runs one merge per distinct non-lam
    combination (`WeaveSpace.combinations`): their statistics passes share the reads of the task
    vectors, and each key's merges are computed one at a time into the running pool.
    """
    layout = stack.layout
    weave = request.weave
    space = weave.search_space if weave is not None else None
    if merged is not None:
        runs: list[MethodRun] = [_GivenRun(merged, layout)]
    else:
        assert request.method is not None
        method = request.method
        if space is None:
            runs = [method.start(request.hparams, layout)]
        else:
            runs = [method.start({**request.hparams, **space.hparams(c)}, layout) for c in range(len(space.combinations))]
            if len(runs) > 1:  # one merge works at a time: one set of scratch buffers for all
                scratch = Workspace()
                for run in runs:
                    run.share_scratch(scratch)

    def statistics_pass(active: Sequence[MethodRun], label: str) -> None:
        for key in _bar(layout.keys, label, progress):
            taus = stack.load(key)
            for run in active:
                run.observe(key, taus)
        for run in active:
            run.end_pass()

    while True:
        pending = [(run, label) for run in runs if (label := run.next_pass()) is not None]
        if not pending:
            break
        label = pending[0][1] + (f" (and {len(pending) - 1} more merges)" if len(pending) > 1 else "")
        statistics_pass([run for run, _ in pending], label)
    dtype = layout.compute_dtype
    if weave is None:
        assert request.lam is not None
        lam = torch.tensor(request.lam, dtype=dtype)
        final_label = f"{request.label}: merge (lam={request.lam:g})"
    else:
        assert space is not None
        groups = [(c, positions, torch.tensor(lams, dtype=dtype)) for c, positions, lams in space.groups()]
        final_label = f"{request.label}: weave ({weave.pooling.name} over {weave.pool_over})" + (
            f", {len(runs)} merges" if len(runs) > 1 else "")
    linear = request.method is None or request.method.linear_in_lam
    # A merge whose result is non-finite wherever an input is checks the inputs only when its
    # result is not finite (T reads fewer; the same error, as `stack.check` raises it).
    check_result = (weave is None and linear and merged is None and request.method is not None
                    and request.method.nonfinite_propagates)

    def finalized(run: MethodRun, key: str, taus: torch.Tensor, lam: float | None = None) -> torch.Tensor:
        """`run`'s `f(taus, lam)` of `key` (lam None: at 1), after any statistics pass it needs.

        After such a pass `taus` holds `key`'s task vectors again.
        """
        for attempt in range(2):
            try:
                result = run.finalize(key, taus) if lam is None else run.finalize_at(key, taus, lam)
                break
            except PassNeeded as needed:
                if attempt:
                    raise
                statistics_pass([run], f"{needed.label} (needed by {key})")
                fresh = stack.load(key)
                if fresh.data_ptr() != taus.data_ptr():
                    taus.copy_(fresh)
        if tuple(result.shape) != layout.shapes[key]:
            raise AssertionError(f"{request.label}: key {key!r} merged to shape {tuple(result.shape)}")
        return result

    if weave is not None and isinstance(weave.pooling, MethodPooling):
        assert space is not None
        yield from _method_pooling_weave(
            stack, request, space, groups, linear, progress, final_label,
            lambda c, key, taus: finalized(runs[c], key, taus),
            lambda c, lam, key, taus: finalized(runs[c], key, taus, lam),
        )
        return
    merge_rows = getattr(runs[0], "merge_rows", None) if weave is None and linear and merged is None else None
    for key in _bar(layout.keys, final_label, progress):
        if merge_rows is not None and isinstance(stack, SourceStack):  # no stack needed: no copy
            merged_at_1 = merge_rows(stack.rows(key, check=not check_result))
            if tuple(merged_at_1.shape) != layout.shapes[key]:
                raise AssertionError(f"{request.label}: key {key!r} merged to shape {tuple(merged_at_1.shape)}")
            if check_result and merged_at_1.numel() and not bool(torch.isfinite(merged_at_1.sum())):
                stack.check(key)  # as below: raises unless the sum itself overflowed
            yield key, merged_at_1 if request.lam == 1.0 else lam * merged_at_1
            del merged_at_1  # not kept while the next key is computed (nor below)
            continue
        taus = stack.load(key, check=not check_result)
        if weave is None:
            if not linear:
                yield key, finalized(runs[0], key, taus, request.lam)
            else:  # `1 * x == x` bit for bit: at lam 1 the method's new tensor is the result
                merged_at_1 = finalized(runs[0], key, taus)
                if check_result and merged_at_1.numel() and not bool(torch.isfinite(merged_at_1.sum())):
                    stack.check(key)  # raises unless the sum itself overflowed (returned, as before)
                yield key, merged_at_1 if request.lam == 1.0 else lam * merged_at_1
                del merged_at_1
            continue
        assert space is not None
        if not linear:
            yield key, _nonlinear_weave(request, space, taus, key,
                                        lambda c, lam, key=key, taus=taus: finalized(runs[c], key, taus, lam))
            continue
        yield key, weave_groups(
            weave.pooling,
            taus,
            lambda c, key=key, taus=taus: finalized(runs[c], key, taus),
            groups,
            len(space.points),
            pool_over=weave.pool_over,
            seed=request.seed,
            key=key,
            materialize=weave.materialize,
        )


def _method_pooling_weave(
    stack: TaskVectorStack, request: MergeRequest, space: WeaveSpace, groups: Sequence[tuple[int, Sequence[int], torch.Tensor]],
    linear: bool, progress: bool, final_label: str,
    merge_of: Callable[[int, str, torch.Tensor], torch.Tensor],
    merge_at: Callable[[int, float, str, torch.Tensor], torch.Tensor],
) -> Iterator[tuple[str, torch.Tensor]]:
    """A weave pooled by a merge method (`MethodPooling`): its statistics passes over the members
    (after the merges' own), then `g(members)` key by key, members built one key at a time.

    A method not linear in lam never takes the pooling's shortcut (its points are no `lam * M_c`).
    """
    weave = request.weave
    assert weave is not None and isinstance(weave.pooling, MethodPooling)
    layout = stack.layout
    shape = PoolingShape(layout, weave.pool_over, space.points, len(space.combinations))
    run = weave.pooling.start(shape, materialize=weave.materialize or not linear)
    num_tasks = layout.num_tasks if weave.pool_over == "all" else 0

    def build(view: Members, key: str) -> torch.Tensor:
        if linear:
            return build_group_members(view.taus, view.merge, groups, len(space.points), weave.pool_over)
        return torch.cat([view.taus[:num_tasks], torch.stack(
            [merge_at(c, lam, key, view.taus) for c, lam in space.points])])

    def members(key: str, taus: torch.Tensor) -> Members:
        return Members(taus, lambda c: merge_of(c, key, taus), lambda view: build(view, key))

    def pooling_pass(label: str) -> None:
        for key in _bar(layout.keys, label, progress):
            run.observe(key, members(key, stack.load(key)))
        run.end_pass()

    while (label := run.next_pass()) is not None:
        pooling_pass(label)
    for key in _bar(layout.keys, final_label, progress):
        taus = stack.load(key)
        for attempt in range(2):
            try:
                pooled = run.finalize(key, members(key, taus))
                break
            except PassNeeded as needed:
                if attempt:
                    raise
                pooling_pass(f"{needed.label} (needed by {key})")
                taus = stack.load(key)
        if tuple(pooled.shape) != layout.shapes[key]:
            raise AssertionError(f"{request.label}: key {key!r} pooled to shape {tuple(pooled.shape)}")
        yield key, pooled


def _nonlinear_weave(
    request: MergeRequest, space: WeaveSpace, taus: torch.Tensor, key: str,
    merge_at: Callable[[int, float], torch.Tensor],
) -> torch.Tensor:
    """Algorithm 1 for a method not linear in lam: one merge per point `(c, lam)` of the space."""
    weave = request.weave
    assert weave is not None
    scaled = torch.stack([merge_at(c, lam) for c, lam in space.points])
    members = torch.cat([taus, scaled]) if weave.pool_over == "all" else scaled
    return pool_members(weave.pooling, members, seed=request.seed, key=key)


def stream_taus(
    taus: Sequence[StateDictSource], request: MergeRequest, *, progress: bool = False,
    merged: StateDictSource | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The core over task vectors read from `taus` (checked alike): `(key, result)` in the compute dtype."""
    stack = SourceStack(float_layout(taus[0], len(taus)), taus)
    return stream_task_vectors(stack, request, progress, merged=merged)


# ---------------------------------------------------------------------------- over checkpoints


def stream_request(
    pretrained: StateDictSource,
    finetuned: Sequence[StateDictSource],
    request: MergeRequest,
    *,
    progress: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The model of a validated `request`, yielded key by key as `(key, theta_pre + result)`.

    Checks the sources' key sets, shapes and dtypes before anything is read, then yields every
    key of `pretrained` in sorted order (non-float keys: pretrained's tensor, float keys in
    pretrained's dtype). NaN/inf raises `InputError` naming the source and key when reached.
    Nothing is read until the first item is requested.
    """
    if not isinstance(request, MergeRequest) or request.method is None:
        raise ParamError("stream_request needs a MergeRequest with a method (see validate_request)")
    if not isinstance(pretrained, StateDictSource):
        raise InputError(f"pretrained: expected a state-dict source, got {type(pretrained).__name__}")
    finetuned = check_sources(finetuned, "fine-tuned source")
    check_same_layout(pretrained, finetuned)
    layout = float_layout(pretrained, len(finetuned))
    stack = DifferenceStack(layout, pretrained, finetuned)
    return _with_pretrained(pretrained, stack, stream_task_vectors(stack, request, progress))


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
    space: object = None,
    pooling_params: Mapping[str, object] | None = None,
    **hparams: object,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Merged (`lam`) or woven (`lambdas` + `pooling`) model, yielded key by key.

    Validates method, hparams, pooling, pool_over, lambdas (`validate_request`) and the
    sources' key sets, shapes and dtypes before anything is read, then yields
    `(key, theta_pre + result)` for every key of `pretrained` in sorted order (non-float
    keys: pretrained's tensor). `seed` is the pooling seed and DARE's seed unless
    `method_seed` is given (ignored by methods without a seed); `materialize` (Algorithm 1
    as written) only concerns weaving, and so does `space` (hyper-parameter axes, as
    `weaving.engine.weave`, as is `pooling_params`). NaN/inf raises `InputError` naming the source and key
    when reached. Nothing is read until the first item is requested.
    """
    request = validate_request(
        method, lam=lam, lambdas=lambdas, pooling=pooling, pool_over=pool_over, seed=seed,
        materialize=materialize, method_seed=method_seed, hparams=hparams, space=space,
        pooling_params=pooling_params,
    )
    return stream_request(pretrained, finetuned, request, progress=progress)


def _with_pretrained(
    pretrained: StateDictSource, stack: DifferenceStack, results: Iterator[tuple[str, torch.Tensor]]
) -> Iterator[tuple[str, torch.Tensor]]:
    float_keys = set(stack.layout.keys)
    for key in sorted(pretrained.keys()):
        if key not in float_keys:
            yield key, pretrained.load(key)
            continue
        result_key, result = next(results)
        assert result_key == key, (result_key, key)
        yield key, (stack.base(key) + result).to(pretrained.spec(key)[1])
        del result  # the consumer may hold the yielded tensor; this one is not kept besides
    for result_key, _ in results:  # runs the core to its end, which closes its progress bar
        raise AssertionError(f"unexpected merged key {result_key!r}")
