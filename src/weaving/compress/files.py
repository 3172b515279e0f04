"""Compressed task vectors on disk, and as state-dict sources the merge engine reads.

File format: one safetensors file per task. A factored key `K` is stored as three tensors
`K::U` `[m, k]`, `K::S` `[k]`, `K::V` `[k, n]` (the rows of `V^T`); a dense key `K` under
its own name. The `__metadata__` holds (JSON strings):

- `weaving_format`: `"tsv-compressed"` (the tag `weaving.io.open_source` recognises),
  `weaving_format_version`: `"1"`;
- `rank_fraction`, `ranks` (`{key: k}`), `dense_keys` (`[key, ...]`);
- `task` (name), `pretrained` (`{"path", "sha256"}` of theta_pre), `source`
  (`{"path", "sha256"}` of the fine-tuned checkpoint), and any extra string entries.

How a compressed file enters the engine (which merges fine-tuned *checkpoints*,
subtracting theta_pre): `weaving.io.open_source(path)` gives a `CompressedTaskVectorSource`,
the reconstructed task vector tau (floating keys only); `open_source(path,
pretrained=source)` gives a `CompressedCheckpointSource`, the checkpoint
`theta_pre + tau` over every key of the pretrained source (non-floating keys are the
pretrained's), after checking that the file was made against that pretrained checkpoint
(recorded sha256 against the pretrained file's sha256) and has its floating keys, shapes
and dtypes. `weaving merge/weave --finetuned` open their inputs this way, so every method
merges compressed task vectors unchanged (the engine's difference gives tau back up to
rounding in the compute dtype).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from weaving.compress.tsvc import CompressedTaskVector, Factors, check_rank_fraction
from weaving.errors import InputError
from weaving.io import SafetensorsSource, resolve_checkpoint, sha256_file, write_safetensors

__all__ = [
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "CompressedCheckpointSource",
    "CompressedTaskVectorSource",
    "is_compressed_file",
    "is_compressed_metadata",
    "load_compressed",
    "open_compressed",
    "pretrained_sha256_of",
    "read_compressed_metadata",
    "save_compressed",
]

FORMAT_TAG = "tsv-compressed"
FORMAT_VERSION = "1"
_SUFFIXES = ("::U", "::S", "::V")
_RESERVED_METADATA = frozenset({"format", "weaving_format", "weaving_format_version", "weaving_version",
                                "rank_fraction", "ranks", "dense_keys", "task", "pretrained", "source"})


def is_compressed_metadata(metadata: Mapping[str, str]) -> bool:
    """Whether a safetensors `__metadata__` marks a compressed task vector."""
    return metadata.get("weaving_format") == FORMAT_TAG


def is_compressed_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a safetensors file holding a compressed task vector (reads the header only)."""
    try:
        resolved = resolve_checkpoint(path)
    except InputError:
        return False
    if resolved.suffix != ".safetensors":
        return False
    try:
        return is_compressed_metadata(SafetensorsSource(resolved).metadata)
    except InputError:
        return False


def _metadata_for(compressed: CompressedTaskVector, pretrained_path: str | None, source_path: str | None,
                  extra: Mapping[str, str] | None) -> dict[str, str]:
    metadata = {
        "format": "pt",
        "weaving_format": FORMAT_TAG,
        "weaving_format_version": FORMAT_VERSION,
        "weaving_version": _weaving_version(),
        "rank_fraction": repr(float(compressed.rank_fraction)),
        "ranks": json.dumps(compressed.ranks(), sort_keys=True),
        "dense_keys": json.dumps(sorted(compressed.dense)),
        "task": compressed.name,
        "pretrained": json.dumps({"path": pretrained_path, "sha256": compressed.pretrained_sha256}),
        "source": json.dumps({"path": source_path, "sha256": compressed.source_sha256}),
    }
    for key, value in {**compressed.extra, **dict(extra or {})}.items():
        if key in metadata:
            raise ValueError(f"save_compressed: metadata entry {key!r} is reserved")
        metadata[key] = str(value)
    return metadata


