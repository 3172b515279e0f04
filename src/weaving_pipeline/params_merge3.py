"""The ``merge3:`` block of ``params.yaml``: MERGE3, evolutionary merging with IRT-estimated fitness.

``merge3`` (docs/search.md, "Pipeline"; the stage ``merge3@<model>``):

- ``methods``: merge methods whose per-task genes are searched (``task_arithmetic``, ``ties``,
  ``dare``); ``fitness``: the fitness kinds searched, each a separate search (``full`` on every
  validation item, ``anchors``, ``mp_irt``, ``gmp_irt``); ``reported``: the estimated kind whose
  search the report's claims test against ``full`` (MERGE3's ``gmp_irt`` by default).
- ``items``: the validation items, a seeded class-proportional slice of ``per_task`` images of
  each multi-task dataset from the prepared ``split`` (``pretrain`` or ``val``), which must be
  disjoint from the fine-tuning train split and from the test split (the stage checks the ids).
- ``anchors_per_task``: anchor items per task (at most ``items.per_task``).
- ``population_size``: random merges in the IRT response population besides the pretrained
  model and the ``T`` fine-tuned endpoints; at least ``max(0, max(10, 2 (irt_dims + 1)) - 1 - T)``
  (``weaving.search.minimum_population_size``: the IRT fit needs that many subjects).
- ``irt_dims``: dimensions of the multidimensional 2PL model.
- ``search``: the GA's ``population`` and ``generations`` (the initial one included) and the
  ``algorithm`` (``ga`` on the mean over tasks, ``nsga2`` with one objective per task).
- ``coefficient_bounds`` / ``density_bounds`` ``[low, high]`` with grid ``step``: the gene grids
  (densities, TIES and DARE's fraction kept, in (0, 1]).
- ``audit``: also evaluate every candidate of the estimated searches on all items (not counted
  as spent; errors of each estimator on its own candidates).
- ``seed``: anchors, population, IRT initialisation and searches derive their seeds from it.

The names below repeat the library's (``weaving.search``), so that validating params does not
import the search code; ``tests/test_search_pipeline.py`` checks that they agree.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from weaving_pipeline.params_base import Strict, distinct

SEARCH_METHODS = ("task_arithmetic", "ties", "dare")
"""`weaving.search.SEARCH_METHODS`."""
FITNESS_KINDS = ("full", "anchors", "mp_irt", "gmp_irt")
"""`weaving.search.FITNESS_KINDS`."""
ESTIMATED_KINDS = ("anchors", "mp_irt", "gmp_irt")
ALGORITHMS = ("ga", "nsga2")
"""`weaving.search.evolve.ALGORITHMS`."""
ITEM_SPLITS = ("pretrain", "val")
"""Prepared splits the validation items may come from (never ``train`` or ``test``)."""


def minimum_subjects(irt_dims: int) -> int:
    """`weaving.search.irt.minimum_subjects`: `max(10, 2 (irt_dims + 1))`."""
    return max(10, 2 * (irt_dims + 1))


def minimum_population_size(num_tasks: int, irt_dims: int) -> int:
    """`weaving.search.minimum_population_size`: `max(0, minimum_subjects(irt_dims) - 1 - num_tasks)`."""
    return max(0, minimum_subjects(irt_dims) - 1 - num_tasks)


class Merge3Items(Strict):
    """The validation items: `per_task` images of each task, a seeded class-proportional slice of `split`."""

    split: Literal["pretrain", "val"] = Field(
        description="prepared split the items come from, disjoint from train and test")
    per_task: int = Field(ge=1, description="items per task")
    seed: int = Field(default=0, description="seed of the slice")


class Merge3Search(Strict):
    """The evolutionary search: GA (or NSGA-II) population and generations (the initial one included)."""

    population: int = Field(ge=2)
    generations: int = Field(ge=1)
    algorithm: Literal["ga", "nsga2"] = "ga"


def _check_bounds(bounds: list[float], step: float, what: str) -> list[float]:
    low, high = bounds
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"[{low}, {high}]: bounds must be finite numbers")
    if low >= high:
        raise ValueError(f"[{low}, {high}] is reversed or empty: low must be below high")
    if what == "density" and not (0.0 < low and high <= 1.0):
        raise ValueError(f"[{low}, {high}]: densities (fraction kept) must lie in (0, 1]")
    intervals = (high - low) / step
    if abs(intervals - round(intervals)) > 1e-6:
        raise ValueError(f"[{low}, {high}]: (high - low) / step = {intervals:g} must be a whole number "
                         f"(merge3.step = {step:g})")
    return bounds


class Merge3Params(Strict):
    """MERGE3 (Mencattini et al., ICML 2025) on the multi-task suite: see the module docstring."""

    methods: list[Literal["task_arithmetic", "ties", "dare"]] = Field(min_length=1)
    fitness: list[Literal["full", "anchors", "mp_irt", "gmp_irt"]] = Field(min_length=1)
    reported: Literal["anchors", "mp_irt", "gmp_irt"] = Field(
        default="gmp_irt", description="the estimated fitness whose search the claims compare with full")
    items: Merge3Items
    anchors_per_task: int = Field(ge=1)
    population_size: int = Field(ge=0)
    irt_dims: int = Field(default=2, ge=1)
    search: Merge3Search
    step: float = Field(default=0.1, gt=0, description="gene grid step")
    coefficient_bounds: list[float] = Field(default=[0.0, 1.0], min_length=2, max_length=2)
    density_bounds: list[float] = Field(default=[0.1, 1.0], min_length=2, max_length=2)
    audit: bool = False
    seed: int = 0

    @field_validator("methods", "fitness")
    @classmethod
    def _distinct(cls, names: list[str]) -> list[str]:
        return distinct(names)

    @field_validator("reported")
    @classmethod
    def _searched(cls, kind: str, info: ValidationInfo) -> str:
        fitness = info.data.get("fitness")
        if fitness is not None and "full" in fitness and kind not in fitness:
            raise ValueError(f"{kind!r} is not one of the searched fitness kinds {fitness}")
        return kind

    @field_validator("anchors_per_task")
    @classmethod
    def _at_most_items(cls, anchors: int, info: ValidationInfo) -> int:
        items = info.data.get("items")
        if items is not None and anchors > items.per_task:
            raise ValueError(f"{anchors} anchors per task is more than the {items.per_task} items per task "
                             "(merge3.items.per_task)")
        return anchors

    @field_validator("coefficient_bounds", "density_bounds")
    @classmethod
    def _bounds(cls, bounds: list[float], info: ValidationInfo) -> list[float]:
        step = info.data.get("step")
        return _check_bounds(bounds, step, info.field_name.split("_")[0]) if step is not None else bounds


def check_merge3(merge3: Merge3Params, num_tasks: int, limits: dict[str, int | None]) -> None:
    """The checks that need the rest of params: the population against the IRT fit's minimum for
    `num_tasks` endpoints, the items against the data split's cap. `ValueError` naming the key
    (`Params` prefixes `merge3.`)."""
    least = minimum_population_size(num_tasks, merge3.irt_dims)
    if merge3.population_size < least:
        raise ValueError(
            f"merge3.population_size: {merge3.population_size} is below the stated minimum {least}: the IRT fit "
            f"with irt_dims={merge3.irt_dims} needs {minimum_subjects(merge3.irt_dims)} subjects and the pretrained "
            f"model and the {num_tasks} fine-tuned endpoints give {1 + num_tasks}")
    split = merge3.items.split
    cap = limits.get(split)
    if cap == 0:
        raise ValueError(f"merge3.items.split: the {split!r} split is empty (data.limits.{split} is 0); "
                         f"choose a split that the data stage fills, disjoint from train and test")
    if cap is not None and merge3.items.per_task > cap:
        raise ValueError(f"merge3.items.per_task: {merge3.items.per_task} items per task is more than "
                         f"data.limits.{split} = {cap}")
