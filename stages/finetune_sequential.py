"""Stage `finetune_sequential@<model>-<benchmark>-<seed>`: class-incremental sequential fine-tuning.

Split i starts from split i-1's image encoder and trains with a head over split i's
classes, from seed `1000 * seed + i` (seed: the replicate, params `seeds`); each split's checkpoint
is kept, its task vector is taken against theta_pre.
"""

from _common import compute_device, is_main_process, load_tensors, paths, save_weights, stage, stage_params

from weaving_pipeline.params import Params


def finetune_benchmark(params: Params, model_name: str, name: str, seed: int) -> None:
    import json
    import shutil

    from weaving.atomic import atomic_dir
    from weaving.clip import FinetuneRecipe, evaluate, finetune, load_pretrained
    from weaving.datasets import class_splits, load_prepared
    from weaving.io import load_state_dict
    from weaving.metrics import SequentialMetrics, SequentialSplit

    benchmark = params.cl_benchmarks[name]
    recipe_fields = params.sequential.recipe_for(benchmark.dataset)
    recipe = FinetuneRecipe(**{k: v for k, v in recipe_fields.items() if v is not None})
    model = load_pretrained(paths.pretrained(model_name), device=compute_device())
    dataset = load_prepared(paths.prepared(benchmark.dataset))
    head = load_state_dict(paths.heads(model_name, benchmark.dataset))["weight"]
    cache = load_tensors(paths.test_cache(model_name, benchmark.dataset))
    chunks = class_splits(dataset.num_classes, benchmark.splits, seed=benchmark.seed)
    train = dataset.split("train")

    with atomic_dir(paths.sequential(model_name, name, seed=seed)) as staging:
        previous, history = None, []
        for i, classes in enumerate(chunks):
            visual = finetune(model, head, train, recipe=recipe, seed=1000 * seed + i, class_subset=classes,
                              init_visual=previous, checkpoint_dir=paths.resume(model_name, paths.replicate(seed), "sequential", name, str(i)),
                              progress=True)
            previous = visual
            if not is_main_process():
                continue
            save_weights(staging / f"split_{i}.safetensors", visual,
                         metadata={"benchmark": name, "split": str(i), "classes": json.dumps(classes)})
            history.append(SequentialSplit(
                split=i, classes=classes,
                accuracy_split=round(evaluate(model, visual, head, cache, batch_size=params.eval.batch_size,
                                              class_subset=classes), 4),
                accuracy_all=round(evaluate(model, visual, head, cache, batch_size=params.eval.batch_size), 4),
            ))
        if not is_main_process():
            raise SystemExit(0)
    shutil.rmtree(paths.resume(model_name, paths.replicate(seed), "sequential", name), ignore_errors=True)
    SequentialMetrics(benchmark=name, dataset=benchmark.dataset, splits=history,
                      final_accuracy=history[-1].accuracy_all).write(
        paths.seed_metrics(model_name, seed, "sequential", f"{name}.json"))
    print(f"[finetune_sequential@{model_name}-{name}-{seed}] after the last split: {history[-1].accuracy_all:.2f}% on all classes")


def main() -> None:
    params, (model_name, name, seed) = stage_params({"model": lambda p: p.models, "benchmark": lambda p: p.suite.cl,
                                                     "seed": lambda p: [str(s) for s in p.seeds]})
    with stage(f"finetune_sequential@{model_name}-{name}-{seed}", threads=params.threads):
        finetune_benchmark(params, model_name, name, int(seed))


if __name__ == "__main__":
    main()
