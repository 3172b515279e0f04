"""The schema of ``params.yaml``: every key, its type, its range.

``load_params(path)`` validates the whole file before any stage does work. Unknown keys are
forbidden at every level (a misspelled ``dvc exp run -S`` key is an error, not a new
parameter), and each error names the key path and the valid choices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, StrictInt, ValidationError, field_validator, model_validator

from weaving.catalogue import METHOD_ENTRIES, SETUP_ENTRIES
from weaving.clip.recipes import FinetuneRecipe, PretrainRecipe
from weaving.errors import ParamError
from weaving_pipeline.params_base import Strict, distinct
from weaving_pipeline.params_c2m3 import C2m3Params, check_c2m3  # C2M3 alignment (issue 13)
from weaving_pipeline.params_merge3 import Merge3Params, check_merge3  # MERGE3 (docs/search.md)
from weaving_pipeline.params_tsv import CompressParams, MassParams

SETUPS = SETUP_ENTRIES.keys()
"""The registered setups (``weaving.catalogue``): multi-task learning, continual learning, domain
generalisation."""


class ParamsError(ParamError):
    """A bad ``params.yaml``: the message names the file, the key path and the valid choices."""


class ModelSpec(Strict):
    """One CLIP model: an open_clip architecture and where its starting weights come from."""

    arch: str = Field(description="open_clip architecture name, e.g. ViT-B-32 or weaving-tiny-clip")
    pretrained: Literal["pipeline", "openai"] = Field(
        description="'pipeline': trained by the pretrain stage; 'openai': open_clip's OpenAI weights"
    )


class DataLimits(Strict):
    """Per-split caps on the number of images (None: no cap; 0: empty split)."""

    pretrain: int | None = Field(ge=0)
    train: int | None = Field(ge=0)
    val: int | None = Field(ge=0)
    test: int | None = Field(ge=0)


class DataParams(Strict):
    seed: int = 0
    limits: DataLimits
    allow_download: bool = False
    raw_dir: str = "data/raw"


class ContinualBenchmark(Strict):
    """A class-incremental benchmark: ``dataset`` split into ``splits`` chunks of classes."""

    dataset: str
    splits: int = Field(ge=2)
    seed: int = 0


class Suite(Strict):
    mtl: list[str] = Field(min_length=2, description="multi-task datasets; DG leaves one out at a time")
    cl: list[str] = Field(min_length=1, description="names of entries of cl_benchmarks")

    @field_validator("mtl", "cl")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        return distinct(names)


class FinetuneParams(FinetuneRecipe):
    """A fine-tuning recipe, with optional per-dataset overrides of any recipe field."""

    per_task: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def recipe_for(self, task: str) -> dict[str, Any]:
        """The recipe fields for ``task``: the shared ones updated by its override."""
        fields = self.model_dump(exclude={"per_task"})
        override = self.per_task.get(task, {})
        if "steps" in override or "epochs" in override:
            fields["steps"] = fields["epochs"] = None
        fields.update(override)
        FinetuneRecipe(**fields)
        return fields

    @model_validator(mode="after")
    def _overrides_are_recipes(self) -> FinetuneParams:
        for task in self.per_task:
            try:
                self.recipe_for(task)
            except ValidationError as error:
                raise ValueError(f"per_task.{task}: {_first_message(error)}") from None
        return self


class EvalParams(Strict):
    batch_size: int = Field(ge=1)
    workers: int = Field(default=1, ge=1, description=(
        "weave stages: evaluations run at once, in threads, each on one torch thread (1: one at a "
        "time on `threads` torch threads)"))


class MethodParams(Strict):
    """A merge method's hyper-parameters, the authors' recommended lam and its search spaces."""

    hparams: dict[str, float | int | bool] = Field(default_factory=dict)
    recommended_lam: float | None = Field(
        default=None, description="the authors' recommended lam; default: the method's catalogue entry")
    search_space: dict[str, list[float]]
    space: dict[str, list[float | int | bool]] = Field(
        default_factory=dict, description="hyper-parameter axes woven together with lam in every setup, e.g. "
        "{density: [0.1, 0.2, 0.3]} (docs/merging.md, 'Search spaces over hyper-parameters'); the report compares "
        "this weave with the one over lam only")

    @field_validator("search_space")
    @classmethod
    def _every_setup(cls, spaces: dict[str, list[float]]) -> dict[str, list[float]]:
        unknown = [s for s in spaces if s not in SETUPS]
        if unknown:
            raise ValueError(f"unknown setup(s) {unknown}; valid: {sorted(SETUPS)}")
        missing = [s for s in SETUPS if s not in spaces]
        if missing:
            raise ValueError(f"no search space for setup(s) {missing}")
        return spaces


class ArtifactChoice(Strict):
    """Which woven models the weave stages keep under `models/woven/` (one file per scenario)."""

    pooling: str = "avg"
    pool_over: Literal["all", "augmented"] = "all"
    setups: list[str] = Field(default_factory=lambda: ["mtl"], description="setups whose woven models are kept")

    @field_validator("setups")
    @classmethod
    def _known_setups(cls, setups: list[str]) -> list[str]:
        unknown = [s for s in setups if s not in SETUPS]
        if unknown:
            raise ValueError(f"unknown setup(s) {unknown}; valid: {sorted(SETUPS)}")
        return setups


class BootstrapParams(Strict):
    """Bootstrap intervals over test images of each weave stage's averages and gains (`weaving.stats`)."""

    resamples: int = Field(default=1000, ge=100, description="bootstrap draws (at least 100: weaving.stats.MIN_RESAMPLES)")
    level: float = Field(default=0.95, gt=0, lt=1, description="the intervals' coverage")
    seed: int = Field(default=0, description="seed of the draws")


