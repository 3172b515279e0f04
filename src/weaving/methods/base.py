"""What a merge method is, for the registry and the streaming engine.

A method maps the stacked task vectors of one key, `taus` of shape `[T, *shape]` in the
compute dtype, to the merged task vector of that key at `lam = 1`. `taus` may live in a
buffer the engine reuses for the next key: a method must not keep it or return a view of
it, and must not modify it. The engine scales by
`lam`, adds `theta_pre` and casts back. A method declares `linear_in_lam` (all eight built-in
methods are: `f(taus, lam) = lam * f(taus, 1)`); for a method that is not, the engine asks
its run for `finalize_at(key, taus, lam)` at every lam and weaves by materialising the
members, never by the linear fast path.

Per-tensor methods (`PerTensorMethod`) see one key at a time. Model-wide methods
(`ModelWideMethod`: TIES, PCB) first run statistics passes (each pass sees every key once,
in sorted order, one key's `T` tensors at a time), then finalise key by key. Both kinds
are driven through a `MethodRun`.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from weaving.errors import ParamError, choices


@dataclass(frozen=True)
class HParam:
    """One hyper-parameter: name, default, type (`float`, `int` or `bool`) and allowed interval."""

    name: str
    default: float | int
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    help: str = ""

    def interval(self) -> str:
        if self.kind is bool:
            return "true or false"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{low}, {high}{')' if self.high_open or self.high is None else ']'}"

    def check(self, value: object, method: str) -> float | int:
        """The value converted to `kind`, or `ParamError` naming method, parameter, range."""
        where = f"method {method!r}: hyper-parameter {self.name!r}"
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ParamError(f"{where} must be true or false, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
                value = value.item()
            else:
                raise ParamError(f"{where} must be a {self.kind.__name__}, got {value!r}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ParamError(f"{where} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ParamError(f"{where} must be finite, got {value!r}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            raise ParamError(f"{where} must be in {self.interval()}, got {value!r}")
        return value


def unit_interval(name: str, default: float, *, low_open: bool = False, high_open: bool = False, help: str = "") -> HParam:
    """A float hyper-parameter within [0, 1] (ends open as asked)."""
    return HParam(name, default, float, 0.0, 1.0, low_open, high_open, help)


@dataclass(frozen=True)
class ModelLayout:
    """The floating-point keys being merged (sorted), their shapes, `T`, the compute dtype."""

    keys: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    num_tasks: int
    compute_dtype: torch.dtype

    def numel(self, key: str) -> int:
        return math.prod(self.shapes[key])

    @property
    def total_numel(self) -> int:
        """`D`: the length of one flattened task vector."""
        return sum(self.numel(key) for key in self.keys)


class PassNeeded(Exception):
    """Raised by `MethodRun.finalize` when a key needs a statistics pass not run yet.

    The engine then runs the pass over every key (`observe`, `end_pass`) and calls
    `finalize` again for the same key. TIES uses it for the majority sign, which only
    matters where the signs of a column cancel exactly.
    """

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


class MethodRun(ABC):
    """One merge in progress: statistics passes, then per-key finalisation."""

    def next_pass(self) -> str | None:
        """Label of the next statistics pass, or None when `finalize` may be called."""
        return None

    def observe(self, key: str, taus: torch.Tensor) -> None:
        """See one key's stacked task vectors during a statistics pass."""
        raise NotImplementedError(f"{type(self).__name__} makes no statistics pass")

    def end_pass(self) -> None:  # noqa: B027 (a hook: most runs need no end-of-pass work)
        """Close the current statistics pass (every key has been observed once)."""

    @abstractmethod
    def finalize(self, key: str, taus: torch.Tensor) -> torch.Tensor:
        """The merged task vector of `key` at `lam = 1`, in the compute dtype (a new tensor).

        May raise `PassNeeded` (before changing any state but the request itself).
        """

    def share_scratch(self, workspace: Workspace) -> None:  # noqa: B027 (a hook: runs without scratch ignore it)
        """Keep scratch buffers in `workspace`, shared with other runs of which one works at a time
        (a search space's merges); nothing a run keeps between calls may live there."""

    def finalize_at(self, key: str, taus: torch.Tensor, lam: float) -> torch.Tensor:
        """The merged task vector of `key` at `lam`: `lam * finalize(key, taus)` for a linear method.

        A method that is not linear in `lam` overrides it (and sets `linear_in_lam=False`).
        """
        return lam * self.finalize(key, taus)