def _weaving_version() -> str:
    try:
        return version("weaving")
    except PackageNotFoundError:
        return "unknown"


def save_compressed(
    path: str | os.PathLike[str],
    compressed: CompressedTaskVector,
    *,
    pretrained_path: str | None = None,
    source_path: str | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `compressed` as one safetensors file (format in the module docstring), atomically."""
    tensors: dict[str, torch.Tensor] = {}
    for key, kept in compressed.factors.items():
        tensors[key + "::U"], tensors[key + "::S"], tensors[key + "::V"] = kept.u, kept.s, kept.vh
    for key, tensor in compressed.dense.items():
        if key.endswith(_SUFFIXES) or "::" in key:
            raise InputError(f"{compressed.label}: dense key {key!r} contains '::', which the file format reserves")
        tensors[key] = tensor
    metadata = _metadata_for(compressed, pretrained_path, source_path, extra_metadata)
    names = sorted(tensors)
    specs = {name: (tuple(tensors[name].shape), tensors[name].dtype) for name in names}
    write_safetensors(path, specs, ((name, tensors[name].contiguous()) for name in names), metadata)


def _json_entry(source: SafetensorsSource, metadata: Mapping[str, str], key: str, kind: type) -> object:
    if key not in metadata:
        raise InputError(f"{source.name}: compressed task vector without the metadata entry {key!r}")
    try:
        value = json.loads(metadata[key])
    except ValueError as error:
        raise InputError(f"{source.name}: metadata entry {key!r} is not valid JSON: {error}") from error
    if not isinstance(value, kind):
        raise InputError(f"{source.name}: metadata entry {key!r} must be a JSON {kind.__name__}")
    return value


class _Layout:
    """The validated layout of a compressed file: ranks, dense keys, shapes, dtypes, provenance."""

    def __init__(self, source: SafetensorsSource) -> None:
        metadata = source.metadata
        if not is_compressed_metadata(metadata):
            raise InputError(f"{source.name}: not a compressed task vector (no weaving_format={FORMAT_TAG!r} metadata)")
        version = metadata.get("weaving_format_version")
        if version != FORMAT_VERSION:
            raise InputError(f"{source.name}: compressed format version {version!r}; this weaving reads {FORMAT_VERSION!r}")
        try:
            self.rank_fraction = check_rank_fraction(float(metadata.get("rank_fraction", "nan")))
        except (ValueError, TypeError) as error:
            raise InputError(f"{source.name}: bad rank_fraction {metadata.get('rank_fraction')!r}: {error}") from error
        ranks = _json_entry(source, metadata, "ranks", dict)
        dense = _json_entry(source, metadata, "dense_keys", list)
        self.pretrained = _json_entry(source, metadata, "pretrained", dict)
        self.source = _json_entry(source, metadata, "source", dict)
        self.name = metadata.get("task", "")
        self.metadata = dict(metadata)
        self.ranks: dict[str, int] = {str(k): int(v) for k, v in ranks.items()}
        self.dense_keys: list[str] = [str(k) for k in dense]
        expected = {key + suffix for key in self.ranks for suffix in _SUFFIXES} | set(self.dense_keys)
        stored = set(source.keys())
        if stored != expected:
            raise InputError(
                f"{source.name}: tensors do not match the metadata's ranks and dense keys: "
                f"missing {sorted(expected - stored)[:5]}, unexpected {sorted(stored - expected)[:5]}"
            )
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for key, rank in self.ranks.items():
            (u_shape, u_dtype), (s_shape, s_dtype), (v_shape, v_dtype) = (source.spec(key + s) for s in _SUFFIXES)
            if (len(u_shape) != 2 or s_shape != (rank,) or len(v_shape) != 2 or u_shape[1] != rank
                    or v_shape[0] != rank or not u_dtype == s_dtype == v_dtype or not u_dtype.is_floating_point):
                raise InputError(
                    f"{source.name}: factors of {key!r} are inconsistent with rank {rank}: U {u_shape} {u_dtype}, "
                    f"S {s_shape} {s_dtype}, V {v_shape} {v_dtype}"
                )
            self.shapes[key] = (u_shape[0], v_shape[1])
            self.dtypes[key] = u_dtype
        for key in self.dense_keys:
            shape, dtype = source.spec(key)
            if not dtype.is_floating_point:
                raise InputError(f"{source.name}: dense key {key!r} has dtype {dtype}; task vectors are floating")
            self.shapes[key], self.dtypes[key] = tuple(shape), dtype

    @property
    def pretrained_sha256(self) -> str | None:
        value = self.pretrained.get("sha256")
        return str(value) if value else None

    @property
    def source_sha256(self) -> str | None:
        value = self.source.get("sha256")
        return str(value) if value else None

    def keys(self) -> list[str]:
        return sorted(self.shapes)


def read_compressed_metadata(path: str | os.PathLike[str]) -> dict[str, object]:
    """A compressed file's provenance and layout without reading tensors: task, rank fraction,
    ranks, dense keys, pretrained and source records, stored numbers and bytes."""
    source = SafetensorsSource(resolve_checkpoint(path))
    layout = _Layout(source)
    specs = [source.spec(name) for name in sorted(source.keys())]
    stored = sum(math.prod(shape) for shape, _ in specs)
    stored_bytes = sum(math.prod(shape) * dtype.itemsize for shape, dtype in specs)
    return {"task": layout.name, "rank_fraction": layout.rank_fraction, "ranks": layout.ranks,
            "dense_keys": layout.dense_keys, "pretrained": layout.pretrained, "source": layout.source,
            "stored_numbers": stored, "stored_bytes": stored_bytes,
            "dense_numbers": sum(math.prod(s) for s in layout.shapes.values())}


def load_compressed(path: str | os.PathLike[str]) -> CompressedTaskVector:
    """Read a file written by `save_compressed` (validated: tag, version, tensors against metadata)."""
    source = SafetensorsSource(resolve_checkpoint(path))
    layout = _Layout(source)
    factors = {
        key: Factors(source.load(key + "::U"), source.load(key + "::S"), source.load(key + "::V"))
        for key in sorted(layout.ranks)
    }
    dense = {key: source.load(key) for key in sorted(layout.dense_keys)}
    extra = {k: v for k, v in layout.metadata.items() if k not in _RESERVED_METADATA}
    return CompressedTaskVector(factors, dense, layout.rank_fraction, layout.name, layout.pretrained_sha256,
                                layout.source_sha256, extra)


class CompressedTaskVectorSource:
    """A compressed file read as its reconstructed task vector tau, one key at a time.

    Implements `weaving.sources.StateDictSource`: `keys()` are the task vector's (floating)
    keys, `spec(key)` their original shape and dtype, `load(key)` the dense reconstruction.
    """

    def __init__(self, source: SafetensorsSource) -> None:
        self._file = source
        self._layout = _Layout(source)
        self.path = source.path
        self.name = source.name
        self.metadata = source.metadata

    @property
    def rank_fraction(self) -> float:
        return self._layout.rank_fraction

    @property
    def pretrained_sha256(self) -> str | None:
        return self._layout.pretrained_sha256

    def keys(self) -> list[str]:
        return self._layout.keys()

    def spec(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        if key not in self._layout.shapes:
            raise InputError(f"{self.name}: no tensor named {key!r}")
        return self._layout.shapes[key], self._layout.dtypes[key]

    def load(self, key: str) -> torch.Tensor:
        if key in self._layout.ranks:
            factors = Factors(*(self._file.load(key + suffix) for suffix in _SUFFIXES))
            return factors.reconstruct()
        if key in self._layout.shapes:
            return self._file.load(key)
        raise InputError(f"{self.name}: no tensor named {key!r}")

    def release(self) -> None:
        self._file.release()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def pretrained_sha256_of(pretrained: object) -> str:
    """sha256 of a file source's checkpoint (`weaving.io.sha256_file` of its `path`), cached per file state."""
    path = getattr(pretrained, "path", None)
    if path is None:
        raise InputError(
            f"{getattr(pretrained, 'name', 'pretrained')}: cannot check a compressed task vector against an "
            "in-memory pretrained source; give a checkpoint file, or reconstruct with load_compressed().to_dense()"
        )
    stat = os.stat(path)
    cache_key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _SHA_CACHE:
        _SHA_CACHE[cache_key] = sha256_file(path)
    return _SHA_CACHE[cache_key]


class CompressedCheckpointSource:
    """The checkpoint `theta_pre + tau` of a compressed task vector, over every key of `pretrained`.

    Floating keys: `pretrained[key] + tau[key]` computed in float32 (float64 for float64
    keys), cast to the key's dtype; other keys: the pretrained tensor. Checked on opening,
    before any tensor is read: the file was made against `pretrained` (sha256, unless
    `check_sha256=False`), and its keys, shapes and dtypes are the pretrained's floating ones.
    """

    def __init__(self, compressed: CompressedTaskVectorSource, pretrained: object, *, check_sha256: bool = True) -> None:
        self._tau = compressed
        self._pretrained = pretrained
        self.path = compressed.path
        self.name = compressed.name
        self.metadata = compressed.metadata
        pretrained_name = getattr(pretrained, "name", "pretrained")
        if check_sha256:
            recorded = compressed.pretrained_sha256
            if not recorded:
                raise InputError(f"{self.name}: records no pretrained sha256, so it cannot be checked against "
                                 f"{pretrained_name}")
            actual = pretrained_sha256_of(pretrained)
            if recorded != actual:
                raise InputError(
                    f"{self.name}: compressed against a different pretrained checkpoint (sha256 {recorded}) "
                    f"than {pretrained_name} (sha256 {actual}); give the --pretrained it was made with"
                )
        specs = {key: pretrained.spec(key) for key in sorted(pretrained.keys())}  # type: ignore[attr-defined]
        floating = {key for key, (_, dtype) in specs.items() if dtype.is_floating_point}
        tau_keys = set(compressed.keys())
        if tau_keys != floating:
            raise InputError(
                f"{self.name}: key set differs from {pretrained_name}'s floating keys: "
                f"missing {sorted(floating - tau_keys)[:5]}, extra {sorted(tau_keys - floating)[:5]}"
            )
        for key in sorted(floating):
            shape, dtype = compressed.spec(key)
            if tuple(shape) != tuple(specs[key][0]) or dtype != specs[key][1]:
                raise InputError(f"{self.name}: key {key!r} is {tuple(shape)} {dtype}, {pretrained_name} has "
                                 f"{tuple(specs[key][0])} {specs[key][1]}")
        self._specs = specs
        self._floating = floating

    def keys(self) -> list[str]:
        return sorted(self._specs)

    def spec(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        if key not in self._specs:
            raise InputError(f"{self.name}: no tensor named {key!r}")
        return self._specs[key]

    def load(self, key: str) -> torch.Tensor:
        base = self._pretrained.load(key)  # type: ignore[attr-defined]
        if key not in self._floating:
            return base
        work = torch.float64 if base.dtype == torch.float64 else torch.float32
        return (base.to(work) + self._tau.load(key).to(work)).to(base.dtype)

    def release(self) -> None:
        self._tau.release()


def open_compressed(
    source: SafetensorsSource, *, pretrained: object | None = None
) -> CompressedTaskVectorSource | CompressedCheckpointSource:
    """The source `weaving.io.open_source` returns for a compressed file (see the module docstring)."""
    tau = CompressedTaskVectorSource(source)
    if pretrained is None:
        return tau
    return CompressedCheckpointSource(tau, pretrained)