class WeaveParams(Strict):
    poolings: list[str] = Field(min_length=1)
    pool_over: list[Literal["all", "augmented"]] = Field(min_length=1)
    seed: int = 0
    artifact: ArtifactChoice = ArtifactChoice()
    key_set: Literal["visual", "image_encoder"] = Field(
        default="visual", description="what model-wide methods (TIES, PCB) flatten over: the image encoder's keys, "
        "or the Weight Weaving authors' ImageEncoder set (plus the frozen text-side keys with zero deltas)")
    bootstrap: BootstrapParams = BootstrapParams()
    method_poolings: dict[str, dict[str, float | int | bool]] = Field(
        default_factory=dict, description="merge methods used as the pooling function, at their hyper-parameters, "
        "e.g. {ties: {density: 0.2}, tsv: {}}: each method's members over A* merged by them at lam 1 "
        "(docs/merging.md, 'Merge methods as poolings')")


class Params(Strict):
    """The whole of ``params.yaml``."""

    profile: Literal["embedded", "smoke", "paper"]
    seed: int = Field(default=0, description="pretraining's seed, and the replicate that the stages run once "
                      "(compress, mass, merge3) and the report's extra sections read; one of `seeds`")
    seeds: list[StrictInt] = Field(min_length=1, description="the replicates: finetune, finetune_sequential, "
                                   "taskvectors and weave run once per seed (the report gives means, standard "
                                   "deviations and 95% intervals over them)")
    threads: int = Field(default=2, ge=1, description="torch's intra-op thread count in every stage (results "
                         "depend on it; recorded in dvc.lock)")
    launch: str = Field(default="python", min_length=1,
                        description="how fine-tuning stages start: 'python', or e.g. 'torchrun --nproc_per_node=gpu'")
    models: list[str] = Field(min_length=1)
    model_specs: dict[str, ModelSpec]
    datasets: list[str] = Field(min_length=1)
    data: DataParams
    suite: Suite
    cl_benchmarks: dict[str, ContinualBenchmark]
    pretrain: PretrainRecipe | None = Field(description="needed when a model has pretrained: pipeline")
    finetune: FinetuneParams
    sequential: FinetuneParams
    eval: EvalParams
    setups: list[str] = Field(min_length=1, description="evaluation setups of weaving (weaving.catalogue)")
    methods: list[str] = Field(min_length=1)
    method_params: dict[str, MethodParams]
    weave: WeaveParams
    compress: CompressParams
    mass: MassParams
    c2m3: C2m3Params = Field(description="the C2M3 alignment branch (stages align_train, align)")
    merge3: Merge3Params  # MERGE3 (docs/search.md, "Pipeline")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if any(seed < 0 for seed in seeds):
            raise ValueError(f"seeds must be non-negative integers, got {seeds}")
        return distinct(seeds)

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.seed not in self.seeds:
            raise ValueError(f"seed {self.seed} is not in seeds {self.seeds}: the stages that run once "
                             "(compress, mass, merge3) read seed's replicate; list it in seeds or set seed to one of them")
        _require_subset("models", self.models, "model_specs", self.model_specs)
        _require_subset("suite.cl", self.suite.cl, "cl_benchmarks", self.cl_benchmarks)
        _require_subset("methods", self.methods, "method_params", self.method_params)
        needed = list(self.suite.mtl) + [self.cl_benchmarks[b].dataset for b in self.suite.cl]
        _require_subset("suite (its datasets)", needed, "datasets", self.datasets)
        _require_subset("finetune.per_task", list(self.finetune.per_task), "suite.mtl", self.suite.mtl)
        cl_datasets = sorted({self.cl_benchmarks[b].dataset for b in self.suite.cl})
        _require_subset("sequential.per_task", list(self.sequential.per_task), "the suite.cl datasets", cl_datasets)
        if self.pretrain is None and any(self.model_specs[m].pretrained == "pipeline" for m in self.models):
            raise ValueError("pretrain: a recipe is needed, since a model has pretrained: pipeline")
        _require_subset("weave.artifact.pooling", [self.weave.artifact.pooling], "weave.poolings",
                        self.weave.poolings)
        _require_subset("weave.artifact.pool_over", [self.weave.artifact.pool_over], "weave.pool_over",
                        self.weave.pool_over)
        self._check_registries()
        check_c2m3(self.c2m3, self.datasets)
        check_merge3(self.merge3, len(self.suite.mtl), self.data.limits.model_dump())  # MERGE3
        return self

    def _check_registries(self) -> None:
        from weaving import METHODS, POOLINGS, parse_search_space
        from weaving.datasets import DATASETS

        _require_subset("datasets", self.datasets, "the dataset registry", DATASETS)
        _require_subset("setups", self.setups, "the setup registry", SETUPS)
        _require_subset("methods", self.methods, "the method registry", METHODS)
        _require_subset("method_params", list(self.method_params), "the method registry", METHODS)
        _require_subset("weave.poolings", self.weave.poolings, "the pooling registry", POOLINGS)
        for name, spec in self.method_params.items():
            try:
                METHODS[name].validate(spec.hparams)
            except ValueError as error:
                raise ValueError(f"method_params.{name}.hparams: {error}") from None
            for setup, space in spec.search_space.items():
                try:
                    parse_search_space(space)
                except ValueError as error:
                    raise ValueError(f"method_params.{name}.search_space.{setup}: {error}") from None
            if spec.space:
                _check_weave(f"method_params.{name}.space", name, space=spec.space, hparams={
                    key: value for key, value in spec.hparams.items() if key not in spec.space})
        for name, pooling_params in self.weave.method_poolings.items():
            _check_weave(f"weave.method_poolings.{name}", None, pooling=name, pooling_params=pooling_params)

    def recommended_lam(self, method: str) -> float:
        """The method's recommended lam: from params when given, else from its catalogue entry."""
        given = self.method_params[method].recommended_lam
        return METHOD_ENTRIES[method].recommended_lam if given is None else given

    def search_space(self, method: str, setup: str) -> list[float]:
        from weaving import parse_search_space

        return parse_search_space(self.method_params[method].search_space[setup])


