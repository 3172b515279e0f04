"""Permutation specs: which axes of which state-dict entries each permutation group acts on.

A hidden unit (a neuron, a conv channel) can be moved to another position without changing
the function a network computes, provided every parameter that reads or writes that unit is
re-indexed the same way: the rows of the layer that produces it, its bias, the norm layer
that normalises it (weight, bias, running statistics), and the columns of every layer that
consumes it. A *permutation group* names one such set of units; a spec maps every state-dict
key to one entry per tensor axis: the group permuting that axis, or ``None``.

This is the ``axes_to_perm`` / ``perm_to_axes`` pair of Git Re-Basin (Ainsworth et al., 2023)
and of C2M3's reference code (``crisostomi/cycle-consistent-model-merging``,
``src/ccmm/matching/permutation_spec.py``), held as plain data so that users can write it as
JSON for their own architectures (``docs/align.md``, "Spec file format")::

    {"format": "weaving.align.spec", "version": 1,
     "axes": {"fc1.weight": ["h1", null], "fc1.bias": ["h1"],
              "fc2.weight": [null, "h1"], "fc2.bias": [null]}}

Every key of the models must be listed (``[]`` for a 0-d tensor, ``null`` for axes that no
group permutes), so that a forgotten key is an error, not a silently broken merge.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from weaving.atomic import write_json
from weaving.errors import InputError, ParamError

__all__ = [
    "BUILTIN_SPECS",
    "SPEC_FORMAT",
    "SPEC_VERSION",
    "PermutationSpec",
    "builtin_spec",
    "check_models",
    "load_spec",
    "mlp_spec",
    "resnet_spec",
    "save_spec",
    "vgg_spec",
]

SPEC_FORMAT = "weaving.align.spec"
SPEC_VERSION = 1
BUILTIN_SPECS = ("mlp", "resnet", "vgg")
NORMS = ("layer", "batch")


@dataclass(frozen=True)
class PermutationSpec:
    """``axes[key]``: for each axis of the tensor ``key``, the permutation group acting on it, or ``None``.

    ``groups`` (derived): group -> list of ``(key, axis)`` it permutes, in key order. A group
    must act on at least one axis; a group may appear on several axes of one tensor.
    """

    axes: Mapping[str, tuple[str | None, ...]]
    groups: dict[str, list[tuple[str, int]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        clean: dict[str, tuple[str | None, ...]] = {}
        for key, entry in self.axes.items():
            if not isinstance(key, str) or not key:
                raise ParamError(f"permutation spec: key {key!r} is not a non-empty string")
            if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence):
                raise ParamError(f"permutation spec: axes of {key!r} must be a list (one entry per axis), "
                                 f"got {entry!r}")
            for group in entry:
                if group is not None and (not isinstance(group, str) or not group):
                    raise ParamError(f"permutation spec: axes of {key!r} hold {group!r}; each entry is a "
                                     f"group name (non-empty string) or null")
            clean[key] = tuple(entry)
        groups: dict[str, list[tuple[str, int]]] = {}
        for key in sorted(clean):
            for axis, group in enumerate(clean[key]):
                if group is not None:
                    groups.setdefault(group, []).append((key, axis))
        if not groups:
            raise ParamError("permutation spec: no axis is permuted (every entry is null); nothing to align")
        object.__setattr__(self, "axes", dict(sorted(clean.items())))
        object.__setattr__(self, "groups", groups)

    def keys(self) -> list[str]:
        """Every state-dict key the spec covers, sorted."""
        return list(self.axes)

    def permuted_keys(self) -> list[str]:
        """Keys with at least one permuted axis."""
        return [key for key, entry in self.axes.items() if any(g is not None for g in entry)]

    def to_json(self) -> dict:
        """The JSON object of the spec file format."""
        return {"format": SPEC_FORMAT, "version": SPEC_VERSION,
                "axes": {key: list(entry) for key, entry in self.axes.items()}}

    @classmethod
    def from_json(cls, obj: object, *, source: str = "spec") -> PermutationSpec:
        """Parse the spec file format; errors name ``source`` and the offending entry."""
        if not isinstance(obj, Mapping):
            raise InputError(f"{source}: a permutation spec is a JSON object with 'format', 'version' and 'axes'")
        if obj.get("format") != SPEC_FORMAT:
            raise InputError(f"{source}: 'format' must be {SPEC_FORMAT!r}, got {obj.get('format')!r}")
        if obj.get("version") != SPEC_VERSION:
            raise InputError(f"{source}: 'version' must be {SPEC_VERSION}, got {obj.get('version')!r}")
        unknown = sorted(set(obj) - {"format", "version", "axes", "description"})
        if unknown:
            raise InputError(f"{source}: unknown fields {unknown}; valid: format, version, axes, description")
        axes = obj.get("axes")
        if not isinstance(axes, Mapping) or not axes:
            raise InputError(f"{source}: 'axes' must be a non-empty object key -> [group or null per axis]")
        try:
            return cls(axes)
        except ParamError as error:
            raise InputError(f"{source}: {error}") from error


def load_spec(path: str | os.PathLike[str]) -> PermutationSpec:
    """Read a spec file (JSON, format ``weaving.align.spec`` version 1)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such spec file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a JSON file: {error}") from error
    return PermutationSpec.from_json(obj, source=str(path))


