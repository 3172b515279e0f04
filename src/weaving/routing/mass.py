"""MASS: MoErging through Adaptive Subspace Selection (Crisostomi et al., 2025), for open_clip ViTs.

Built from the pretrained image encoder theta_pre, `T` TSV-C compressed task vectors
(`weaving.compress`) and the tasks' zero-shot heads, with no data. For a batch of images:

1. **Routing pass.** The base model theta_pre + TSV-Merge(all tasks) (lam = 1) runs up to
   block `L`; the input of block `L`'s MLP (`ln_2`'s output, `transformer.resblocks[L].mlp.c_fc`'s
   input) is captured and its CLS token `x` kept (open_clip 3.x is batch-first: `x[:, 0, :]`;
   sequence-first encoders: `x[0]`). The rest of the pass is skipped (it does not affect routing).
2. **Subspace residuals.** For each task `t`, with `V_t` (`k x d`) the kept right singular
   vectors (rows of `V^T`) of task `t`'s `transformer.resblocks.L.mlp.c_fc.weight`:
   `r_t = ||x - x V_t^T V_t||_2`. Logits `-r`, z-scored across tasks (mean, unbiased std
   `+ 1e-6`), softmax at temperature 1: the coefficients `c_t`.
3. **Selection.** The tasks with `c_t > threshold` (0.2); if more than `max_tasks` (3), the
   `max_tasks` largest; if none, the argmax. Top-1 mode: the argmax only.
4. **Answering pass.** Samples are grouped by selected set; each group runs once through
   theta_pre + TSV-Merge(selected tasks) from the compressed factors
   (`weaving.compress.tsv_merge_compressed`, lam = 1; one selected task gives exactly its
   TSV-C model, all tasks the base model). Models are cached per set (least recently used
   dropped beyond `cache_size`).
5. **Head.** Among the selected tasks' heads, the one with the largest max logit
   (`logit_scale * normalize(visual(x)) @ head_t^T`) answers. Oracle-head mode answers
   with the true task's head instead (routing and merging unchanged).

Reference: `crisostomi/mass` (`modules/mass_gate.py`, `modules/router.py`,
`pl_module/mass.py`, `utils/routing_methods.py`, `conf/nn/module/router/proj.yaml`:
routing_mode topk, threshold 0.2, temperature 1, max 3 tasks, CLS token). Default layer:
9 of 12 blocks (ViT-B), 20 of 24 (ViT-L); other depths `round(0.75 * depth)` clamped to
the last block (see `default_layer`).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from weaving.compress.tsvc import CompressedTaskVector, check_compatible, tsv_merge_compressed
from weaving.engine import apply_task_vector
from weaving.errors import InputError, ParamError

__all__ = [
    "MASS",
    "MassOutput",
    "MassStats",
    "Routing",
    "check_threshold",
    "choose_heads",
    "default_layer",
    "routing_coefficients",
    "routing_key",
    "select_tasks",
    "subspace_residuals",
]

REFERENCE_LAYERS = {12: 9, 24: 20}
"""The reference's hooked block per encoder depth (ViT-B-32/16: 9 of 12; ViT-L-14: 20 of 24)."""


def default_layer(depth: int) -> int:
    """The block whose MLP input routes: the reference's for 12 and 24 blocks, else `min(depth - 1, round(0.75 depth))`."""
    if depth in REFERENCE_LAYERS:
        return REFERENCE_LAYERS[depth]
    return min(depth - 1, round(0.75 * depth))


def routing_key(layer: int) -> str:
    """The image-encoder key whose right singular vectors route: `transformer.resblocks.{L}.mlp.c_fc.weight`."""
    return f"transformer.resblocks.{layer}.mlp.c_fc.weight"


def check_threshold(threshold: object, what: str = "threshold") -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= float(threshold) <= 1.0:
        raise ParamError(f"{what} must be a number in [0, 1] (a routing coefficient), got {threshold!r}")
    return float(threshold)