@dataclass(frozen=True)
class MergeMethod(ABC):
    """A registered merge method: name, hyper-parameters, and how to run it."""

    name: str
    hparams: tuple[HParam, ...] = ()
    summary: str = ""
    linear_in_lam: bool = True
    """`f(taus, lam) == lam * f(taus, 1)`: weaving may derive every member from one merge."""
    as_pooling: Callable[..., PoolingRun] | None = None
    """The method's shortcut as a pooling, `as_pooling(params, shape) -> PoolingRun`
    (`weaving.poolings.MethodPooling`), or None: the members are materialised key by key."""
    nonfinite_propagates: bool = False
    """A NaN or inf in any task vector makes the merged tensor non-finite (a sum does): a merge
    may then check its result instead of every input, and the inputs only when the result is
    not finite (the same error, naming the same input)."""
    model_wide: bool = field(default=False, init=False)

    @property
    def defaults(self) -> dict[str, float | int]:
        return {p.name: p.default for p in self.hparams}

    def validate(self, given: Mapping[str, object]) -> dict[str, float | int]:
        """Defaults overridden by `given`, checked; unknown names raise `ParamError`."""
        known = {p.name: p for p in self.hparams}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ParamError(
                f"method {self.name!r}: unknown hyper-parameter(s) {', '.join(map(repr, unknown))}; "
                f"valid: {choices(known)}"
            )
        return {name: p.check(given[name], self.name) if name in given else p.default for name, p in known.items()}

    @abstractmethod
    def start(self, hparams: Mapping[str, float | int], layout: ModelLayout) -> MethodRun:
        """Begin a merge with validated `hparams` over `layout`."""


class _PerTensorRun(MethodRun):
    def __init__(
        self, merge_tensor: Callable[..., torch.Tensor], hparams: Mapping[str, float | int], scratch: bool = False,
        merge_rows: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None,
    ) -> None:
        self.merge_rows = merge_rows
        self._merge_tensor = merge_tensor
        self._hparams = dict(hparams)
        self._workspace = Workspace() if scratch else None

    def share_scratch(self, workspace: Workspace) -> None:
        if self._workspace is not None:
            self._workspace = workspace

    def finalize(self, key: str, taus: torch.Tensor) -> torch.Tensor:
        if self._workspace is not None:
            return self._merge_tensor(taus, key=key, workspace=self._workspace, **self._hparams)
        return self._merge_tensor(taus, key=key, **self._hparams)


@dataclass(frozen=True)
class PerTensorMethod(MergeMethod):
    """A method computed key by key: `merge_tensor(taus, key=..., **hparams) -> Tensor`."""

    merge_tensor: Callable[..., torch.Tensor] | None = None
    scratch: bool = False
    """`merge_tensor` also takes `workspace=`: a `Workspace` for scratch buffers reused from key
    to key (never for its result)."""

    merge_rows: Callable[[Sequence[torch.Tensor]], torch.Tensor] | None = None
    """The same result from the `T` tensors as they are, unstacked (a method without
    hyper-parameters; a merge then need not copy its inputs into a stack)."""

    def start(self, hparams: Mapping[str, float | int], layout: ModelLayout) -> MethodRun:
        assert self.merge_tensor is not None
        return _PerTensorRun(self.merge_tensor, hparams, self.scratch, self.merge_rows)


@dataclass(frozen=True)
class ModelWideMethod(MergeMethod):
    """A method that needs model-wide statistics: `begin(layout, **hparams) -> MethodRun`."""

    begin: Callable[..., MethodRun] | None = None
    model_wide: bool = field(default=True, init=False)

    def start(self, hparams: Mapping[str, float | int], layout: ModelLayout) -> MethodRun:
        assert self.begin is not None
        return self.begin(layout, **hparams)


# ---------------------------------------------------------------------------- methods as poolings


class Members:
    """One key's view of a weave's members: `taus`, `merge(c)` (cached) and `stacked()` (cached).

    `build(view)` stacks the members (it gets the view, so that it can use the cached merges
    without holding a reference to it: no reference cycle keeps a key's members alive).
    """

    def __init__(self, taus: torch.Tensor, merge_of: Callable[[int], torch.Tensor],
                 build: Callable[[Members], torch.Tensor]) -> None:
        self.taus = taus
        self._merge_of = merge_of
        self._build = build
        self._merges: dict[int, torch.Tensor] = {}
        self._stacked: torch.Tensor | None = None

    def merge(self, combination: int) -> torch.Tensor:
        if combination not in self._merges:
            self._merges[combination] = self._merge_of(combination)
        return self._merges[combination]

    def stacked(self) -> torch.Tensor:
        """The members `[N, *shape]` (taus per `pool_over`, then the points in order)."""
        if self._stacked is None:
            self._stacked = self._build(self)
        return self._stacked


class PoolingRun:
    """A method pooling in progress: statistics passes over the members, then key by key.

    The generic path: `method`'s own run over a layout of `num_members` tasks, fed the stacked
    members. `finalize` may raise `weaving.methods.base.PassNeeded` as a `MethodRun` does.
    """

    def __init__(self, run: MethodRun) -> None:
        self.run = run

    def next_pass(self) -> str | None:
        label = self.run.next_pass()
        return None if label is None else f"pooling {label}"

    def observe(self, key: str, members: Members) -> None:
        self.run.observe(key, members.stacked())

    def end_pass(self) -> None:
        self.run.end_pass()

    def finalize(self, key: str, members: Members) -> torch.Tensor:
        return self.run.finalize(key, members.stacked())


