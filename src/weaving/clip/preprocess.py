"""Turning dataset splits into normalised model inputs.

uint8 arrays (the embedded suite): `x / 255`, grey repeated to 3 channels, bilinear resize
with antialiasing to the model's image size (`torch.nn.functional.interpolate`), then
`(x - mean) / std` per channel. PIL images (the paper profile's file datasets): the
model's own open_clip eval transform (resize, centre crop, normalise). No augmentation here.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import get_model_preprocess_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2
from tqdm.auto import tqdm

from weaving.clip.models import image_size_of, mean_std_of
from weaving.errors import InputError


class Split(Protocol):
    """What the CLIP side needs of a dataset split (`weaving.datasets.SplitData`)."""

    labels: np.ndarray

    def __len__(self) -> int: ...

    def uint8_images(self) -> np.ndarray: ...

    def pil(self, i: int) -> Any: ...


def split_uint8_images(split: Split) -> np.ndarray | None:
    """The split's `[N, H, W, C]` uint8 array, or None when it is stored as image files."""
    fmt = getattr(getattr(split, "dataset", None), "format", None) or getattr(split, "format", "npz")
    if fmt == "files":
        return None
    return split.uint8_images()


def uint8_to_tensor(
    images: np.ndarray,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    chunk: int = 2048,
) -> torch.Tensor:
    """`[N, H, W, C]` uint8 (C = 1 or 3) -> float32 `[N, 3, S, S]` normalised model input."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise InputError(
            f"expected a uint8 array [N, H, W, C], got {type(images).__name__} "
            f"{getattr(images, 'dtype', '?')} shape {getattr(images, 'shape', '?')}"
        )
    if images.shape[3] not in (1, 3):
        raise InputError(f"expected 1 or 3 channels (last axis), got shape {images.shape}")
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    out = torch.empty((len(images), 3, image_size, image_size), dtype=torch.float32)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start : start + chunk]).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (image_size, image_size):
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = (x - mean_t) / std_t
    return out


def model_uint8_to_tensor(model: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """`uint8_to_tensor` with the model's image size, mean and std."""
    mean, std = mean_std_of(model)
    return uint8_to_tensor(images, image_size_of(model), mean, std)


def pil_transform(model: torch.nn.Module):
    """The open_clip eval transform of `model` (PIL image -> normalised `[3, S, S]`)."""
    cfg = get_model_preprocess_cfg(model)
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


class SplitImages(torch.utils.data.Dataset):
    """`(image tensor, label)` pairs of a split: from a preprocessed tensor or PIL images + transform."""

    def __init__(self, split: Split, model: torch.nn.Module, tensor: torch.Tensor | None = None):
        self.split = split
        self.labels = torch.as_tensor(np.asarray(split.labels), dtype=torch.int64)
        self.tensor = tensor
        self.transform = None if tensor is not None else pil_transform(model)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tensor is not None:
            return self.tensor[i], self.labels[i]
        return self.transform(self.split.pil(int(i))), self.labels[i]


def split_to_tensor(model: torch.nn.Module, split: Split, progress: bool = False) -> torch.Tensor:
    """All images of a split as a float32 `[N, 3, S, S]` model input (vectorised for uint8 arrays)."""
    images = split_uint8_images(split)
    if images is not None:
        return model_uint8_to_tensor(model, images)
    transform = pil_transform(model)
    items = tqdm(range(len(split)), desc="preprocess", disable=not progress, leave=False)
    return torch.stack([transform(split.pil(i)) for i in items])


def cache_eval_tensors(model: torch.nn.Module, split: Split, progress: bool = False) -> dict[str, torch.Tensor]:
    """`{"images": float16 [N, 3, S, S] normalised for `model`, "labels": int64 [N]}` for fast evaluation."""
    labels = torch.as_tensor(np.asarray(split.labels), dtype=torch.int64)
    images = split_to_tensor(model, split, progress=progress)
    if len(images) != len(labels):
        raise InputError(f"split has {len(images)} images but {len(labels)} labels")
    return {"images": images.to(torch.float16), "labels": labels}
