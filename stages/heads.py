"""Stage `heads@<model>`: frozen zero-shot heads from the text tower, cached test tensors, zero-shot accuracy."""

from _common import compute_device, paths, save_weights, stage, stage_params

from weaving_pipeline.params import Params


def make_heads(params: Params, model_name: str) -> None:
    import json

    from tqdm.auto import tqdm

    from weaving.atomic import save_torch
    from weaving.clip import cache_eval_tensors, evaluate, load_pretrained, zeroshot_head
    from weaving.datasets import load_prepared
    from weaving.metrics import ZeroshotMetrics

    model = load_pretrained(paths.pretrained(model_name), device=compute_device())
    pretrained_visual = {k: v.clone() for k, v in model.visual.state_dict().items()}
    zeroshot = {}
    for name in tqdm(params.datasets, desc="zero-shot heads", unit="dataset"):
        dataset = load_prepared(paths.prepared(name))
        head = zeroshot_head(model, dataset.classnames, dataset.templates)
        save_weights(paths.heads(model_name, name), {"weight": head.contiguous()},
                     metadata={"dataset": name, "classnames": json.dumps(dataset.classnames)})
        cache = cache_eval_tensors(model, dataset.split("test"))
        save_torch(paths.test_cache(model_name, name), cache)
        zeroshot[name] = round(evaluate(model, pretrained_visual, head, cache, batch_size=params.eval.batch_size), 4)
    ZeroshotMetrics(zeroshot).write(paths.metrics(model_name, "zeroshot.json"))
    print(f"[heads@{model_name}] zero-shot accuracy: " + ", ".join(f"{k} {v:.1f}" for k, v in zeroshot.items()))


def main() -> None:
    params, (model_name,) = stage_params({"model": lambda p: p.models})
    with stage(f"heads@{model_name}", threads=params.threads):
        make_heads(params, model_name)


if __name__ == "__main__":
    main()
