"""Stage `compress@<model>`: TSV-C of the multi-task suite's task vectors, and its evaluation.

Each task vector `tau_t = theta_t - theta_pre` of params `suite.mtl` keeps, per 2-D layer, its
top `k = int(r f)` singular triplets (Gargiulo et al., CVPR 2025; `weaving.compress`). The stage
writes the `f = 1/T` set under `models/<model>/compressed/<task>.safetensors` (the library's file
format, with the pretrained and fine-tuned checkpoints' sha256) and
`metrics/<model>/tsv/compress.json`: per task, the fine-tuned accuracy (from the fine-tune
stage's metrics), TSV-C with the task known (theta_pre + reconstruction, lam = 1) and its
normalised accuracy (accuracy / fine-tuned, %), with storage against one model and against T
models, for `1/T` and every fraction of params `compress.rank_fractions`
(`weaving.compress.experiment.run_compression_experiment`: one SVD per task serves the sweep).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from _common import compute_device, paths, stage, stage_params

from weaving_pipeline.checkpoints import pipeline_task_vectors
from weaving_pipeline.params import Params

if TYPE_CHECKING:
    from weaving.metrics_tsv import CompressMetrics


def compress_stage(params: Params, model_name: str) -> CompressMetrics:
    """Compress, evaluate, write the compressed set and the metrics file (see the module docstring)."""
    import dataclasses

    from weaving.atomic import atomic_dir
    from weaving.clip import load_pretrained
    from weaving.compress.experiment import run_compression_experiment
    from weaving.compress.files import save_compressed
    from weaving.io import sha256_file
    from weaving.metrics_tsv import CompressMetrics
    from weaving_pipeline.tsv_inputs import suite_inputs

    heads, caches, finetuned = suite_inputs(params, model_name)
    model = load_pretrained(paths.pretrained(model_name), device=compute_device())
    pretrained, taus, _ = pipeline_task_vectors(params, model_name, "mtl", params.seed)
    result, compressed = run_compression_experiment(
        model, pretrained, taus, heads, caches, rank_fractions=params.compress.rank_fractions,
        finetuned_accuracy=finetuned, batch_size=params.eval.batch_size, progress=True)
    metrics = CompressMetrics(model=model_name, **result)

    tasks = list(taus)
    pretrained_file = paths.pretrained_visual(model_name)
    pretrained_sha256 = sha256_file(pretrained_file)
    folder = paths.compressed(model_name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as staging:
        for index, task in enumerate(tasks):
            source = paths.finetuned(model_name, task, seed=params.seed)
            record = dataclasses.replace(compressed[task], pretrained_sha256=pretrained_sha256,
                                         source_sha256=sha256_file(source))
            save_compressed(staging / f"{task}.safetensors", record, pretrained_path=str(pretrained_file),
                            source_path=str(source), extra_metadata={"tasks": ",".join(tasks), "task_index": str(index)})
    metrics.write(paths.tsv_metrics(model_name, "compress"))
    return metrics


def main() -> None:
    params, (model_name,) = stage_params({"model": lambda p: p.models})
    name = f"compress@{model_name}"
    with stage(name, threads=params.threads):
        metrics = compress_stage(params, model_name)
        default = metrics.default
        print(f"[{name}] TSV-C at f = 1/{metrics.num_tasks}: {default.normalized_mean:.2f}% of fine-tuned "
              f"(normalised mean), storage {default.storage.ratio_to_one_model:.2f}x one model")


if __name__ == "__main__":
    main()
