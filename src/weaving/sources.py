"""State-dict sources: the protocol the merge engine reads, and the checks on what it reads.

A source is a state dict readable key by key (`keys`, `spec`, `load`): a dict in memory
(`DictSource`), a safetensors file or sharded checkpoint (`weaving.io`), a LoRA adapter
(`weaving.lora`), a compressed task vector (`weaving.compress`). The checks here run before
any tensor is read (`check_sources`, `check_same_layout`) or as each tensor is read
(`checked_load`: declared shape, NaN/inf); every failure is an `InputError` naming the source
and the key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from weaving.errors import InputError
from weaving.methods.base import ModelLayout

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


# ---------------------------------------------------------------------------- layout checks (no data read)


def compute_dtype(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    """float64 if any of the floating `dtypes` is float64, else float32."""
    return torch.float64 if any(d == torch.float64 for d in dtypes) else torch.float32


def listing(keys: Iterable[str], limit: int = 5) -> str:
    """The first `limit` of `keys` (sorted, quoted), then how many more."""
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_sources(sources: Sequence[StateDictSource], what: str) -> list[StateDictSource]:
    """`sources` as a list: at least one, each a `StateDictSource` (`what` names them in errors)."""
    sources = list(sources)
    if not sources:
        raise InputError(f"need at least one {what}, got none")
    for i, source in enumerate(sources):
        if not isinstance(source, StateDictSource):
            raise InputError(f"{what} {i}: expected a state-dict source, got {type(source).__name__}")
    return sources


def check_same_layout(reference: StateDictSource, others: Sequence[StateDictSource]) -> None:
    """Every source in `others` has `reference`'s key set, shapes and dtypes."""
    reference_keys = set(reference.keys())
    specs = {key: reference.spec(key) for key in reference_keys}
    for other in others:
        other_keys = set(other.keys())
        if other_keys != reference_keys:
            missing, extra = reference_keys - other_keys, other_keys - reference_keys
            parts = []
            if missing:
                parts.append(f"missing {listing(missing)}")
            if extra:
                parts.append(f"extra {listing(extra)}")
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


def float_layout(source: StateDictSource, num_tasks: int) -> ModelLayout:
    """The floating keys of `source` (sorted), their shapes and the compute dtype, for `num_tasks` tasks."""
    specs = {key: source.spec(key) for key in source.keys()}
    keys = tuple(sorted(k for k, (_, dtype) in specs.items() if dtype.is_floating_point))
    return ModelLayout(
        keys=keys,
        shapes={k: tuple(specs[k][0]) for k in keys},
        num_tasks=num_tasks,
        compute_dtype=compute_dtype(specs[k][1] for k in keys),
    )


def tau_sources(taus: Sequence[Mapping[str, torch.Tensor]], what: str = "task vector") -> list[DictSource]:
    """Task vectors in memory as `DictSource`s: a list of at least one, floating keys only, one layout."""
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
    check_same_layout(sources[0], sources[1:])
    return sources


# ---------------------------------------------------------------------------- value checks (as data is read)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether no entry of `tensor` is NaN, inf or -inf: `bool(torch.isfinite(tensor).all())`.

    True for a tensor that is not floating-point or is empty. A finite sum proves the tensor
    finite (NaN and inf make the sum non-finite), so only a non-finite sum (NaN/inf, or an
    overflow of finite values) pays for `isfinite` of every entry, whose temporaries are as
    large as the tensor and more.
    """
    if not tensor.dtype.is_floating_point or tensor.numel() == 0:
        return True
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def check_finite(tensor: torch.Tensor, source: StateDictSource, key: str) -> None:
    """`InputError` if `tensor` holds NaN or inf (`all_finite`)."""
    if not all_finite(tensor):
        raise InputError(f"{source.name}: key {key!r} contains NaN or inf")


def checked_load(source: StateDictSource, key: str, shape: tuple[int, ...], check_values: bool) -> torch.Tensor:
    """`source.load(key)`, refused unless it has the declared `shape` (and, if `check_values`, is finite)."""
    tensor = source.load(key)
    if tuple(tensor.shape) != tuple(shape):
        raise InputError(f"{source.name}: key {key!r} loaded with shape {tuple(tensor.shape)}, declared {tuple(shape)}")
    if check_values:
        check_finite(tensor, source, key)
    return tensor
