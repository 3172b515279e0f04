"""Per-item correctness of merged image encoders with zero-shot heads (CLIP-style classifiers).

A classifier of task `t` is `argmax_c  logit_scale * normalize(encoder(x)) . head_t[c]`
(as `weaving.clip.evaluate`; the logit scale does not change the argmax). An item is one
labelled image; its response is 1 when the prediction equals the label.

`CandidateEvaluator` holds the validation images of every task (numbered as an
`ItemLayout`), loads `theta_pre + tau` into the encoder and forward-passes only the items
asked for: the images of all tasks go through the encoder together, in batches, then
each task's features meet its own head.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from weaving.errors import InputError
from weaving.search.estimators import ItemLayout

LabelledTensors = Mapping[str, torch.Tensor]
"""`{"images": float [N, 3, S, S] (normalised model input), "labels": int64 [N]}`, optionally `"ids"` int64 [N]."""


def check_labelled(data: object, where: str, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`(images, labels)` of a labelled tensors dict, or `InputError` naming `where`."""
    if not isinstance(data, Mapping) or "images" not in data or "labels" not in data:
        keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise InputError(f"{where}: expected a dict with 'images' and 'labels', got {keys}")
    images, labels = data["images"], data["labels"]
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        raise InputError(f"{where}: 'images' must be a float tensor [N, C, H, W], got {getattr(images, 'shape', images)!r}")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32):
        raise InputError(f"{where}: 'labels' must be an int64 tensor [N], got {getattr(labels, 'dtype', labels)!r}")
    if len(images) != len(labels):
        raise InputError(f"{where}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise InputError(f"{where}: no examples")
    if not bool(torch.isfinite(images).all()):
        raise InputError(f"{where}: 'images' hold NaN or inf")
    if num_classes is not None and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise InputError(f"{where}: labels span [{int(labels.min())}, {int(labels.max())}], the head has {num_classes} classes")
    return images, labels.to(torch.int64)


def check_disjoint(val: Mapping[str, LabelledTensors], others: Mapping[str, Mapping[str, LabelledTensors]]) -> None:
    """`InputError` when a task's validation `ids` meet the `ids` of another split of that task.

    `others` maps a split name (e.g. "train", "test") to its per-task tensors; only tasks
    whose two dicts both carry `ids` are checked. The same tensor object given as
    validation and as another split is refused whatever the ids.
    """
    for split, per_task in others.items():
        for task, data in per_task.items():
            if task not in val:
                continue
            if data is val[task] or data.get("images") is val[task].get("images"):
                raise InputError(f"task {task!r}: the validation data are the {split} data; give a disjoint split")
            if "ids" in data and "ids" in val[task]:
                shared = np.intersect1d(np.asarray(val[task]["ids"]), np.asarray(data["ids"]))
                if len(shared):
                    raise InputError(
                        f"task {task!r}: the validation split overlaps the {split} split on {len(shared)} examples "
                        f"(ids {shared[:5].tolist()}...); items must be disjoint from {split}"
                    )


class CandidateEvaluator:
    """Correctness of `encoder` loaded with `pretrained + tau` on the validation items of every task.

    `encoder` maps images `[B, C, H, W]` to features `[B, E]` and has the keys of
    `pretrained_sd`; `heads[task]` is `[num_classes, E]`; `val[task]` labelled tensors.
    `items_forwarded` counts the images passed through the encoder.
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        pretrained_sd: Mapping[str, torch.Tensor],
        heads: Mapping[str, torch.Tensor],
        val: Mapping[str, LabelledTensors],
        *,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
    ) -> None:
        tasks = tuple(val)
        missing = [t for t in tasks if t not in heads]
        if missing:
            raise InputError(f"no head for task(s) {missing}; heads given for {sorted(heads)}")
        if batch_size < 1:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        self.encoder = encoder.to(device).eval()
        self.device = torch.device(device)
        self.dtype = next(encoder.parameters()).dtype
        self.pretrained_sd = dict(pretrained_sd)
        self.batch_size = int(batch_size)
        self.heads = {}
        images, labels, sizes = [], [], []
        for task in tasks:
            head = heads[task]
            if not isinstance(head, torch.Tensor) or head.ndim != 2:
                raise InputError(f"head of task {task!r} must be a 2-d tensor [num_classes, embed_dim]")
            x, y = check_labelled(val[task], f"validation data of task {task!r}", head.shape[0])
            self.heads[task] = head.to(self.device, torch.float32)
            images.append(x)
            labels.append(y)
            sizes.append(len(y))
        self.layout = ItemLayout(tasks, tuple(sizes))
        self.images = torch.cat(images).to(self.device)
        self.labels = torch.cat(labels).to(self.device)
        self.item_task = np.repeat(np.arange(len(tasks)), sizes)
        self.items_forwarded = 0

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.layout.tasks

    def load(self, tau: Mapping[str, torch.Tensor] | None) -> None:
        """Load `pretrained + tau` (`weaving.apply_task_vector`; `None`: the pretrained encoder)."""
        from weaving import apply_task_vector

        state = self.pretrained_sd if tau is None else apply_task_vector(self.pretrained_sd, tau)
        self.encoder.load_state_dict(state)

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a full encoder state dict (e.g. a fine-tuned endpoint)."""
        self.encoder.load_state_dict(dict(state))

    @torch.inference_mode()
    def _predict(self, images: torch.Tensor, task_of: np.ndarray) -> torch.Tensor:
        predictions = torch.empty(len(images), dtype=torch.int64, device=self.device)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size].to(self.device, self.dtype)
            features = F.normalize(self.encoder(chunk).float(), dim=-1)
            owners = task_of[start:start + self.batch_size]
            for t in np.unique(owners):
                rows = torch.from_numpy(np.nonzero(owners == t)[0]).to(self.device)
                head = self.heads[self.tasks[t]]
                predictions[start + rows] = (features[rows] @ head.T).argmax(dim=-1)
        return predictions

    def correctness(self, items: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """0/1 responses (bool `[len(items)]`) of the loaded encoder on `items` (global indices; None: all)."""
        index = np.arange(self.layout.num_items) if items is None else np.asarray(items, dtype=np.int64)
        selector = torch.from_numpy(index).to(self.device)
        predictions = self._predict(self.images[selector], self.item_task[index])
        self.items_forwarded += len(index)
        return (predictions == self.labels[selector]).cpu().numpy()

    def accuracy(self, data: Mapping[str, LabelledTensors], progress: bool = False) -> dict[str, float]:
        """Top-1 accuracy (percent) of the loaded encoder on other labelled tensors per task (e.g. test)."""
        out = {}
        for task in tqdm(list(data), desc="accuracy", file=sys.stderr, disable=not progress, leave=False):
            if task not in self.heads:
                raise InputError(f"no head for task {task!r}")
            x, y = check_labelled(data[task], f"data of task {task!r}", self.heads[task].shape[0])
            predictions = self._predict(x, np.full(len(y), self.tasks.index(task)))
            out[task] = 100.0 * float((predictions.cpu() == y).double().mean())
        return out
