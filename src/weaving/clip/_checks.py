"""Argument checks shared by fine-tuning and evaluation (raised before any work)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from weaving.errors import InputError


def check_head(model: torch.nn.Module, head: torch.Tensor) -> torch.Tensor:
    """A float `[C, embed_dim]` head matching the model's image embedding size."""
    if not isinstance(head, torch.Tensor) or head.ndim != 2:
        raise InputError(f"head must be a 2-d tensor [num_classes, embed_dim], got {getattr(head, 'shape', type(head))}")
    embed_dim = model.visual.output_dim
    if head.shape[1] != embed_dim:
        raise InputError(f"head has embed_dim {head.shape[1]} but the model's image embeddings have {embed_dim}")
    return head.float()


def check_class_subset(class_subset: Sequence[int] | None, num_classes: int) -> list[int] | None:
    """Distinct class ids in [0, num_classes), in the given order (position = remapped label)."""
    if class_subset is None:
        return None
    subset = [int(c) for c in class_subset]
    if not subset:
        raise InputError("class_subset is empty")
    if len(set(subset)) != len(subset):
        raise InputError(f"class_subset has repeated classes: {subset}")
    out_of_range = [c for c in subset if not 0 <= c < num_classes]
    if out_of_range:
        raise InputError(f"class_subset has classes outside [0, {num_classes}): {out_of_range}")
    return subset


def check_labels(labels: np.ndarray | torch.Tensor, num_classes: int, where: str) -> None:
    labels = torch.as_tensor(np.asarray(labels))
    if labels.ndim != 1:
        raise InputError(f"{where}: labels must be 1-d, got shape {tuple(labels.shape)}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise InputError(
            f"{where}: labels span [{int(labels.min())}, {int(labels.max())}] but the head has {num_classes} classes"
        )


def subset_selection(labels: torch.Tensor, subset: list[int] | None, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices of the examples whose label is in `subset`, their labels remapped to positions in `subset`)."""
    if subset is None:
        return torch.arange(len(labels)), labels
    position = torch.full((num_classes,), -1, dtype=torch.int64)
    position[torch.tensor(subset)] = torch.arange(len(subset))
    remapped = position[labels]
    keep = torch.nonzero(remapped >= 0).flatten()
    return keep, remapped[keep]


def check_visual_state(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Same keys and shapes as `model.visual.state_dict()`."""
    expected = model.visual.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(
            f"{what} does not match model.visual: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise InputError(f"{what} has tensors of the wrong shape (key, got, expected): {wrong[:5]}")