def _check_weave(where: str, method: str | None, **request: object) -> None:
    """The library's own validation of a weave request (`weaving.request.validate_request`), its error
    prefixed with the params key."""
    from weaving.request import validate_request

    try:
        validate_request(method, lambdas=[1.0], **{"pooling": "avg", **request})
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _require_subset(what: str, names, where: str, valid) -> None:
    unknown = list(dict.fromkeys(n for n in names if n not in valid))
    if unknown:
        raise ValueError(f"{what}: unknown {unknown}; valid choices in {where}: {sorted(valid)}")


def _first_message(error: ValidationError) -> str:
    first = error.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def _allowed_keys(loc: tuple) -> list[str]:
    """The field names the schema allows at ``loc`` (the parent of an unknown key)."""
    model: Any = Params
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            return []
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if model is None:
            args = getattr(annotation, "__args__", ())
            model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if model is None:
                return []
    return sorted(getattr(model, "model_fields", {}))


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: ``source: key.path: what is wrong (valid choices)``."""
    lines = []
    for problem in error.errors():
        loc = tuple(problem["loc"])
        path = ".".join(str(p) for p in loc) or "<top level>"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            message = "unknown key" + (f"; valid keys here: {', '.join(allowed)}" if allowed else "")
        elif problem["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{source}: {path}: {message}")
    return "\n".join(lines)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise :class:`ParamsError` naming every bad key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(format_validation_error(error, str(path))) from None
