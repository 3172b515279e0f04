"""Genomes of the evolutionary search and their decoding into a merged task vector.

A genome holds, per task `t`, a coefficient `c_t` (every method) and, for TIES and DARE, a
density `d_t` (the fraction of the task vector kept). Genes live on grids (`GeneGrid`,
MERGE3: 0..1 in steps of 0.1); the search works on the grid levels (integers).

Decoding goes through the project's merge methods (`weaving.merge`, `weaving.methods`),
whose TIES and DARE take one scalar `lam` and one global density or drop rate:

- Task Arithmetic: `M = sum_t c_t tau_t` (= `merge("task_arithmetic", [c_t tau_t], lam=1)`).
- TIES: each task vector is scaled by its coefficient and trimmed at its own density
  before one TIES run with `density=1` (no further trim) and `lam=1`:
  `M = merge("ties", [c_t trim_{d_t}(tau_t)], lam=1, density=1)`, with `trim_d(tau_t)`
  the method's trim rule (`weaving.methods.ties`: keep `|x| >= kth`, `kth` the
  `(D - int(D d))`-th smallest magnitude), which equals `merge("ties", [tau_t], lam=1,
  density=d)` (TIES of one task vector is its trim; the tests check it). When all `d_t` equal
  `d` this is `merge("ties", [c_t tau_t], lam=1, density=d)`: TIES's trim is per task
  vector and commutes with a positive scale, and its sign election and disjoint mean then
  see the scaled vectors. With all `c_t = c` it is TIES at `lam = c`.
- DARE: `M = sum_t c_t * tau_t * keep_t / (1 - p_t)` with `p_t = 1 - d_t` and `keep_t` the
  method's own seeded mask (`weaving.methods.dare.dare_keep_mask(seed, task t, key)`). With
  all `p_t = p` it equals
  `merge("dare", [c_t tau_t], lam=1, p=p, seed=seed)`.

Sums (Task Arithmetic, DARE) are computed on the flattened task vectors (`MergeDecoder`);
trim and drop masks are cached per (task, density): the grid has few levels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from weaving.errors import InputError, ParamError, choices

SEARCH_METHODS: tuple[str, ...] = ("task_arithmetic", "ties", "dare")
"""Merge methods a genome can describe."""

_GRID_TOLERANCE = 1e-9


def check_search_method(method: str) -> str:
    """`method` if the search supports it, else `ParamError` listing the supported ones."""
    if method not in SEARCH_METHODS:
        raise ParamError(f"unknown search method {method!r}; valid: {choices(SEARCH_METHODS)}")
    return method


@dataclass(frozen=True)
class GeneGrid:
    """The values `low, low + step, ..., high` a gene may take (`name` for messages)."""

    low: float
    high: float
    step: float = 0.1
    name: str = "gene"

    def __post_init__(self) -> None:
        for what, value in (("low", self.low), ("high", self.high), ("step", self.step)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ParamError(f"{self.name} bounds: {what} must be a finite number, got {value!r}")
        if self.low >= self.high:
            raise ParamError(
                f"{self.name} bounds are reversed or empty: low={self.low!r} must be below high={self.high!r}"
            )
        if self.step <= 0:
            raise ParamError(f"{self.name} grid step must be positive, got {self.step!r}")
        intervals = (self.high - self.low) / self.step
        if abs(intervals - round(intervals)) > 1e-6:
            raise ParamError(
                f"{self.name} grid: (high - low) / step = {intervals:g} must be a whole number "
                f"(low={self.low}, high={self.high}, step={self.step})"
            )

    @property
    def levels(self) -> int:
        """The number of grid values."""
        return round((self.high - self.low) / self.step) + 1

    def value(self, level: int) -> float:
        """The grid value at `level` (0 .. levels - 1), rounded to 10 decimals."""
        if not 0 <= level < self.levels:
            raise ParamError(f"{self.name} level {level} outside 0..{self.levels - 1}")
        return round(self.low + level * self.step, 10)

    def level(self, value: float) -> int:
        """The level of a grid value (`ParamError` if off the grid)."""
        position = (value - self.low) / self.step
        level = round(position)
        if abs(position - level) > 1e-6 or not 0 <= level < self.levels:
            raise ParamError(f"{self.name} value {value!r} is not on the grid {self.low}:{self.high}:{self.step}")
        return level

    def values(self) -> list[float]:
        return [self.value(k) for k in range(self.levels)]


def default_coefficient_grid() -> GeneGrid:
    return GeneGrid(0.0, 1.0, 0.1, "coefficient")


def default_density_grid() -> GeneGrid:
    return GeneGrid(0.1, 1.0, 0.1, "density")


@dataclass(frozen=True)
class Genome:
    """Decoded genes: `coefficients[task]`, and `densities[task]` for TIES and DARE (else None)."""

    coefficients: Mapping[str, float]
    densities: Mapping[str, float] | None = None

    def to_dict(self) -> dict:
        out: dict = {"coefficients": dict(self.coefficients)}
        if self.densities is not None:
            out["densities"] = dict(self.densities)
        return out


@dataclass(frozen=True)
class GenomeSpec:
    """The genes of one search: per-task coefficients, plus per-task densities for TIES and DARE.

    Gene order: `coefficient:<task>` for every task, then `density:<task>` for every task.
    """

    method: str
    tasks: tuple[str, ...]
    coefficient: GeneGrid = field(default_factory=default_coefficient_grid)
    density: GeneGrid = field(default_factory=default_density_grid)

    def __post_init__(self) -> None:
        check_search_method(self.method)
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ParamError(f"a genome needs distinct task names, got {list(self.tasks)}")
        if self.has_density and not (0 < self.density.low and self.density.high <= 1):
            raise ParamError(
                f"density bounds must lie in (0, 1] for {self.method} (fraction kept), "
                f"got [{self.density.low}, {self.density.high}]"
            )

    @property
    def has_density(self) -> bool:
        return self.method in ("ties", "dare")

    @property
    def grids(self) -> list[GeneGrid]:
        grids = [self.coefficient] * len(self.tasks)
        if self.has_density:
            grids += [self.density] * len(self.tasks)
        return grids

    @property
    def gene_names(self) -> list[str]:
        names = [f"coefficient:{t}" for t in self.tasks]
        if self.has_density:
            names += [f"density:{t}" for t in self.tasks]
        return names

    @property
    def num_genes(self) -> int:
        return len(self.grids)

    def decode(self, levels: Sequence[int] | np.ndarray) -> Genome:
        """The genome at integer grid `levels` (one per gene, `gene_names` order)."""
        levels = [int(v) for v in np.asarray(levels).reshape(-1)]
        if len(levels) != self.num_genes:
            raise ParamError(f"expected {self.num_genes} genes ({', '.join(self.gene_names)}), got {len(levels)}")
        values = [grid.value(level) for grid, level in zip(self.grids, levels)]
        count = len(self.tasks)
        coefficients = dict(zip(self.tasks, values[:count]))
        densities = dict(zip(self.tasks, values[count:])) if self.has_density else None
        return Genome(coefficients, densities)

    def encode(self, genome: Genome) -> list[int]:
        """The grid levels of `genome` (inverse of `decode`)."""
        levels = [self.coefficient.level(genome.coefficients[t]) for t in self.tasks]
        if self.has_density:
            if genome.densities is None:
                raise ParamError(f"{self.method} genome needs densities")
            levels += [self.density.level(genome.densities[t]) for t in self.tasks]
        return levels

    def random_levels(self, rng: np.random.Generator) -> list[int]:
        """Uniform random grid levels, one per gene."""
        return [int(rng.integers(0, grid.levels)) for grid in self.grids]


TaskVector = dict[str, torch.Tensor]


class MergeDecoder:
    """Merged task vectors of genomes over fixed task vectors (one per task of the spec).

    The task vectors are held flattened, `[T, P]` over their keys in sorted order, in the
    engine's compute dtype (float64 if any key is float64, else float32). Task Arithmetic
    and DARE are sums of per-task vectors, computed as one weighted sum of the flattened
    (masked) vectors; the tests check them against `merge("task_arithmetic" / "dare", ...)`.
    TIES runs through `merge("ties", ...)`. Trim and drop masks are cached per (task,
    density); `seed` is DARE's mask seed.
    """

    def __init__(self, task_vectors: Mapping[str, Mapping[str, torch.Tensor]], *, seed: int = 0) -> None:
        if not isinstance(task_vectors, Mapping) or not task_vectors:
            raise InputError("task vectors must be a non-empty mapping task -> state dict")
        self.tasks = tuple(task_vectors)
        first = task_vectors[self.tasks[0]]
        self.keys = tuple(sorted(first))
        for task in self.tasks:
            tau = task_vectors[task]
            if set(tau) != set(self.keys):
                raise InputError(f"task vector of {task!r} has other keys than that of {self.tasks[0]!r}")
            for key in self.keys:
                value = tau[key]
                if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                    raise InputError(f"task vector of {task!r}: key {key!r} is not a floating-point tensor")
                if value.shape != first[key].shape:
                    raise InputError(f"task vector of {task!r}: key {key!r} has shape {tuple(value.shape)}, "
                                     f"that of {self.tasks[0]!r} {tuple(first[key].shape)}")
        self.shapes = {k: tuple(first[k].shape) for k in self.keys}
        self.dtypes = {k: first[k].dtype for k in self.keys}
        self.compute_dtype = torch.float64 if torch.float64 in self.dtypes.values() else torch.float32
        self._sizes = [math.prod(self.shapes[k]) for k in self.keys]
        self._flat = torch.stack([
            torch.cat([task_vectors[t][k].reshape(-1).to(self.compute_dtype) for k in self.keys])
            if self.keys else torch.zeros(0, dtype=self.compute_dtype)
            for t in self.tasks
        ])
        self.seed = int(seed)
        self._ties_masks: dict[tuple[int, float], torch.Tensor] = {}
        self._sorted_magnitudes: dict[int, torch.Tensor] = {}
        self._dare_dropped: dict[tuple[int, float], torch.Tensor] = {}

    def unflatten(self, flat: torch.Tensor) -> TaskVector:
        """A flat `[P]` vector back to a task vector (keys sorted, each key's dtype)."""
        out = {}
        for key, part in zip(self.keys, torch.split(flat, self._sizes)):
            out[key] = part.reshape(self.shapes[key]).to(self.dtypes[key])
        return out

    def task_vector(self, task: str) -> TaskVector:
        return self.unflatten(self._flat[self.tasks.index(task)].clone())

    def _check(self, spec: GenomeSpec) -> None:
        if tuple(spec.tasks) != self.tasks:
            raise ParamError(f"genome tasks {list(spec.tasks)} differ from the task vectors' {list(self.tasks)}")

    def _ties_mask(self, index: int, density: float) -> torch.Tensor:
        """TIES's trim of task `index` at `density`: `|x| >= kth`, `kth` the `(P - k)`-th smallest
        `|x|` (1-based), `k = int(P * density)`; all kept when `P - k < 1` (`weaving.methods.ties`).

        The magnitudes are sorted once per task; the tests check every mask against
        `merge("ties", [tau_t], density=d)`.
        """
        from weaving.methods.ties import ties_trim_rank

        key = (index, round(density, 10))
        if key not in self._ties_masks:
            magnitudes = self._flat[index].abs()
            rank = ties_trim_rank(magnitudes.numel(), density)
            if rank is None:
                mask = torch.ones_like(magnitudes, dtype=torch.bool)
            else:
                if index not in self._sorted_magnitudes:
                    self._sorted_magnitudes[index] = torch.sort(magnitudes).values
                mask = magnitudes >= self._sorted_magnitudes[index][rank]
            self._ties_masks[key] = mask
        return self._ties_masks[key]

    def _dare_vector(self, index: int, density: float) -> torch.Tensor:
        """`tau_t * keep_t / (1 - p)`, flat, with `p = 1 - density` and DARE's own masks."""
        from weaving.methods.dare import dare_keep_mask

        key = (index, round(density, 10))
        if key not in self._dare_dropped:
            p = 1.0 - density
            keep = torch.cat([
                dare_keep_mask(self.shapes[k], p=p, seed=self.seed, task=index, key=k).reshape(-1) for k in self.keys
            ])
            self._dare_dropped[key] = torch.where(keep, self._flat[index], 0.0) / (1.0 - p)
        return self._dare_dropped[key]

    def merged(self, spec: GenomeSpec, genome: Genome) -> TaskVector:
        """The merged task vector of `genome` (see the module docstring for each method)."""
        from weaving import merge

        self._check(spec)
        c = torch.tensor([genome.coefficients[t] for t in self.tasks], dtype=self.compute_dtype)
        if spec.method == "task_arithmetic":
            return self.unflatten(c @ self._flat)
        assert genome.densities is not None
        d = [genome.densities[t] for t in self.tasks]
        if spec.method == "dare":
            return self.unflatten(sum(c[i] * self._dare_vector(i, d[i]) for i in range(len(self.tasks))))
        trimmed = [self.unflatten(self._flat[i] * self._ties_mask(i, d[i]) * c[i]) for i in range(len(self.tasks))]
        return merge("ties", trimmed, lam=1.0, density=1.0)
