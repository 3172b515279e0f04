"""Stage `finetune@<model>-<task>-<seed>`: fine-tune the image encoder on one task from one replicate's
seed (params `seeds`), text tower and head frozen."""

from _common import compute_device, is_main_process, load_tensors, paths, save_weights, stage, stage_params

from weaving_pipeline.params import Params


def finetune_task(params: Params, model_name: str, task: str, seed: int) -> None:
    import json
    import shutil
    import time

    from weaving.clip import FinetuneRecipe, evaluate, finetune, load_pretrained
    from weaving.datasets import load_prepared
    from weaving.io import load_state_dict
    from weaving.metrics import FinetuneMetrics

    recipe_fields = params.finetune.recipe_for(task)
    recipe = FinetuneRecipe(**{k: v for k, v in recipe_fields.items() if v is not None})
    model = load_pretrained(paths.pretrained(model_name), device=compute_device())
    head = load_state_dict(paths.heads(model_name, task))["weight"]
    train = load_prepared(paths.prepared(task)).split("train")
    cache = load_tensors(paths.test_cache(model_name, task))
    started = time.perf_counter()
    visual = finetune(model, head, train, recipe=recipe, seed=seed,
                      checkpoint_dir=paths.resume(model_name, paths.replicate(seed), "finetune", task), progress=True)
    seconds = time.perf_counter() - started
    if not is_main_process():
        raise SystemExit(0)
    save_weights(paths.finetuned(model_name, task, seed=seed), visual,
                 metadata={"task": task, "seed": str(seed), "recipe": json.dumps(recipe_fields)})
    shutil.rmtree(paths.resume(model_name, paths.replicate(seed), "finetune", task), ignore_errors=True)
    accuracy = evaluate(model, visual, head, cache, batch_size=params.eval.batch_size)
    FinetuneMetrics(task=task, accuracy=round(accuracy, 4), train_images=len(train),
                    seconds=round(seconds, 1)).write(paths.seed_metrics(model_name, seed, "finetune", f"{task}.json"))
    print(f"[finetune@{model_name}-{task}-{seed}] test accuracy {accuracy:.2f}% ({len(train)} training images)")


def main() -> None:
    params, (model_name, task, seed) = stage_params({"model": lambda p: p.models, "task": lambda p: p.suite.mtl,
                                                     "seed": lambda p: [str(s) for s in p.seeds]})
    with stage(f"finetune@{model_name}-{task}-{seed}", threads=params.threads):
        finetune_task(params, model_name, task, int(seed))


if __name__ == "__main__":
    main()
