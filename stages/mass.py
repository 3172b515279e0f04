"""Stage `mass@<model>`: MASS input-adaptive routing over the compressed task vectors, and its ablations.

MASS (Crisostomi et al., 2025; `weaving.routing`) routes each test image of the multi-task suite
to the tasks whose TSV-C subspaces (of block `L`'s `mlp.c_fc`) its features lie in, merges those
with TSV-Merge and answers with their heads. Reads the `compress` stage's files
(`models/<model>/compressed/`, checked against this model's pretrained checkpoint by sha256) and
writes `metrics/<model>/tsv/mass.json` (`weaving.routing.experiment.run_mass_experiment`): per
task fine-tuned, TSV-Merge (lam = 1), TSV-C with the task known, MASS, MASS with the oracle head,
MASS top-1; routing accuracy, survival, selected-set sizes, forward passes per image; storage; the
threshold sweep (params `mass.thresholds`) and the layer sweep (`mass.layers`, plus `L`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from _common import compute_device, paths, stage, stage_params

from weaving_pipeline.params import Params

if TYPE_CHECKING:
    from weaving.metrics_tsv import MassMetrics


def mass_stage(params: Params, model_name: str) -> MassMetrics:
    """Run the MASS evaluation and write the metrics file (see the module docstring)."""
    from weaving.clip import load_pretrained
    from weaving.io import load_state_dict
    from weaving.metrics_tsv import MassMetrics
    from weaving.routing.experiment import run_mass_experiment
    from weaving_pipeline.params_tsv import check_layers
    from weaving_pipeline.tsv_inputs import load_compressed_suite, suite_inputs

    model = load_pretrained(paths.pretrained(model_name), device=compute_device())
    depth = len(model.visual.transformer.resblocks)
    layer, layers = check_layers(params.mass, model_name, depth, list(params.models))
    compressed = load_compressed_suite(params, model_name)
    heads, caches, finetuned = suite_inputs(params, model_name)
    pretrained = load_state_dict(paths.pretrained_visual(model_name))
    result = run_mass_experiment(
        model, pretrained, compressed, heads, caches, finetuned_accuracy=finetuned, layer=layer,
        threshold=params.mass.threshold, max_tasks=params.mass.max_tasks, thresholds=params.mass.thresholds,
        layers=sorted(set(layers) | ({layer} if layer is not None else set())),
        batch_size=params.eval.batch_size, progress=True)
    metrics = MassMetrics(model=model_name, **result)
    metrics.write(paths.tsv_metrics(model_name, "mass"))
    return metrics


def main() -> None:
    params, (model_name,) = stage_params({"model": lambda p: p.models})
    name = f"mass@{model_name}"
    with stage(name, threads=params.threads):
        metrics = mass_stage(params, model_name)
        head = metrics.headline
        print(f"[{name}] MASS {head.normalized_mean:.2f}% of fine-tuned (normalised mean), TSV-Merge "
              f"{head.tsv_merge_normalized_mean:.2f}%, top-1 {head.top1_normalized_mean:.2f}%")


if __name__ == "__main__":
    main()