@dataclass(frozen=True)
class PoolingShape:
    """What a pooling run knows of the weave: the layout of the taus, `pool_over`, and per point
    (in member order) its merge's index and its lam."""

    layout: ModelLayout
    pool_over: str
    points: tuple[tuple[int, float], ...]
    num_merges: int

    @property
    def num_members(self) -> int:
        return (self.layout.num_tasks if self.pool_over == "all" else 0) + len(self.points)

    @property
    def member_layout(self) -> ModelLayout:
        return ModelLayout(self.layout.keys, self.layout.shapes, self.num_members, self.layout.compute_dtype)



class Workspace:
    """Named scratch buffers reused from key to key.

    Fresh large tensors cost a page fault per page on first touch, which dominates
    element-wise work; a buffer grown to the largest key and reused does not.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of `shape` backed by buffer `name` (valid until the next take)."""
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.numel() < numel:
            buffer = torch.empty(numel, dtype=dtype)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)


CHUNK_COLUMNS = 1 << 20
"""About how many columns (entries of one flattened task vector) a chunk of a large key holds."""
CHUNK_ALIGN = 1 << 12
"""Every chunk starts at a multiple of this many columns (and holds at least as many)."""


def column_chunks(columns: int, row: int = 1) -> list[tuple[int, int]] | None:
    """Bounds `[a, b)` cutting a key's `columns` flattened entries into chunks of about
    `CHUNK_COLUMNS`, or None for a key small enough to be worked on whole (under two chunks).

    Each start is a multiple of `CHUNK_ALIGN` and of `row` (chunks hold whole rows of that
    length); the last chunk takes the remainder, so every chunk is at least one step long. On
    such chunks, `x[:, a:b].sum(0)` of a `[T, columns]` matrix gives the bits of
    `x.sum(0)[a:b]` (the reduction's vector blocks line up; checked for float16 to float64 in
    tests/test_methods.py), so a per-column method computed chunk by chunk holds chunk-sized
    scratch instead of several `[T, *shape]` tensors, with the same result.
    """
    unit = math.lcm(CHUNK_ALIGN, max(int(row), 1))
    step = max(unit, CHUNK_COLUMNS // unit * unit)
    count = columns // step
    if count < 2:
        return None
    return [(i * step, (i + 1) * step) for i in range(count - 1)] + [((count - 1) * step, columns)]


def stack_column_chunks(taus: torch.Tensor, row: int = 1) -> list[tuple[int, int]] | None:
    """`column_chunks` of one key's stacked task vectors `taus` `[T, *shape]`, seen as `[T, N]`
    with `N = taus[0].numel()`; None (work on the key whole) when `taus` is 1-D (stacked 0-D
    tensors), not contiguous (no chunk views of the flattened stack), or small enough."""
    return column_chunks(taus[0].numel(), row=row) if taus.ndim > 1 and taus.is_contiguous() else None


SUM_CHUNK = 1 << 19
"""Elements per chunk of `running_sum` (the chunk of its result stays in the CPU's cache: 2 MiB of
float32). On ViT-B-32's keys (T = 8, one thread) 2^16 took 1.4x the time of 2^19 (more, smaller
torch calls), 2^20 and a whole key at once about the same as 2^19; a key far larger than the
cache (an LLM's embedding) would, unchunked, stream its partial sum through memory T times."""


def running_sum(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """`sum_t rows[t]` of `T >= 1` tensors of one shape and dtype, in that dtype, summed left to
    right: every element is `((rows[0] + rows[1]) + rows[2]) + ... + rows[T-1]`, each addition
    rounded to the dtype (no wider accumulator, no pairwise order).

    The result is a new contiguous tensor (never a view of a row, also for `T = 1`). It is
    computed chunk by chunk (`SUM_CHUNK` elements; the order within each element is the same),
    so the partial sums stay in the CPU's cache and the rows are never copied into a
    `[T, *shape]` stack.
    """
    if len(rows) == 0:
        raise ValueError("running_sum: no rows")
    first = rows[0]
    for row in rows[1:]:
        if row.shape != first.shape or row.dtype != first.dtype:
            raise ValueError(f"running_sum: rows of {tuple(first.shape)} {first.dtype} and "
                             f"{tuple(row.shape)} {row.dtype}")
    out = torch.empty(first.shape, dtype=first.dtype, device=first.device)
    flat_out = out.view(-1)
    flat = [row.reshape(-1) for row in rows]
    for start in range(0, flat_out.numel(), SUM_CHUNK):
        stop = min(start + SUM_CHUNK, flat_out.numel())
        chunk = flat_out[start:stop]
        if len(flat) == 1:
            chunk.copy_(flat[0][start:stop])
        else:
            torch.add(flat[0][start:stop], flat[1][start:stop], out=chunk)
        for row in flat[2:]:
            chunk.add_(row[start:stop])
    return out


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from sha256 of the parts joined by '/': `int(sha256[:8], big) >> 1`."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def keyed_generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by `derive_seed(*parts)`: the same draws whatever the key order."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(*parts))
    return generator