def subspace_residuals(features: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """`r[b, t] = ||x_b - x_b V_t^T V_t||_2` for features `[B, d]` and bases `[T, k, d]` (rows orthonormal;
    zero rows pad tasks that keep fewer triplets and do not change the projection)."""
    coordinates = torch.einsum("bd,tkd->btk", features, bases)
    projections = torch.einsum("btk,tkd->btd", coordinates, bases)
    return torch.linalg.vector_norm(features[:, None, :] - projections, dim=-1)


def routing_coefficients(residuals: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """`softmax(z / temperature)` with `z` the logits `-r` z-scored across tasks (unbiased std + 1e-6).

    One task: the coefficient is 1 (the z-score is undefined).
    """
    logits = -residuals
    if logits.shape[1] == 1:
        return torch.ones_like(logits)
    standardized = (logits - logits.mean(dim=1, keepdim=True)) / (logits.std(dim=1, keepdim=True) + 1e-6)
    return torch.softmax(standardized / temperature, dim=1)


def select_tasks(
    coefficients: torch.Tensor, threshold: float = 0.2, max_tasks: int = 3, top1: bool = False
) -> list[tuple[int, ...]]:
    """Per sample, the selected task indices (sorted): `c_t > threshold`, at most `max_tasks` (the largest),
    the argmax when none passes; `top1`: the argmax only."""
    selected = []
    for row in coefficients:
        best = int(torch.argmax(row))
        if top1:
            selected.append((best,))
            continue
        passing = torch.nonzero(row > threshold).flatten()
        if len(passing) > max_tasks:
            passing = torch.topk(row, max_tasks).indices
        chosen = sorted(int(i) for i in passing) if len(passing) else [best]
        selected.append(tuple(chosen))
    return selected


def choose_heads(
    embeddings: torch.Tensor, heads: Sequence[torch.Tensor], candidates: Sequence[int], logit_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen task per sample, predicted class in its head) among `candidates`: the head of largest max logit.

    `embeddings` `[B, d]` are L2-normalised image embeddings; logits of task `t` are
    `logit_scale * embeddings @ heads[t].T`. On equal max logits the earlier candidate wins.
    """
    best_scores = torch.full((embeddings.shape[0],), -math.inf)
    chosen = torch.zeros(embeddings.shape[0], dtype=torch.int64)
    classes = torch.zeros(embeddings.shape[0], dtype=torch.int64)
    for task in candidates:
        logits = logit_scale * embeddings.float() @ heads[task].float().T
        score, predicted = logits.max(dim=1)
        better = score > best_scores
        best_scores = torch.where(better, score, best_scores)
        chosen = torch.where(better, torch.tensor(task), chosen)
        classes = torch.where(better, predicted, classes)
    return chosen, classes


@dataclass
class Routing:
    """Routing of one batch: CLS features `[B, d]`, residuals and coefficients `[B, T]`."""

    features: torch.Tensor
    residuals: torch.Tensor
    coefficients: torch.Tensor


@dataclass
class MassOutput:
    """What MASS answers for a batch.

    `predictions`: class index in the answering head; `heads`: the answering task; `selected`:
    each sample's selected task set; `oracle_predictions`: the class in the true task's head
    (when the true tasks were given), the oracle-head answer.
    """

    predictions: torch.Tensor
    heads: torch.Tensor
    selected: list[tuple[int, ...]]
    routing: Routing
    oracle_predictions: torch.Tensor | None = None


@dataclass
class MassStats:
    """Counters over every batch since the last `reset_stats()`."""

    images: int = 0
    batches: int = 0
    set_sizes: Counter = field(default_factory=Counter)
    selected_sets: Counter = field(default_factory=Counter)
    argmax_tasks: Counter = field(default_factory=Counter)
    answering_groups: int = 0
    model_builds: int = 0

    def as_dict(self, task_names: Sequence[str], routing_pass_fraction: float) -> dict[str, object]:
        """JSON-able counters. Each image takes one routing pass (a fraction `routing_pass_fraction` of the
        encoder's blocks) and one answering pass: `passes_per_image` is 2, `block_passes_per_image` in full passes."""
        return {
            "images": self.images,
            "batches": self.batches,
            "set_size_histogram": {str(size): count for size, count in sorted(self.set_sizes.items())},
            "selected_sets": {"+".join(task_names[t] for t in chosen): count
                              for chosen, count in self.selected_sets.most_common()},
            "argmax_tasks": {task_names[t]: count for t, count in sorted(self.argmax_tasks.items())},
            "answering_groups": self.answering_groups,
            "model_builds": self.model_builds,
            "passes_per_image": 2.0 if self.images else 0.0,
            "routing_pass_fraction": routing_pass_fraction,
            "block_passes_per_image": (1.0 + routing_pass_fraction) if self.images else 0.0,
        }


class _RoutingDone(Exception):
    """Raised by the capture hook to end the routing pass once the deepest routing block's input is captured."""


def _resblocks(visual: nn.Module) -> nn.ModuleList:
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise InputError(
            f"{type(visual).__name__}: no transformer.resblocks to hook; MASS needs an open_clip VisionTransformer "
            "image encoder"
        )
    return blocks


def _hooked_module(visual: nn.Module, layer: int) -> nn.Module:
    blocks = _resblocks(visual)
    module = getattr(getattr(blocks[layer], "mlp", None), "c_fc", None)
    if not isinstance(module, nn.Module):
        raise InputError(f"{type(visual).__name__}: block {layer} has no mlp.c_fc to hook")
    return module


class MASS(nn.Module):
    """MASS over an open_clip CLIP (or its `visual`), theta_pre, compressed task vectors and heads.

    `model`: an open_clip CLIP (its `visual` and `logit_scale` are used) or a
    VisionTransformer; it is copied, never modified. `pretrained`: theta_pre's image-encoder
    state dict (`model.visual.state_dict()` keys). `compressed[t]` and `heads[t]`
    (`[C_t, embed_dim]`) belong to task `t`; `task_names` name them. Options: `layer`
    (default `default_layer(depth)`), `threshold` in [0, 1], `max_tasks` >= 1, `top1`
    (route to the argmax only), `oracle_head` (answer with the true task's head; `forward`
    then needs `tasks`), `temperature` > 0, `cache_size` >= 1 merged models kept.
    """

    def __init__(
        self,
        model: nn.Module,
        pretrained: Mapping[str, torch.Tensor],
        compressed: Sequence[CompressedTaskVector],
        heads: Sequence[torch.Tensor],
        *,
        task_names: Sequence[str] | None = None,
        layer: int | None = None,
        threshold: float = 0.2,
        max_tasks: int = 3,
        top1: bool = False,
        oracle_head: bool = False,
        temperature: float = 1.0,
        cache_size: int = 16,
    ) -> None:
        super().__init__()
        check_compatible(compressed)
        self.threshold = check_threshold(threshold)
        if isinstance(max_tasks, bool) or not isinstance(max_tasks, numbers.Integral) or max_tasks < 1:
            raise ParamError(f"max_tasks must be an integer >= 1, got {max_tasks!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
            raise ParamError(f"temperature must be a positive number, got {temperature!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, numbers.Integral) or cache_size < 1:
            raise ParamError(f"cache_size must be an integer >= 1, got {cache_size!r}")
        visual = getattr(model, "visual", model)
        if not isinstance(visual, nn.Module):
            raise InputError(f"model: expected an open_clip CLIP or image encoder, got {type(model).__name__}")
        self.depth = len(_resblocks(visual))
        self.layer = self._check_layer(default_layer(self.depth) if layer is None else layer)
        num_tasks = len(compressed)
        names = [f"task{t}" for t in range(num_tasks)] if task_names is None else [str(n) for n in task_names]
        if len(names) != num_tasks or len(set(names)) != num_tasks:
            raise ParamError(f"task_names must be {num_tasks} distinct names, got {names}")
        if len(heads) != num_tasks:
            raise ParamError(f"got {len(heads)} heads for {num_tasks} compressed task vectors")
        embed_dim = getattr(visual, "output_dim", None)
        checked_heads = []
        for name, head in zip(names, heads):
            if not isinstance(head, torch.Tensor) or head.ndim != 2 or head.shape[0] < 1 or (
                    embed_dim is not None and head.shape[1] != embed_dim):
                raise InputError(f"head of task {name!r}: expected [num_classes, {embed_dim}], "
                                 f"got {getattr(head, 'shape', type(head).__name__)}")
            checked_heads.append(head.detach().float().cpu())
        expected = visual.state_dict()
        floating = {key for key, value in expected.items() if value.is_floating_point()}
        if set(pretrained) != set(expected):
            raise InputError(f"pretrained: keys differ from the model's image encoder: missing "
                             f"{sorted(set(expected) - set(pretrained))[:5]}, extra {sorted(set(pretrained) - set(expected))[:5]}")
        if set(compressed[0].keys()) != floating:
            raise InputError(f"{compressed[0].label}: keys differ from the image encoder's floating keys: missing "
                             f"{sorted(floating - set(compressed[0].keys()))[:5]}, extra "
                             f"{sorted(set(compressed[0].keys()) - floating)[:5]}")
        self.task_names = names
        self.max_tasks = int(max_tasks)
        self.top1 = bool(top1)
        self.oracle_head = bool(oracle_head)
        self.temperature = float(temperature)
        self.cache_size = int(cache_size)
        self.compressed = list(compressed)
        self.heads = checked_heads
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 1.0
        self.pretrained = {key: value.detach() for key, value in pretrained.items()}
        parameter = next(visual.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self._template = copy.deepcopy(visual).eval()
        self._bases: dict[int, torch.Tensor] = {}
        self.routing_basis(self.layer)
        self.stats = MassStats()
        self.base = self._build(tuple(range(num_tasks)))
        self._cache: OrderedDict[tuple[int, ...], nn.Module] = OrderedDict()
        self.reset_stats()

    # ------------------------------------------------------------------ building blocks

    def _check_layer(self, layer: object) -> int:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= int(layer) < self.depth:
            raise ParamError(f"layer must be a block index in [0, {self.depth - 1}] (the encoder has {self.depth} "
                             f"blocks), got {layer!r}")
        return int(layer)

    def routing_basis(self, layer: int) -> torch.Tensor:
        """`[T, k_max, d]`: each task's kept rows of `V^T` for `routing_key(layer)`, zero-padded to `k_max`."""
        layer = self._check_layer(layer)
        if layer not in self._bases:
            key = routing_key(layer)
            _hooked_module(self._template, layer)
            if key not in self.compressed[0].factors:
                raise InputError(f"{self.compressed[0].label}: {key!r} is not stored as factors, so it cannot route "
                                 "(compress the task vectors with weaving.compress)")
            rows = [c.factors[key].vh.float() for c in self.compressed]
            width = max(r.shape[0] for r in rows)
            basis = torch.zeros(len(rows), width, rows[0].shape[1])
            for t, r in enumerate(rows):
                basis[t, : r.shape[0]] = r
            self._bases[layer] = basis.to(self.device)
        return self._bases[layer]

    def _build(self, tasks: tuple[int, ...]) -> nn.Module:
        merged = tsv_merge_compressed([self.compressed[t] for t in tasks])
        state = apply_task_vector(self.pretrained, merged)
        module = copy.deepcopy(self._template)
        module.load_state_dict(state)
        self.stats.model_builds += 1
        return module.eval()

    def model_for(self, tasks: Sequence[int]) -> nn.Module:
        """The image encoder theta_pre + TSV-Merge(`tasks`) (lam = 1), from the cache or built."""
        key = tuple(sorted(int(t) for t in tasks))
        if not key or any(not 0 <= t < len(self.compressed) for t in key):
            raise ParamError(f"tasks must be indices in [0, {len(self.compressed) - 1}], got {tasks!r}")
        if key == tuple(range(len(self.compressed))):
            return self.base
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        module = self._build(key)
        self._cache[key] = module
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return module

    def reset_stats(self) -> None:
        self.stats = MassStats()

    def stats_dict(self) -> dict[str, object]:
        return self.stats.as_dict(self.task_names, (self.layer + 1) / self.depth)

    # ------------------------------------------------------------------ the three steps

    @torch.inference_mode()
    def route_layers(self, images: torch.Tensor, layers: Sequence[int]) -> dict[int, Routing]:
        """Routing at several blocks from one routing pass (stopped after the deepest of `layers`)."""
        layers = sorted({self._check_layer(layer) for layer in layers})
        if not layers:
            raise ParamError("route_layers needs at least one layer")
        bases = {layer: self.routing_basis(layer) for layer in layers}
        batch_first = getattr(self.base.transformer, "batch_first", True)
        captured: dict[int, torch.Tensor] = {}

        def capture(layer: int):
            def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
                hidden = inputs[0]
                captured[layer] = (hidden[:, 0, :] if batch_first else hidden[0]).float()
                if layer == layers[-1]:
                    raise _RoutingDone
            return hook

        handles = [_hooked_module(self.base, layer).register_forward_pre_hook(capture(layer)) for layer in layers]
        try:
            self.base(images.to(device=self.device, dtype=self.dtype))
        except _RoutingDone:
            pass
        finally:
            for handle in handles:
                handle.remove()
        routings = {}
        for layer in layers:
            residuals = subspace_residuals(captured[layer], bases[layer])
            routings[layer] = Routing(captured[layer].cpu(), residuals.cpu(),
                                      routing_coefficients(residuals, self.temperature).cpu())
        return routings

    def route(self, images: torch.Tensor) -> Routing:
        """Steps 1-2 at `self.layer`: CLS features, subspace residuals and coefficients."""
        return self.route_layers(images, [self.layer])[self.layer]

    def select(self, coefficients: torch.Tensor, *, threshold: float | None = None, max_tasks: int | None = None,
               top1: bool | None = None) -> list[tuple[int, ...]]:
        """Step 3 with the module's options (or those given)."""
        return select_tasks(coefficients, self.threshold if threshold is None else check_threshold(threshold),
                            self.max_tasks if max_tasks is None else max_tasks, self.top1 if top1 is None else top1)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, selected: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """Step 4: normalised image embeddings `[B, embed_dim]`, each group of equal sets through its merged model."""
        if len(selected) != len(images):
            raise ParamError(f"got {len(selected)} selections for {len(images)} images")
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, chosen in enumerate(selected):
            groups.setdefault(tuple(chosen), []).append(index)
        embeddings: torch.Tensor | None = None
        for chosen, indices in groups.items():
            where = torch.tensor(indices)
            features = self.model_for(chosen)(images[where].to(device=self.device, dtype=self.dtype)).float()
            if embeddings is None:
                embeddings = torch.empty(len(images), features.shape[1])
            embeddings[where] = F.normalize(features, dim=-1).cpu()
        self.stats.answering_groups += len(groups)
        assert embeddings is not None
        return embeddings

    def answer(self, images: torch.Tensor, selected: Sequence[tuple[int, ...]],
               tasks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Steps 4-5: (predicted class, answering task, oracle-head class or None) per image."""
        embeddings = self.embed(images, selected)
        chosen = torch.empty(len(images), dtype=torch.int64)
        predictions = torch.empty(len(images), dtype=torch.int64)
        by_set: dict[tuple[int, ...], list[int]] = {}
        for index, candidates in enumerate(selected):
            by_set.setdefault(tuple(candidates), []).append(index)
        for candidates, indices in by_set.items():
            where = torch.tensor(indices)
            chosen[where], predictions[where] = choose_heads(embeddings[where], self.heads, candidates,
                                                             self.logit_scale)
        oracle = None
        if tasks is not None:
            oracle = torch.empty(len(images), dtype=torch.int64)
            for task in torch.unique(tasks).tolist():
                where = torch.nonzero(tasks == task).flatten()
                oracle[where] = (embeddings[where] @ self.heads[task].T).argmax(dim=1)
        return predictions, chosen, oracle

    def _record(self, selected: Sequence[tuple[int, ...]], coefficients: torch.Tensor) -> None:
        self.stats.images += len(selected)
        self.stats.batches += 1
        self.stats.set_sizes.update(len(s) for s in selected)
        self.stats.selected_sets.update(tuple(s) for s in selected)
        self.stats.argmax_tasks.update(coefficients.argmax(dim=1).tolist())

    @torch.inference_mode()
    def forward(self, images: torch.Tensor, tasks: torch.Tensor | Sequence[int] | int | None = None) -> MassOutput:
        """Route, select, merge and answer a batch `[B, 3, S, S]` (steps 1-5).

        `tasks`: the true task of each image (an int for the whole batch), needed in
        oracle-head mode and giving `oracle_predictions` otherwise. In oracle-head mode
        `predictions` are the oracle head's and `heads` the true tasks.
        """
        if self.oracle_head and tasks is None:
            raise ParamError("oracle-head mode needs the true task of each image (tasks=...)")
        true_tasks = None
        if tasks is not None:
            true_tasks = torch.full((len(images),), int(tasks)) if isinstance(tasks, numbers.Integral) else \
                torch.as_tensor(tasks, dtype=torch.int64)
            if true_tasks.shape != (len(images),) or bool(((true_tasks < 0) | (true_tasks >= len(self.heads))).any()):
                raise ParamError(f"tasks must give one index in [0, {len(self.heads) - 1}] per image")
        routing = self.route(images)
        selected = self.select(routing.coefficients)
        self._record(selected, routing.coefficients)
        predictions, chosen, oracle = self.answer(images, selected, true_tasks)
        if self.oracle_head:
            assert oracle is not None and true_tasks is not None
            predictions, chosen = oracle, true_tasks
        return MassOutput(predictions, chosen, selected, routing, oracle)
