"""Stage `align@<dataset>-<arch>`: merge the trained models with every merger and evaluate (C2M3 branch).

Reads the `c2m3.num_models` models of `models/align/<dataset>-<arch>/` (written by `align_train`)
and merges, for every size `n` of `c2m3.subset_sizes`, the first `n` models (and
`c2m3.subsets_per_size - 1` more subsets drawn with `c2m3.seed`) by naive averaging, pairwise
matching to the first model, MergeMany and C2M3 (`weaving.align.experiment.run_alignment_experiment`;
at most `c2m3.fw_max_iter` Frank-Wolfe iterations, the linear assignments in `threads` threads;
REPAIR of the conv nets' (ResNet, VGG) merges on the first `c2m3.repair_samples` training images), evaluated on the
prepared `test` split. Writes `metrics/align/<dataset>-<arch>.json` (`weaving.metrics_align.AlignMetrics`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from _common import paths, stage, stage_params

from weaving_pipeline.params import Params

if TYPE_CHECKING:
    from weaving.metrics_align import AlignMetrics


def load_trained(params: Params, dataset: str, arch: str):
    """The `align_train` stage's models as `weaving.align.experiment.TrainedModels`, checked against params:
    a missing or foreign model file, or a `train.json` of other settings, is an `InputError` naming the file."""
    import json

    from weaving.align.experiment import TrainedModels
    from weaving.errors import InputError
    from weaving.io import load_state_dict

    folder = paths.align_models(dataset, arch)
    manifest = folder / "train.json"
    try:
        record = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise InputError(f"{manifest}: missing; run the align_train stage (dvc repro)") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{manifest}: not valid JSON ({error}); remove it and run dvc repro") from None
    expected = {"dataset": dataset, "arch": arch, "num_models": params.c2m3.num_models, "seed": params.c2m3.seed}
    differing = [k for k, v in expected.items() if record.get(k) != v]
    if differing:
        raise InputError(f"{manifest}: {', '.join(f'{k} = {record.get(k)!r}' for k in differing)} differ from params "
                         f"({', '.join(f'{k} = {expected[k]!r}' for k in differing)}); run dvc repro")
    states = [load_state_dict(paths.align_models(dataset, arch, i)) for i in range(params.c2m3.num_models)]
    return TrainedModels(arch, states, record["model_kwargs"], record["normalisation"]["mean"],
                         record["normalisation"]["std"], [m["losses"] for m in record["models"]],
                         record["seconds"]), record


def align_stage(params: Params, dataset: str, arch: str) -> AlignMetrics:
    """Merge, evaluate and write the metrics file (see the module docstring)."""
    from weaving.align.experiment import run_alignment_experiment
    from weaving.datasets import load_prepared
    from weaving.metrics_align import AlignMetrics

    c2m3 = params.c2m3
    trained, record = load_trained(params, dataset, arch)
    data = load_prepared(paths.prepared(dataset))
    train, test = data.split("train"), data.split("test")
    result = run_alignment_experiment(
        trained, test.uint8_images(), test.labels, repair_images=train.uint8_images(),
        repair_samples=c2m3.repair_samples, subset_sizes=tuple(c2m3.subset_sizes),
        subsets_per_size=c2m3.subsets_per_size, seed=c2m3.seed, fw_max_iter=c2m3.fw_max_iter,
        barrier_points=c2m3.barrier_points, batch_size=params.eval.batch_size, workers=params.threads,
        progress=True)
    result = {"dataset": dataset, **result, "train": record["train"], "train_images": record["train_images"],
              "test_images": len(test)}
    metrics = AlignMetrics(**result)
    metrics.write(paths.align_metrics(dataset, arch))
    return metrics


def main() -> None:
    params, (dataset, arch) = stage_params({"dataset": lambda p: p.c2m3.datasets, "arch": lambda p: p.c2m3.archs})
    name = f"align@{paths.align_run(dataset, arch)}"
    with stage(name, threads=params.threads):
        metrics = align_stage(params, dataset, arch)
        for entry in metrics.summary:
            cells = ", ".join(f"{merger} {s.accuracy:.1f}" + (f" ({s.repair.accuracy:.1f} REPAIRed)" if s.repair else "")
                              for merger, s in entry.mergers.items())
            print(f"[{name}] N = {entry.size}: endpoints {entry.endpoint_mean.accuracy:.1f}%, {cells}")
        print(f"[{name}] merges in {metrics.seconds:.1f} s")


if __name__ == "__main__":
    main()
