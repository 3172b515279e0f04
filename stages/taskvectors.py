"""Stage `taskvectors@<model>-<seed>`: cosine similarity of task vectors and the reference accuracies.

Writes similarity.json (individual fine-tuning vs sequential fine-tuning, the paper's
Figure 3) and reference.json (zero-shot, fine-tuned and sequential accuracies, for the
report to set beside the merged ones), both of one replicate (`metrics/<model>/seed<seed>/`).
"""

from _common import paths, stage, stage_params

from weaving_pipeline.checkpoints import pipeline_task_vectors
from weaving_pipeline.params import Params


def task_vector_metrics(params: Params, model_name: str, seed: int) -> None:
    import torch

    from weaving.metrics import (
        ContinualReference,
        FinetuneMetrics,
        ReferenceMetrics,
        SequentialMetrics,
        SimilarityMatrix,
        SimilarityMetrics,
        ZeroshotMetrics,
    )

    def cosine_matrix(taus: dict) -> SimilarityMatrix:
        names = list(taus)
        flat = torch.stack([torch.cat([v.flatten().double() for _, v in sorted(taus[n].items())]) for n in names])
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return SimilarityMatrix(labels=names, matrix=(unit @ unit.T).clamp(-1, 1).round(decimals=4).tolist())

    _, individual, _ = pipeline_task_vectors(params, model_name, "mtl", seed)
    _, sequential, splits = pipeline_task_vectors(params, model_name, "cl", seed)
    SimilarityMetrics(
        individual=cosine_matrix(individual),
        sequential={b: cosine_matrix({n.split("/")[-1]: sequential[n] for n in names}) for b, names in splits.items()},
    ).write(paths.seed_metrics(model_name, seed, "similarity.json"))

    metrics = paths.seed_metrics(model_name, seed)
    zeroshot = ZeroshotMetrics.read(paths.metrics(model_name, "zeroshot.json")).root
    cl = {}
    for benchmark in params.suite.cl:
        seq = SequentialMetrics.read(metrics / "sequential" / f"{benchmark}.json")
        cl[benchmark] = ContinualReference(zeroshot=zeroshot[seq.dataset], sequential_final=seq.final_accuracy)
    ReferenceMetrics(
        model=model_name,
        zeroshot={t: zeroshot[t] for t in params.suite.mtl},
        finetuned={t: FinetuneMetrics.read(metrics / "finetune" / f"{t}.json").accuracy for t in params.suite.mtl},
        cl=cl,
    ).write(metrics / "reference.json")
    print(f"[taskvectors@{model_name}-{seed}] {len(individual)} individual, {len(sequential)} sequential task vectors")


def main() -> None:
    params, (model_name, seed) = stage_params({"model": lambda p: p.models, "seed": lambda p: [str(s) for s in p.seeds]})
    with stage(f"taskvectors@{model_name}-{seed}", threads=params.threads):
        task_vector_metrics(params, model_name, int(seed))


if __name__ == "__main__":
    main()
