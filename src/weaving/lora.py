"""PEFT LoRA adapters read as fine-tuned models: ``theta_pre + scaling * B @ A`` per adapted weight.

A PEFT adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (or
``adapter_model.bin``). Its task vector, as PEFT's own ``merge_and_unload`` applies it
(Hu et al., 2022, LoRA; PEFT's ``LoraLayer.get_delta_weight``), is, per adapted module
``M`` with tensors ``lora_A`` (``[r, in]``) and ``lora_B`` (``[out, r]``):

- ``M.weight``: ``scaling * B @ A`` (transposed when the config says ``fan_in_fan_out``,
  i.e. GPT-2's ``Conv1D`` layout); for an embedding (``lora_embedding_A`` ``[r, vocab]``,
  ``lora_embedding_B`` ``[dim, r]``) ``scaling * (B @ A)^T``;
- ``M.bias``: ``scaling * lora_B.bias`` when the adapter trained one (``lora_bias``);
- ``scaling = alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora`` (rank-stabilised LoRA,
  Kalajdzievski, 2023), where ``r`` is the module's rank (``rank_pattern`` or ``r``) and
  ``alpha`` the module's ``alpha_pattern`` entry or ``lora_alpha``; a pattern ``p`` applies
  to module name ``m`` when ``m`` is ``p`` or ends with ``.p`` (regular expressions, PEFT's
  rule);
- tensors the adapter saves whole (``modules_to_save``, an embedding's ``base_layer``,
  ``bias="all"``/``"lora_only"`` biases) replace the pretrained tensor.

Every other tensor equals the pretrained one, so its task vector is zero. Keys are the
adapter's without the ``base_model.model.`` prefix PEFT adds. DoRA, convolution LoRA,
layer replication, trainable-token adapters and adapters of parameters (``target_parameters``)
are refused with a message saying so, as are adapters that are not LoRA.

``LoraAdapterSource`` presents the adapted model as a ``StateDictSource`` in a dtype at least
as precise as float32, the base's and the adapter's dtypes, so ``theta_pre + delta`` loses
nothing the engine would keep.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from weaving.errors import InputError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."


def is_adapter_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding a PEFT ``adapter_config.json``."""
    return Path(path).is_dir() and (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The adapter's config and weights file (the first of ``ADAPTER_WEIGHTS`` present)."""
    folder = Path(folder)
    for name in ADAPTER_WEIGHTS:
        if (folder / name).is_file():
            return [folder / ADAPTER_CONFIG, folder / name]
    raise InputError(f"{folder}: PEFT adapter folder without weights; expected one of {', '.join(ADAPTER_WEIGHTS)}")


@dataclass(frozen=True)
class LoraConfig:
    """The fields of ``adapter_config.json`` that decide the task vector."""

    r: int
    lora_alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    rank_pattern: Mapping[str, int]
    alpha_pattern: Mapping[str, float]
    base_model: str | None

    def scaling(self, module: str, rank: int) -> float:
        """``alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA) for ``module`` of rank ``rank``."""
        alpha = self.lora_alpha
        for pattern, value in self.alpha_pattern.items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = float(value)
                break
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


REFUSED_FLAGS = {
    "use_dora": "DoRA rescales each column by a learned magnitude, so its update is not a sum of a task vector",
    "layer_replication": "layer replication changes the architecture",
    "trainable_token_indices": "trainable-token adapters store rows of the embedding, not a LoRA update",
    "target_parameters": "LoRA on parameters (target_parameters) is not read by weaving",
    "use_qalora": "QA-LoRA merges through quantisation groups",
}


def read_lora_config(folder: Path) -> LoraConfig:
    """Parse and check ``adapter_config.json``; ``InputError`` names the file and the field."""
    path = folder / ADAPTER_CONFIG
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable JSON adapter config: {error}") from error
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object")
    peft_type = raw.get("peft_type")
    if peft_type != "LORA":
        raise InputError(f"{path}: peft_type is {peft_type!r}; weaving reads LoRA adapters only (peft_type 'LORA')")
    for flag, why in REFUSED_FLAGS.items():
        if raw.get(flag):
            raise InputError(f"{path}: {flag} is set; not supported: {why}")
    try:
        r = int(raw["r"])
        alpha = float(raw["lora_alpha"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: needs numbers 'r' and 'lora_alpha'") from error
    if r <= 0:
        raise InputError(f"{path}: 'r' must be positive, got {r}")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        use_rslora=bool(raw.get("use_rslora", False)),
        fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
        rank_pattern=dict(raw.get("rank_pattern") or {}),
        alpha_pattern=dict(raw.get("alpha_pattern") or {}),
        base_model=raw.get("base_model_name_or_path"),
    )


_LORA_PART = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|"
                        r"lora_embedding_A|lora_embedding_B)$")


def adapter_keys_of(source: object) -> list[str]:
    """The keys of a source (a helper that keeps linters from taking sources for dicts)."""
    return list(source.keys())  # type: ignore[attr-defined]


def _strip_adapter_name(key: str) -> str:
    """PEFT saves ``...lora_A.weight`` without the adapter name; older files may keep ``.default``."""
    return re.sub(r"\.(lora_A|lora_B)\.default\.", r".\1.", key).replace(".modules_to_save.default.", ".")


@dataclass
class _ModuleUpdate:
    a: str | None = None
    b: str | None = None
    b_bias: str | None = None
    embedding: bool = False


class LoraAdapterSource:
    """A fine-tuned model given as ``base`` plus a PEFT LoRA adapter (see the module docstring).

    ``keys()`` and shapes are the base's, except where the adapter saves a tensor whole (for
    example a resized embedding); every floating tensor is presented in ``dtype`` (at least
    float32). Nothing but the headers is read when opening; ``load`` computes one key.
    """

    def __init__(self, folder: str | os.PathLike[str], base: object) -> None:
        from weaving.io import open_source  # local import: io imports nothing from here

        self.folder = Path(folder)
        self.name = str(folder)
        self.config = read_lora_config(self.folder)
        weights_path = adapter_files(self.folder)[1]
        self._adapter = open_source(weights_path)
        self._base = base
        base_keys = set(base.keys())  # type: ignore[attr-defined]
        updates: dict[str, _ModuleUpdate] = {}
        self._whole: dict[str, str] = {}  # base key -> adapter key saved whole
        adapter_keys = self._adapter.keys()
        for raw_key in adapter_keys:
            key = _strip_adapter_name(raw_key)
            if not key.startswith(PEFT_PREFIX):
                raise InputError(f"{weights_path}: tensor {raw_key!r} lacks PEFT's {PEFT_PREFIX!r} prefix")
            key = key[len(PEFT_PREFIX):]
            found = _LORA_PART.match(key)
            if found is None:
                target = key.replace(".base_layer.", ".")
                if target not in base_keys:
                    raise InputError(f"{weights_path}: saved tensor {raw_key!r} has no counterpart {target!r} in {base.name}")  # type: ignore[attr-defined]
                self._whole[target] = raw_key
                continue
            update = updates.setdefault(found["module"], _ModuleUpdate())
            part = found["part"]
            if part in ("lora_A.weight", "lora_embedding_A"):
                update.a = raw_key
            elif part in ("lora_B.weight", "lora_embedding_B"):
                update.b = raw_key
            else:
                update.b_bias = raw_key
            update.embedding = update.embedding or part.startswith("lora_embedding")
        self._deltas: dict[str, tuple[str, _ModuleUpdate, str]] = {}  # base key -> (module, update, "weight"|"bias")
        for module, update in sorted(updates.items()):
            if update.a is None or update.b is None:
                raise InputError(f"{weights_path}: module {module!r} has only one of lora_A and lora_B")
            a_shape, b_shape = self._adapter.spec(update.a)[0], self._adapter.spec(update.b)[0]
            if len(a_shape) != 2 or len(b_shape) != 2:
                raise InputError(
                    f"{weights_path}: module {module!r} has LoRA factors of shapes {a_shape} and {b_shape}; "
                    "only linear and embedding LoRA (2-D factors) is supported, not convolutions"
                )
            if b_shape[1] != a_shape[0]:
                raise InputError(f"{weights_path}: module {module!r}: lora_B {b_shape} and lora_A {a_shape} ranks differ")
            weight_key = f"{module}.weight"
            if weight_key not in base_keys:
                raise InputError(f"{weights_path}: adapts {module!r}, but {base.name} has no {weight_key!r}")  # type: ignore[attr-defined]
            if update.embedding or self.config.fan_in_fan_out:
                delta_shape = (a_shape[1], b_shape[0])
            else:
                delta_shape = (b_shape[0], a_shape[1])
            want = self._shape_of(weight_key)
            if tuple(want) != delta_shape:
                raise InputError(
                    f"{weights_path}: module {module!r}: the update B @ A has shape {delta_shape}, "
                    f"{weight_key!r} has {tuple(want)} (is the adapter for another base model?)"
                )
            self._deltas[weight_key] = (module, update, "weight")
            if update.b_bias is not None:
                bias_key = f"{module}.bias"
                if bias_key not in base_keys:
                    raise InputError(f"{weights_path}: adapts {module!r}'s bias, but {base.name} has no {bias_key!r}")  # type: ignore[attr-defined]
                self._deltas[bias_key] = (module, update, "bias")
        self._keys = sorted(base_keys)
        self.dtype = self._presented_dtype()

    def _shape_of(self, key: str) -> tuple[int, ...]:
        if key in self._whole:
            return tuple(self._adapter.spec(self._whole[key])[0])
        return tuple(self._base.spec(key)[0])  # type: ignore[attr-defined]

    def _presented_dtype(self) -> torch.dtype:
        dtype = torch.float32
        for key in self._keys:
            base_dtype = self._base.spec(key)[1]  # type: ignore[attr-defined]
            if base_dtype.is_floating_point:
                dtype = torch.promote_types(dtype, base_dtype)
        for key in adapter_keys_of(self._adapter):
            adapter_dtype = self._adapter.spec(key)[1]
            if adapter_dtype.is_floating_point:
                dtype = torch.promote_types(dtype, adapter_dtype)
        return dtype

    @property
    def adapted_keys(self) -> list[str]:
        """The base keys the adapter changes (LoRA updates and tensors saved whole)."""
        return sorted(set(self._deltas) | set(self._whole))

    def keys(self) -> list[str]:
        return list(self._keys)

    def spec(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        base_dtype = self._base.spec(key)[1]  # type: ignore[attr-defined]
        return self._shape_of(key), (self.dtype if base_dtype.is_floating_point else base_dtype)

    def delta(self, key: str) -> torch.Tensor | None:
        """The LoRA update of ``key`` in ``self.dtype``, or None where the adapter has none."""
        if key not in self._deltas:
            return None
        module, update, what = self._deltas[key]
        assert update.b is not None and update.a is not None
        b = self._adapter.load(update.b).to(self.dtype)
        scaling = self.config.scaling(module, int(b.shape[1]))
        if what == "bias":
            assert update.b_bias is not None
            return self._adapter.load(update.b_bias).to(self.dtype) * scaling
        product = b @ self._adapter.load(update.a).to(self.dtype)
        if update.embedding or self.config.fan_in_fan_out:
            product = product.T
        return product * scaling

    def load(self, key: str) -> torch.Tensor:
        if key in self._whole:
            value = self._adapter.load(self._whole[key])
        else:
            value = self._base.load(key)  # type: ignore[attr-defined]
        if not value.is_floating_point():
            return value
        value = value.to(self.dtype)
        delta = self.delta(key)
        return value if delta is None else value + delta

    def release(self) -> None:
        self._adapter.release()
