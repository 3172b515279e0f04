"""The MASS evaluation a pipeline stage runs on the multi-task suite.

Every task's test images are fed with their true task known to the metrics only. Per task
(accuracy in %): fine-tuned (given), TSV-Merge (theta_pre + TSV-Merge(all), lam = 1),
TSV-C with the task known (theta_pre + reconstruct(TSV-C(tau_t)), lam = 1), MASS, MASS
with the oracle head (MASS's routing and merged model, the true task's head), MASS top-1
(routing to the argmax only). A MASS answer is correct when the answering head is the true
task's and its class is the label (the reference compares the class index alone, whatever
the head; this is stricter). Routing: accuracy (argmax coefficient = true task), survival
(true task selected), head accuracy (the answering head is the true task's), selected-set sizes. Sweeps: the threshold (at the default layer) and
the layer (at the default threshold). One routing pass per image serves every layer and
every selection rule; an image is embedded once per distinct selected set across all rules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import torch
from tqdm import tqdm

from weaving.compress.experiment import mean, normalized, task_accuracy
from weaving.compress.tsvc import CompressedTaskVector, storage_summary, tsv_merge_compressed
from weaving.errors import ParamError
from weaving.routing.mass import MASS, check_threshold, choose_heads, select_tasks

__all__ = ["run_mass_experiment"]

DEFAULT_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)


def _percent(count: int, total: int) -> float:
    return 100.0 * count / total if total else float("nan")


def run_mass_experiment(
    model: torch.nn.Module,
    pretrained: Mapping[str, torch.Tensor],
    compressed: Mapping[str, CompressedTaskVector],
    heads: Mapping[str, torch.Tensor],
    caches: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    finetuned_accuracy: Mapping[str, float] | None = None,
    layer: int | None = None,
    threshold: float = 0.2,
    max_tasks: int = 3,
    temperature: float = 1.0,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    layers: Sequence[int] | None = None,
    batch_size: int = 256,
    cache_size: int = 64,
    progress: bool = False,
) -> dict[str, object]:
    """JSON-able MASS metrics (see the module docstring).

    `compressed`, `heads`, `caches` by task name (the order of `compressed` is the task
    order); `model` an open_clip CLIP whose `visual` matches `pretrained` (its weights are
    overwritten by the static evaluations). `layers`: the layer sweep (default every
    block). Keys: `tasks`, `options`, `accuracy` / `normalized` (variant -> task -> %),
    `mean` / `normalized_mean` (variant -> %), `routing` (per task `accuracy`,
    `survival`, `head_accuracy`, `mean_set_size`; `confusion` true -> argmax counts; the MASS run's
    `set_size_histogram`, `selected_sets`, `passes_per_image`, `routing_pass_fraction`,
    `block_passes_per_image`, `model_builds`), `storage`, `sweeps` (`threshold`, `layer`:
    lists of records) and `headline`.
    """
    tasks = list(compressed)
    if not tasks:
        raise ParamError("the task list is empty: MASS needs at least one compressed task vector")
    missing = [t for t in tasks if t not in heads or t not in caches]
    if missing:
        raise ParamError(f"no head or test cache for tasks {missing}")
    thresholds = [check_threshold(t, f"thresholds[{i}]") for i, t in enumerate(thresholds)]
    mass = MASS(model, pretrained, [compressed[t] for t in tasks], [heads[t] for t in tasks], task_names=tasks,
                layer=layer, threshold=threshold, max_tasks=max_tasks, temperature=temperature,
                cache_size=cache_size)
    sweep_layers = list(range(mass.depth)) if layers is None else [mass._check_layer(x) for x in layers]
    all_layers = sorted(set(sweep_layers) | {mass.layer})

    accuracy: dict[str, dict[str, float]] = {}
    merged = tsv_merge_compressed([compressed[t] for t in tasks])
    accuracy["tsv_merge"] = {t: task_accuracy(model, pretrained, merged, heads[t], caches[t], batch_size)
                             for t in tqdm(tasks, desc="TSV-Merge", disable=not progress)}
    accuracy["tsvc_task_known"] = {t: task_accuracy(model, pretrained, compressed[t].to_dense(), heads[t], caches[t],
                                                    batch_size) for t in tqdm(tasks, desc="TSV-C", disable=not progress)}

    coefficients: dict[int, dict[str, torch.Tensor]] = {x: {} for x in all_layers}
    for t in tqdm(tasks, desc="routing pass", disable=not progress):
        parts: dict[int, list[torch.Tensor]] = {x: [] for x in all_layers}
        for chunk in caches[t]["images"].split(batch_size):
            for x, routing in mass.route_layers(chunk, all_layers).items():
                parts[x].append(routing.coefficients)
        for x in all_layers:
            coefficients[x][t] = torch.cat(parts[x])

    evaluated: dict[tuple, dict[str, object]] = {}
    embedded: dict[tuple[str, tuple[int, ...]], dict[int, torch.Tensor]] = {}

    def embeddings_of(t: str, selected: list[tuple[int, ...]]) -> torch.Tensor:
        """Each image's embedding under its selected set's model; an (image, set) pair is embedded once
        across all rules (the merged model, hence the embedding, depends on the set only)."""
        images = caches[t]["images"]
        todo: dict[tuple[int, ...], list[int]] = {}
        for i, chosen in enumerate(selected):
            if i not in embedded.setdefault((t, chosen), {}):
                todo.setdefault(chosen, []).append(i)
        for chosen, indices in todo.items():
            for start in range(0, len(indices), batch_size):
                part = indices[start:start + batch_size]
                vectors = mass.embed(images[torch.tensor(part)], [chosen] * len(part))
                embedded[(t, chosen)].update(zip(part, vectors))
        return torch.stack([embedded[(t, chosen)][i] for i, chosen in enumerate(selected)])

    def run_rule(at_layer: int, rule_threshold: float, top1: bool) -> dict[str, object]:
        key = (at_layer, rule_threshold, top1)
        if key in evaluated:
            return evaluated[key]
        correct, oracle_correct, head_correct, survived, sizes = {}, {}, {}, {}, {}
        histogram: Counter = Counter()
        sets: Counter = Counter()
        for index, t in enumerate(tasks):
            images, labels = caches[t]["images"], caches[t]["labels"]
            selected = select_tasks(coefficients[at_layer][t], rule_threshold, max_tasks, top1)
            embeddings = embeddings_of(t, selected)
            chosen = torch.empty(len(images), dtype=torch.int64)
            predicted = torch.empty(len(images), dtype=torch.int64)
            for candidates in set(selected):
                where = torch.tensor([i for i, s in enumerate(selected) if s == candidates])
                chosen[where], predicted[where] = choose_heads(embeddings[where], mass.heads, candidates,
                                                               mass.logit_scale)
            hits = int(((chosen == index) & (predicted == labels)).sum())
            oracle_hits = int(((embeddings @ mass.heads[index].T).argmax(dim=1) == labels).sum())
            correct[t] = _percent(hits, len(images))
            head_correct[t] = _percent(int((chosen == index).sum()), len(images))
            oracle_correct[t] = _percent(oracle_hits, len(images))
            survived[t] = _percent(sum(index in s for s in selected), len(selected))
            sizes[t] = sum(len(s) for s in selected) / len(selected) if selected else float("nan")
            histogram.update(len(s) for s in selected)
            sets.update(selected)
        result = {"accuracy": correct, "oracle_head": oracle_correct, "head_accuracy": head_correct,
                  "survival": survived, "mean_set_size": sizes,
                  "set_size_histogram": {str(k): v for k, v in sorted(histogram.items())},
                  "selected_sets": {"+".join(tasks[i] for i in s): n for s, n in sets.most_common()}}
        evaluated[key] = result
        return result

    def routing_accuracy(at_layer: int) -> dict[str, float]:
        return {t: _percent(int((coefficients[at_layer][t].argmax(dim=1) == i).sum()), len(coefficients[at_layer][t]))
                for i, t in enumerate(tasks)}

    builds_before = mass.stats.model_builds
    headline_rule = run_rule(mass.layer, mass.threshold, False)
    model_builds = mass.stats.model_builds - builds_before
    top1_rule = run_rule(mass.layer, mass.threshold, True)
    accuracy["mass"] = headline_rule["accuracy"]
    accuracy["mass_oracle_head"] = headline_rule["oracle_head"]
    accuracy["mass_top1"] = top1_rule["accuracy"]
    finetuned = None if finetuned_accuracy is None else {t: float(finetuned_accuracy[t]) for t in tasks}
    if finetuned is not None:
        accuracy = {"finetuned": finetuned, **accuracy}

    def summary(rule: dict[str, object]) -> dict[str, object]:
        record = {"mean": mean(rule["accuracy"]), "oracle_head_mean": mean(rule["oracle_head"]),
                  "survival": mean(rule["survival"]), "head_accuracy": mean(rule["head_accuracy"]),
                  "mean_set_size": mean(rule["mean_set_size"]), "accuracy": rule["accuracy"]}
        if finetuned is not None:
            record["normalized_mean"] = mean(normalized(rule["accuracy"], finetuned))
        return record

    threshold_sweep = [{"threshold": value, **summary(run_rule(mass.layer, value, False))}
                       for value in tqdm(thresholds, desc="threshold sweep", disable=not progress)]
    layer_sweep = [{"layer": x, "routing_accuracy": mean(routing_accuracy(x)),
                    **summary(run_rule(x, mass.threshold, False))}
                   for x in tqdm(sweep_layers, desc="layer sweep", disable=not progress)]

    confusion = {}
    for t in tasks:
        counts = Counter(coefficients[mass.layer][t].argmax(dim=1).tolist())
        confusion[t] = {tasks[i]: counts.get(i, 0) for i in range(len(tasks))}
    storage = storage_summary([compressed[t] for t in tasks])
    pretrained_numbers = sum(v.numel() for v in pretrained.values() if v.is_floating_point())
    storage["mass_ratio_to_one_model"] = (storage["stored_numbers"] + pretrained_numbers) / pretrained_numbers
    metrics: dict[str, object] = {
        "tasks": tasks,
        "options": {"layer": mass.layer, "depth": mass.depth, "threshold": mass.threshold, "max_tasks": max_tasks,
                    "temperature": temperature, "rank_fraction": compressed[tasks[0]].rank_fraction},
        "accuracy": accuracy,
        "mean": {variant: mean(values) for variant, values in accuracy.items()},
    }
    if finetuned is not None:
        norm = {variant: normalized(values, finetuned) for variant, values in accuracy.items()}
        metrics["normalized"] = norm
        metrics["normalized_mean"] = {variant: mean(values) for variant, values in norm.items()}
    metrics["routing"] = {
        "accuracy": routing_accuracy(mass.layer),
        "survival": headline_rule["survival"],
        "head_accuracy": headline_rule["head_accuracy"],
        "mean_set_size": headline_rule["mean_set_size"],
        "confusion": confusion,
        "set_size_histogram": headline_rule["set_size_histogram"],
        "selected_sets": headline_rule["selected_sets"],
        "passes_per_image": 2.0,
        "routing_pass_fraction": (mass.layer + 1) / mass.depth,
        "block_passes_per_image": 1.0 + (mass.layer + 1) / mass.depth,
        "model_builds": model_builds,
    }
    metrics["routing"]["mean_accuracy"] = mean(metrics["routing"]["accuracy"])
    metrics["routing"]["mean_survival"] = mean(headline_rule["survival"])
    metrics["routing"]["mean_head_accuracy"] = mean(headline_rule["head_accuracy"])
    metrics["storage"] = storage
    metrics["sweeps"] = {"threshold": threshold_sweep, "layer": layer_sweep}
    headline = {"mass_mean": metrics["mean"]["mass"], "tsv_merge_mean": metrics["mean"]["tsv_merge"],
                "mass_top1_mean": metrics["mean"]["mass_top1"], "storage_ratio": storage["mass_ratio_to_one_model"]}
    if finetuned is not None:
        headline.update({"normalized_mean": metrics["normalized_mean"]["mass"],
                         "tsv_merge_normalized_mean": metrics["normalized_mean"]["tsv_merge"],
                         "top1_normalized_mean": metrics["normalized_mean"]["mass_top1"]})
    metrics["headline"] = headline
    return metrics
