"""Top-1 accuracy of an image encoder with a zero-shot head on cached test tensors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from weaving.clip._checks import check_class_subset, check_head, check_labels, check_visual_state, subset_selection
from weaving.errors import InputError


@torch.inference_mode()
def predict(
    model: torch.nn.Module, images: torch.Tensor, head: torch.Tensor, batch_size: int = 256
) -> torch.Tensor:
    """argmax_c normalize(visual(x)) . head[c] for each image (int64 on CPU); the logit scale does not change it."""
    device = next(model.visual.parameters()).device
    dtype = next(model.visual.parameters()).dtype
    weight = head.to(device=device, dtype=torch.float32)
    predictions = []
    for chunk in images.split(batch_size):
        features = model.visual(chunk.to(device=device, dtype=dtype)).float()
        predictions.append((F.normalize(features, dim=-1) @ weight.T).argmax(dim=-1).cpu())
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.int64)


def correctness(
    model: torch.nn.Module,
    visual_sd: dict[str, torch.Tensor] | None,
    head: torch.Tensor,
    cache: dict[str, torch.Tensor],
    batch_size: int = 256,
    class_subset: Sequence[int] | None = None,
) -> torch.Tensor:
    """Per test image of `cache` (`cache_eval_tensors`), whether the top-1 prediction is right (1-D bool);
    loads `visual_sd` into `model.visual` first.

    `class_subset`: only the examples of these classes, classified among them (head rows
    restricted, labels remapped). `visual_sd=None` evaluates `model.visual` as it is.
    """
    head = check_head(model, head)
    if "images" not in cache or "labels" not in cache:
        raise InputError(f"cache must hold 'images' and 'labels', got keys {sorted(cache)}")
    images, labels = cache["images"], cache["labels"]
    if len(images) != len(labels):
        raise InputError(f"cache has {len(images)} images but {len(labels)} labels")
    check_labels(labels, head.shape[0], "evaluate cache")
    subset = check_class_subset(class_subset, head.shape[0])
    if visual_sd is not None:
        check_visual_state(model, visual_sd, "visual_sd")
        model.visual.load_state_dict(visual_sd)
    keep, targets = subset_selection(labels, subset, head.shape[0])
    if len(keep) == 0:
        raise InputError(f"no test examples of classes {subset} in the cache")
    if subset is not None:
        images, head = images[keep], head[subset]
    model.visual.eval()
    predictions = predict(model, images, head, batch_size)
    return predictions == targets


def evaluate(
    model: torch.nn.Module,
    visual_sd: dict[str, torch.Tensor] | None,
    head: torch.Tensor,
    cache: dict[str, torch.Tensor],
    batch_size: int = 256,
    class_subset: Sequence[int] | None = None,
) -> float:
    """Top-1 accuracy (percent) on `cache`: `100 * mean(correctness(...))` (arguments as `correctness`)."""
    right = correctness(model, visual_sd, head, cache, batch_size, class_subset)
    return 100.0 * float(right.double().mean())