def save_spec(path: str | os.PathLike[str], spec: PermutationSpec) -> None:
    """Write ``spec`` in the spec file format, atomically."""
    write_json(path, spec.to_json())


def _linear(name: str, rows: str | None, cols: str | None) -> dict[str, tuple[str | None, ...]]:
    return {f"{name}.weight": (rows, cols), f"{name}.bias": (rows,)}


def _conv(name: str, rows: str | None, cols: str | None) -> dict[str, tuple[str | None, ...]]:
    return {f"{name}.weight": (rows, cols, None, None), f"{name}.bias": (rows,)}


def _norm(name: str, group: str, norm: str) -> dict[str, tuple[str | None, ...]]:
    entries: dict[str, tuple[str | None, ...]] = {f"{name}.weight": (group,), f"{name}.bias": (group,)}
    if norm == "batch":
        entries.update({f"{name}.running_mean": (group,), f"{name}.running_var": (group,),
                        f"{name}.num_batches_tracked": ()})
    return entries


def mlp_spec(num_layers: int, prefix: str = "layer") -> PermutationSpec:
    """Spec of ``weaving.align.models.MLP`` (and of the reference's ``MLP``): linear layers
    ``{prefix}0 .. {prefix}{L-1}``; hidden layer ``i`` (all but the last) has group ``P_i`` on
    its rows and bias, and layer ``i + 1`` has ``P_i`` on its columns. Input and output units
    are never permuted."""
    if not isinstance(num_layers, int) or num_layers < 2:
        raise ParamError(f"mlp_spec: num_layers must be an int >= 2 (one hidden layer at least), got {num_layers!r}")
    axes: dict[str, tuple[str | None, ...]] = {}
    for i in range(num_layers):
        rows = f"P_{i}" if i < num_layers - 1 else None
        cols = f"P_{i - 1}" if i > 0 else None
        axes.update(_linear(f"{prefix}{i}", rows, cols))
    return PermutationSpec(axes)


