"""The command line's inputs: where they are, which files they are, and how they reach the engine.

``locate_input`` turns what the user typed into an ``InputSpec``: a local checkpoint (file,
index or folder), a PEFT LoRA adapter folder, or a Hugging Face hub id resolved from the
local cache; ``InputSpec.files`` lists every file it consists of (so the output can be
compared with each of them).

``prepare_sources`` then presents the opened sources to ``weaving.streaming.stream_request``:

- mixed dtypes: when the inputs' floating dtypes differ (or weights or an adapter are
  involved), every input presents each floating key in one dtype, the promotion of all the
  inputs' dtypes for that key and float32 (``torch.promote_types``: bf16 with fp16 gives
  float32, anything with float64 gives float64); the conversion is exact, so the engine's
  compute dtype (float64 if any presented key is float64, else float32) is at least as
  precise as the most precise input;
- ``vocab``: keys whose first dimension (rows: tokens) differs between the pretrained and a
  fine-tuned model are refused (``refuse``), or merged over the base's rows (``base``:
  a fine-tuned model's extra rows are left out, its missing rows count as unchanged), or
  merged over the base's rows with the added rows appended (``union``: row ``r`` beyond the
  base comes, unmerged, from the first fine-tuned model in the given order that has it);
- ``weights``: task vector ``t`` becomes ``w_t * tau_t`` (the model presented is
  ``theta_pre + w_t (theta_t - theta_pre)``), for the methods where that is what a weight
  means (see ``WEIGHTED_METHODS``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from weaving.errors import InputError, ParamError
from weaving.hf import looks_like_hub_id, resolve_hub_id
from weaving.io import checkpoint_files, open_source, resolve_checkpoint
from weaving.lora import LoraAdapterSource, adapter_files, is_adapter_folder

VOCAB_POLICIES = ("refuse", "base", "union")

WEIGHTED_METHODS = ("task_arithmetic", "dare", "breadcrumbs")
"""Methods that are a sum over tasks of a per-task map ``g`` with ``g(w tau) = w g(tau)``
(task arithmetic: identity; DARE: masks that do not depend on the values; Breadcrumbs:
masks from the ranking of ``|tau|`` within each row, which scaling does not change), so a
weight ``w_t`` means exactly ``sum_t w_t g(tau_t)``. The other methods compare task vectors
with each other (TIES' and PCB's selections, MagMax's largest magnitude, the SVDs of TSV and
ISO-C), so a weight would change which entries they select: they take no weights."""


@dataclass
class InputSpec:
    """One input as typed, where it was found, and the files it consists of."""

    given: str
    path: Path
    hub_id: str | None = None
    adapter: bool = False
    files: list[Path] = field(default_factory=list)

    @property
    def folder(self) -> Path | None:
        """The model folder (config, tokenizer) this input lives in."""
        if self.path.is_dir():
            return self.path
        return self.files[0].parent if self.files else None


def locate_input(given: str, *, allow_download: bool = False, adapter_allowed: bool = True) -> InputSpec:
    """Find the input ``given``: a local path if one exists, else a hub id in the local cache."""
    path = Path(given)
    hub_id = None
    if not path.exists() and looks_like_hub_id(given):
        path = resolve_hub_id(given, allow_download=allow_download)
        hub_id = given
    if is_adapter_folder(path):
        if not adapter_allowed:
            raise InputError(f"{given}: a PEFT adapter cannot be the pretrained model; give its base model")
        return InputSpec(given, path, hub_id, adapter=True, files=adapter_files(path))
    resolve_checkpoint(path)  # InputError naming the path if it is missing or holds no checkpoint
    return InputSpec(given, path, hub_id, files=checkpoint_files(path))


def open_input(spec: InputSpec, base: object | None = None) -> object:
    """The source of ``spec``; an adapter, and a compressed task vector (``weaving.compress``), is
    read over ``base``, the opened pretrained source."""
    if spec.adapter:
        assert base is not None
        return LoraAdapterSource(spec.path, base)
    source = open_source(spec.path, pretrained=base)
    source.name = spec.given if spec.hub_id else source.name
    peft_keys = [key for key in source.keys()[:1000] if key.startswith("base_model.model.") or ".lora_" in key]
    if peft_keys:
        raise InputError(
            f"{spec.given}: holds the weights of a PEFT adapter (keys like {peft_keys[0]!r}); pass the adapter's "
            "folder, the one holding adapter_config.json, as a fine-tuned model"
        )
    return source


# ---------------------------------------------------------------- presented sources


class _Wrapper:
    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[attr-defined]

    def keys(self) -> list[str]:
        return self.inner.keys()  # type: ignore[attr-defined]

    def spec(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self.inner.spec(key)  # type: ignore[attr-defined]

    def load(self, key: str) -> torch.Tensor:
        return self.inner.load(key)  # type: ignore[attr-defined]

    def release(self) -> None:
        release = getattr(self.inner, "release", None)
        if release is not None:
            release()


class CastSource(_Wrapper):
    """``inner`` with floating key ``k`` presented (and loaded) as ``dtypes[k]``."""

    def __init__(self, inner: object, dtypes: Mapping[str, torch.dtype]) -> None:
        super().__init__(inner)
        self.dtypes = dict(dtypes)

    def spec(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        shape, dtype = self.inner.spec(key)  # type: ignore[attr-defined]
        return shape, (self.dtypes.get(key, dtype) if dtype.is_floating_point else dtype)

    def load(self, key: str) -> torch.Tensor:
        tensor = self.inner.load(key)  # type: ignore[attr-defined]
        if tensor.is_floating_point() and key in self.dtypes:
            return tensor.to(self.dtypes[key])
        return tensor


class BaseRowsSource(_Wrapper):
    """A fine-tuned source with the vocabulary keys cut or padded to the base's rows.

    Extra rows are left out; missing rows are the base's (so their task vector is zero).
    """

    def __init__(self, inner: object, base: object, keys: Sequence[str]) -> None:
        super().__init__(inner)
        self.base = base
        self.vocab_keys = set(keys)

    def spec(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        shape, dtype = self.inner.spec(key)  # type: ignore[attr-defined]
        if key in self.vocab_keys:
            shape = (self.base.spec(key)[0][0], *shape[1:])  # type: ignore[attr-defined]
        return shape, dtype

    def load(self, key: str) -> torch.Tensor:
        tensor = self.inner.load(key)  # type: ignore[attr-defined]
        if key not in self.vocab_keys:
            return tensor
        rows = self.base.spec(key)[0][0]  # type: ignore[attr-defined]
        if tensor.shape[0] >= rows:
            return tensor[:rows]
        return torch.cat([tensor, self.base.load(key)[tensor.shape[0]:].to(tensor.dtype)])  # type: ignore[attr-defined]


class WeightedSource(_Wrapper):
    """A fine-tuned source presented as ``theta_pre + weight * (theta_t - theta_pre)`` on floating keys."""

    def __init__(self, inner: object, base: object, weight: float) -> None:
        super().__init__(inner)
        self.base = base
        self.weight = weight
        self.name = f"{inner.name} (weight {weight:g})"  # type: ignore[attr-defined]

    def load(self, key: str) -> torch.Tensor:
        tensor = self.inner.load(key)  # type: ignore[attr-defined]
        if not tensor.is_floating_point():
            return tensor
        base = self.base.load(key)  # type: ignore[attr-defined]
        if not bool(torch.isfinite(tensor).all()):
            return tensor  # the engine reports NaN/inf naming this source
        return base + (tensor - base) * self.weight


# ---------------------------------------------------------------- checks and preparation


def check_weights(weights: Sequence[float], method: str | None, count: int) -> None:
    """Per-model ``--weights``: a method of ``WEIGHTED_METHODS``, one weight for each of the
    ``count`` fine-tuned models, every weight finite; else ``ParamError``. Reads no file."""
    if method not in WEIGHTED_METHODS:
        raise ParamError(
            f"--weights: method {method!r} takes no per-model weights (it compares task vectors with each "
            f"other, so a weight would change what it selects); methods that take them: {', '.join(WEIGHTED_METHODS)}"
        )
    if len(weights) != count:
        raise ParamError(f"--weights: {len(weights)} weights for {count} fine-tuned models; give one each")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise ParamError(f"--weights: weights must be finite, got {bad[0]!r}")


def float_dtypes(source: object) -> dict[str, torch.dtype]:
    """The dtype of every floating key of ``source``."""
    names = source.keys()  # type: ignore[attr-defined]
    specs = {key: source.spec(key) for key in names}  # type: ignore[attr-defined]
    return {key: dtype for key, (_, dtype) in specs.items() if dtype.is_floating_point}


def vocab_mismatches(pretrained: object, finetuned: Sequence[object]) -> dict[str, list[tuple[object, tuple[int, ...]]]]:
    """Keys whose shapes differ only in the first dimension: key -> [(source, its shape)]."""
    found: dict[str, list[tuple[object, tuple[int, ...]]]] = {}
    base_keys = set(pretrained.keys())  # type: ignore[attr-defined]
    for source in finetuned:
        for key in sorted(base_keys & set(source.keys())):  # type: ignore[attr-defined]
            want = tuple(pretrained.spec(key)[0])  # type: ignore[attr-defined]
            shape = tuple(source.spec(key)[0])  # type: ignore[attr-defined]
            if shape != want and len(shape) == len(want) >= 1 and shape[1:] == want[1:]:
                found.setdefault(key, []).append((source, shape))
    return found


@dataclass
class Prepared:
    """What the engine is given, and what the output needs to know."""

    pretrained: object
    finetuned: list[object]
    compute_dtype: torch.dtype
    input_dtypes: list[list[str]]  # floating dtypes of the pretrained, then each fine-tuned input
    union_rows: dict[str, list[tuple[int, int, object]]]  # key -> [(start, stop, source)] rows appended
    vocab_keys: list[str]


def _dtype_names(source: object) -> list[str]:
    return sorted({str(d).removeprefix("torch.") for d in float_dtypes(source).values()})


def prepare_sources(
    pretrained: object,
    finetuned: Sequence[object],
    *,
    vocab: str = "refuse",
    vocab_keys: Sequence[str] = (),
    config_vocab_size: int | None = None,
    weights: Sequence[float] | None = None,
    method: str | None = None,
    min_dtype: torch.dtype | None = None,
) -> Prepared:
    """Present ``pretrained`` and ``finetuned`` to the engine (see the module docstring).

    ``vocab_keys``: keys the user names for the vocabulary policy; with none named, a key
    qualifies when it is 2-D and its pretrained rows equal ``config_vocab_size`` (the
    architecture's ``vocab_size``). ``min_dtype`` (e.g. float64 for ``--dtype float64``)
    raises the presented dtype. Raises ``InputError``/``ParamError`` before reading data.
    """
    finetuned = list(finetuned)
    if vocab not in VOCAB_POLICIES:
        raise ParamError(f"--vocab {vocab!r}: valid: {', '.join(VOCAB_POLICIES)}")
    input_dtypes = [_dtype_names(s) for s in [pretrained, *finetuned]]

    mismatched = vocab_mismatches(pretrained, finetuned)
    named = set(vocab_keys)
    unknown = sorted(named - set(pretrained.keys()))  # type: ignore[attr-defined]
    if unknown:
        raise ParamError(f"--vocab-keys: {', '.join(map(repr, unknown))} not in {pretrained.name}")  # type: ignore[attr-defined]
    eligible = []
    for key, found in mismatched.items():
        base_shape = tuple(pretrained.spec(key)[0])  # type: ignore[attr-defined]
        source, shape = found[0]
        identified = key in named if named else (len(base_shape) == 2 and base_shape[0] == config_vocab_size)
        if vocab == "refuse" or not identified:
            hint = (
                "; to merge the shared rows give --vocab base (keep the base's rows) or --vocab union "
                "(also add the new rows)" if vocab == "refuse" else
                f"; --vocab {vocab} applies to vocabulary keys only: name it with --vocab-keys"
                + ("" if config_vocab_size is None else f" (the config's vocab_size is {config_vocab_size})")
            )
            raise InputError(
                f"{source.name}: key {key!r} has shape {shape}, {pretrained.name} has {base_shape}"  # type: ignore[attr-defined]
                f" (a resized vocabulary?){hint}"
            )
        eligible.append(key)

    union_rows: dict[str, list[tuple[int, int, object]]] = {}
    if eligible:
        if vocab == "union":
            for key in eligible:
                start = pretrained.spec(key)[0][0]  # type: ignore[attr-defined]
                rows = []
                for source in finetuned:
                    have = source.spec(key)[0][0]  # type: ignore[attr-defined]
                    if have > start:
                        rows.append((start, have, source))
                        start = have
                union_rows[key] = rows
        finetuned = [BaseRowsSource(s, pretrained, eligible) for s in finetuned]

    adapters = any(isinstance(s, LoraAdapterSource) for s in finetuned) or any(
        isinstance(getattr(s, "inner", None), LoraAdapterSource) for s in finetuned
    )
    base_dtypes = float_dtypes(pretrained)
    presented: dict[str, torch.dtype] = {}
    mixed = False
    key_sets = [set(source.keys()) for source in finetuned]  # type: ignore[attr-defined]
    for key, dtype in base_dtypes.items():
        promoted = dtype
        for source, keys in zip(finetuned, key_sets):
            other = source.spec(key)[1] if key in keys else dtype  # type: ignore[attr-defined]
            if other != dtype:
                if not other.is_floating_point:
                    raise InputError(f"{source.name}: key {key!r} has dtype {other}, {pretrained.name} has {dtype}")  # type: ignore[attr-defined]
                mixed = True
            promoted = torch.promote_types(promoted, other)
        presented[key] = promoted
    if mixed or weights is not None or adapters or min_dtype is not None:
        floor = torch.float32 if min_dtype is None else torch.promote_types(torch.float32, min_dtype)
        presented = {key: torch.promote_types(dtype, floor) for key, dtype in presented.items()}
        pretrained = CastSource(pretrained, presented)
        finetuned = [CastSource(s, presented) for s in finetuned]

    if weights is not None:
        check_weights(weights, method, len(finetuned))
        finetuned = [WeightedSource(s, pretrained, w) for s, w in zip(finetuned, weights)]

    presented_dtypes = [pretrained.spec(k)[1] for k in base_dtypes]  # type: ignore[attr-defined]
    compute = torch.float64 if any(d == torch.float64 for d in presented_dtypes) else torch.float32
    return Prepared(pretrained, finetuned, compute, input_dtypes, union_rows, sorted(eligible))


def append_union_rows(
    stream: Iterator[tuple[str, torch.Tensor]], union_rows: Mapping[str, list[tuple[int, int, object]]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Append to each union key the rows ``[start, stop)`` of the source that supplies them."""
    for key, tensor in stream:
        parts = [tensor]
        for start, stop, source in union_rows.get(key, ()):
            parts.append(source.load(key)[start:stop].to(tensor.dtype))  # type: ignore[attr-defined]
        yield key, (torch.cat(parts) if len(parts) > 1 else tensor)
        del tensor, parts  # not kept while the next key is computed


def release_all(sources: Sequence[object]) -> None:
    for source in sources:
        release = getattr(source, "release", None)
        if release is not None:
            release()


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are the same file (symlinks followed, hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
