"""The ``compress:`` and ``mass:`` blocks of ``params.yaml`` (TSV-C compression and MASS routing stages).

``compress.rank_fractions``: the TSV-C rank fractions swept by the ``compress`` stage, each in
(0, 1]; the default ``f = 1/T`` (T = the number of multi-task datasets) is always evaluated
too, and is the rank the stage writes under ``models/<model>/compressed/``.

``mass``: MASS's options (``weaving.routing.MASS``): ``threshold`` in [0, 1], ``max_tasks``
>= 1, ``layer`` (per model, the hooked block; a model not listed gets
``weaving.routing.default_layer``: 9 of 12 blocks, 20 of 24, ``round(0.75 depth)`` else) and the
ablation sweeps ``thresholds`` (each in [0, 1]) and ``layers`` (block indices; ``null`` = every
block; the model's own ``layer`` is always added). Block indices are checked against the model's
depth by the ``mass`` stage (the error names ``mass.layer.<model>`` or ``mass.layers[i]``).
"""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from weaving_pipeline.params_base import Strict


def _fractions_in_unit_interval(values: list[float]) -> list[float]:
    for i, value in enumerate(values):
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise ValueError(f"[{i}] = {value!r}: a rank fraction must be in (0, 1]")
    return values


class CompressParams(Strict):
    """TSV-C (Gargiulo et al., CVPR 2025): the rank fractions of the sweep (`1/T` always added)."""

    rank_fractions: list[float] = Field(min_length=1, description="rank fractions f in (0, 1] swept besides 1/T")

    @field_validator("rank_fractions")
    @classmethod
    def _in_range(cls, values: list[float]) -> list[float]:
        return _fractions_in_unit_interval(values)


class MassParams(Strict):
    """MASS (Crisostomi et al., 2025): routing threshold, top-K, hooked block per model, ablation sweeps."""

    threshold: float = Field(ge=0.0, le=1.0, description="a task is selected when its routing coefficient exceeds it")
    max_tasks: int = Field(ge=1, description="at most this many tasks per image (top-K)")
    layer: dict[str, int] = Field(default_factory=dict,
                                  description="per model, the block whose MLP input routes (default: default_layer)")
    thresholds: list[float] = Field(min_length=1, description="threshold sweep, each in [0, 1]")
    layers: list[int] | None = Field(default=None, description="layer sweep (block indices); null: every block")

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, values: list[float]) -> list[float]:
        for i, value in enumerate(values):
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"[{i}] = {value!r}: a threshold must be in [0, 1]")
        return values

    @field_validator("layer")
    @classmethod
    def _layer_non_negative(cls, values: dict[str, int]) -> dict[str, int]:
        for model, value in values.items():
            if value < 0:
                raise ValueError(f"{model} = {value}: a block index must be >= 0")
        return values

    @field_validator("layers")
    @classmethod
    def _layers_non_negative(cls, values: list[int] | None) -> list[int] | None:
        for i, value in enumerate(values or []):
            if value < 0:
                raise ValueError(f"[{i}] = {value}: a block index must be >= 0")
        return values


def check_layers(mass: MassParams, model: str, depth: int, models: list[str]) -> tuple[int | None, list[int]]:
    """(the model's hooked block or None for the library default, the layer sweep) checked against `depth`.

    Raises `ParamsError` naming `mass.layer.<model>` or `mass.layers[i]` when a block index is out of
    range, and `mass.layer` when it lists a model not in `models`.
    """
    from weaving_pipeline.params import ParamsError

    unknown = [m for m in mass.layer if m not in models]
    if unknown:
        raise ParamsError(f"params.yaml: mass.layer: unknown model(s) {unknown}; valid: {models}")
    layer = mass.layer.get(model)
    if layer is not None and layer >= depth:
        raise ParamsError(f"params.yaml: mass.layer.{model}: block {layer} is out of range: {model} has {depth} "
                          f"blocks (0..{depth - 1})")
    sweep = list(range(depth)) if mass.layers is None else list(mass.layers)
    for i, value in enumerate(sweep):
        if value >= depth:
            raise ParamsError(f"params.yaml: mass.layers[{i}]: block {value} is out of range: {model} has {depth} "
                              f"blocks (0..{depth - 1})")
    return layer, sweep