def resnet_spec(widths: Sequence[int], blocks_per_stage: int = 1, norm: str = "layer") -> PermutationSpec:
    """Spec of ``weaving.align.models.ResNet``.

    Groups: ``P_res{s}`` for the residual stream of stage ``s`` (the stem's output channels
    belong to ``P_res0``; a stage whose first block changes width or stride has a shortcut
    conv and so a new stream group, otherwise it shares the previous stage's), and
    ``P_s{s}b{b}`` for the inner channels of block ``b`` of stage ``s``. Each conv's output
    channels (rows, bias) and the norm that follows it share one group, as in the reference's
    ``ResNet20PermutationSpecBuilder``; the head's columns take the last stream group.
    """
    if norm not in NORMS:
        raise ParamError(f"resnet_spec: norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not widths or blocks_per_stage < 1:
        raise ParamError(f"resnet_spec: need at least one stage and one block per stage, got widths={widths!r}, "
                         f"blocks_per_stage={blocks_per_stage!r}")
    axes: dict[str, tuple[str | None, ...]] = {}
    stream = "P_res0"
    axes.update(_conv("stem.conv", stream, None))
    axes.update(_norm("stem.norm", stream, norm))
    width_in = widths[0]
    for s, width in enumerate(widths):
        for b in range(blocks_per_stage):
            name = f"stages.{s}.{b}"
            inner = f"P_s{s}b{b}"
            has_shortcut = b == 0 and (s > 0 or width != width_in)
            out_stream = f"P_res{s}" if has_shortcut else stream
            axes.update(_conv(f"{name}.conv1", inner, stream))
            axes.update(_norm(f"{name}.norm1", inner, norm))
            axes.update(_conv(f"{name}.conv2", out_stream, inner))
            axes.update(_norm(f"{name}.norm2", out_stream, norm))
            if has_shortcut:
                axes.update(_conv(f"{name}.shortcut.conv", out_stream, stream))
                axes.update(_norm(f"{name}.shortcut.norm", out_stream, norm))
            stream = out_stream
            width_in = width
    axes.update(_linear("head", None, stream))
    return PermutationSpec(axes)


def vgg_spec(num_convs: int, num_dense: int = 3, norm: str = "layer") -> PermutationSpec:
    """Spec of ``weaving.align.models.VGG``: a chain, as the reference's ``VGG16PermutationSpecBuilder``.

    Conv ``i`` (``features.<i>.conv``) has group ``P_conv{i}`` on its rows and bias, shared by the
    norm after it (``features.<i>.norm``), and ``P_conv{i-1}`` on its columns (the first conv's
    columns are the image channels: unpermuted). Max pools and the flatten of a 1x1 map keep
    channels in place, so the first classifier layer's columns take the last conv's group;
    hidden classifier layer ``j`` has ``P_dense{j}``; the output rows are never permuted.
    """
    if norm not in NORMS:
        raise ParamError(f"vgg_spec: norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not isinstance(num_convs, int) or num_convs < 1 or not isinstance(num_dense, int) or num_dense < 1:
        raise ParamError(f"vgg_spec: need at least one conv and one linear layer, got num_convs={num_convs!r}, "
                         f"num_dense={num_dense!r}")
    axes: dict[str, tuple[str | None, ...]] = {}
    previous: str | None = None
    for i in range(num_convs):
        group = f"P_conv{i}"
        axes.update(_conv(f"features.{i}.conv", group, previous))
        axes.update(_norm(f"features.{i}.norm", group, norm))
        previous = group
    for j in range(num_dense):
        rows = f"P_dense{j}" if j < num_dense - 1 else None
        axes.update(_linear(f"classifier.{j}", rows, previous))
        previous = rows
    return PermutationSpec(axes)


def _mlp_from_keys(keys: Sequence[str], source: str) -> PermutationSpec:
    indices = sorted(int(m.group(1)) for k in keys if (m := re.fullmatch(r"layer(\d+)\.weight", k)))
    if len(indices) < 2 or indices != list(range(len(indices))):
        raise InputError(f"{source}: not the built-in 'mlp' layout (keys layer0.weight, layer1.weight, ...); "
                         f"found keys {sorted(keys)[:6]}; write a spec file for this architecture")
    return mlp_spec(len(indices))


def _resnet_from_shapes(shapes: Mapping[str, tuple[int, ...]], source: str) -> PermutationSpec:
    blocks = sorted({(int(m.group(1)), int(m.group(2)))
                     for k in shapes if (m := re.fullmatch(r"stages\.(\d+)\.(\d+)\.conv1\.weight", k))})
    if not blocks or "stem.conv.weight" not in shapes:
        raise InputError(f"{source}: not the built-in 'resnet' layout (keys stem.conv.weight, "
                         f"stages.<s>.<b>.conv1.weight, ...); write a spec file for this architecture")
    num_stages = max(s for s, _ in blocks) + 1
    blocks_per_stage = max(b for _, b in blocks) + 1
    widths = [shapes[f"stages.{s}.0.conv2.weight"][0] for s in range(num_stages)
              if f"stages.{s}.0.conv2.weight" in shapes]
    if len(widths) != num_stages or len(blocks) != num_stages * blocks_per_stage:
        raise InputError(f"{source}: the built-in 'resnet' layout needs the same number of blocks in every stage")
    norm = "batch" if "stem.norm.running_mean" in shapes else "layer"
    return resnet_spec(widths, blocks_per_stage, norm)


def _vgg_from_keys(keys: Sequence[str], source: str) -> PermutationSpec:
    convs = sorted(int(m.group(1)) for k in keys if (m := re.fullmatch(r"features\.(\d+)\.conv\.weight", k)))
    dense = sorted(int(m.group(1)) for k in keys if (m := re.fullmatch(r"classifier\.(\d+)\.weight", k)))
    if not convs or convs != list(range(len(convs))) or not dense or dense != list(range(len(dense))):
        raise InputError(f"{source}: not the built-in 'vgg' layout (keys features.<i>.conv.weight, "
                         f"classifier.<j>.weight, ...); write a spec file for this architecture")
    norm = "batch" if "features.0.norm.running_mean" in keys else "layer"
    return vgg_spec(len(convs), len(dense), norm)


def builtin_spec(name: str, state_dict: Mapping[str, torch.Tensor], *, source: str = "model") -> PermutationSpec:
    """The built-in spec ``name`` (``mlp``, ``resnet`` or ``vgg``) sized from a state dict of that layout."""
    if name == "mlp":
        return _mlp_from_keys(list(state_dict), source)
    if name == "resnet":
        return _resnet_from_shapes({k: tuple(v.shape) for k, v in state_dict.items()}, source)
    if name == "vgg":
        return _vgg_from_keys(list(state_dict), source)
    raise ParamError(f"unknown built-in spec {name!r}; valid: {', '.join(BUILTIN_SPECS)} (or a spec file path)")


def check_models(
    spec: PermutationSpec,
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    names: Sequence[str] | None = None,
    *,
    min_models: int = 2,
) -> dict[str, int]:
    """Validate models against ``spec`` before any work; return each group's size.

    Refused, with the model's name (its file for the command line) and the key: fewer than
    ``min_models`` models (``ParamError``); a spec key missing from a model, a model key the
    spec does not list, a tensor whose number of axes differs from the spec's entry, a group
    whose axes have different lengths, a shape that differs from the first model's, a NaN or
    inf in a floating-point tensor (``InputError``).
    """
    if len(state_dicts) < min_models:
        raise ParamError(f"need at least {min_models} models to align, got {len(state_dicts)}")
    names = list(names) if names is not None else [f"model {i}" for i in range(len(state_dicts))]
    if len(names) != len(state_dicts):
        raise ParamError(f"{len(names)} names for {len(state_dicts)} models")
    spec_keys = set(spec.axes)
    sizes: dict[str, tuple[int, str, int]] = {}
    reference_shapes: dict[str, tuple[int, ...]] = {}
    for index, (state, name) in enumerate(zip(state_dicts, names)):
        missing = sorted(spec_keys - set(state))
        if missing:
            raise InputError(f"{name}: has no tensor {missing[0]!r}, which the spec lists"
                             + (f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""))
        extra = sorted(set(state) - spec_keys)
        if extra:
            raise InputError(f"{name}: tensor {extra[0]!r} is not in the spec; list it in the spec's 'axes' "
                             f"(null for axes no group permutes)"
                             + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
        for key in spec.axes:
            tensor = state[key]
            if not isinstance(tensor, torch.Tensor):
                raise InputError(f"{name}: {key!r} is a {type(tensor).__name__}, not a tensor")
            shape = tuple(tensor.shape)
            entry = spec.axes[key]
            if len(shape) != len(entry):
                raise InputError(f"{name}: tensor {key!r} has shape {list(shape)} ({len(shape)} axes) but the spec "
                                 f"gives {len(entry)} axes {list(entry)}")
            if index == 0:
                reference_shapes[key] = shape
                for axis, group in enumerate(entry):
                    if group is None:
                        continue
                    if group in sizes and sizes[group][0] != shape[axis]:
                        size, other_key, other_axis = sizes[group]
                        raise InputError(f"{name}: group {group!r} permutes axis {axis} of {key!r} (length "
                                         f"{shape[axis]}) and axis {other_axis} of {other_key!r} (length {size}); "
                                         f"a group's axes must have one length")
                    sizes.setdefault(group, (shape[axis], key, axis))
            elif shape != reference_shapes[key]:
                raise InputError(f"{name}: tensor {key!r} has shape {list(shape)}, but {names[0]} has "
                                 f"{list(reference_shapes[key])}; models must share one architecture")
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise InputError(f"{name}: tensor {key!r} holds NaN or inf")
    return {group: size for group, (size, _, _) in sizes.items()}


def group_sizes(spec: PermutationSpec, state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Each group's length read from one state dict (no validation; see ``check_models``)."""
    out: dict[str, int] = {}
    for group, places in spec.groups.items():
        key, axis = places[0]
        out[group] = int(state_dict[key].shape[axis])
    return out


def total_units(sizes: Mapping[str, int]) -> int:
    """Number of permuted units over all groups."""
    return sum(int(n) for n in sizes.values())
