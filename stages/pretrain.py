"""Stage `pretrain@<model>`: the shared starting point theta_pre.

`pretrained: pipeline` trains both CLIP towers contrastively on captions made from class
names and templates, over every dataset's `pretrain` split (disjoint from fine-tuning and
test data); `pretrained: openai` takes open_clip's OpenAI weights instead (paper profile).
"""

from _common import paths, stage, stage_params

from weaving_pipeline.params import Params


def pretrain_model(params: Params, model_name: str) -> None:
    from weaving.clip import create_model, pretrain, save_pretrained
    from weaving.datasets import load_prepared
    from weaving.metrics import PretrainMetrics

    spec = params.model_specs[model_name]
    if spec.pretrained == "openai":
        model = create_model(spec.arch, pretrained="openai")
        log = PretrainMetrics(source="openai", arch=spec.arch)
    else:
        recipe = params.pretrain
        model = create_model(spec.arch, pretrained=None, seed=params.seed)
        datasets = [load_prepared(paths.prepared(name)) for name in params.datasets]
        log = PretrainMetrics(source="pipeline", arch=spec.arch,
                              **pretrain(model, datasets=datasets, recipe=recipe, seed=params.seed))
    save_pretrained(model, spec.arch, paths.pretrained(model_name))
    log.write(paths.metrics(model_name, "pretrain.json"))


def main() -> None:
    params, (model_name,) = stage_params({"model": lambda p: p.models})
    with stage(f"pretrain@{model_name}", threads=params.threads):
        pretrain_model(params, model_name)


if __name__ == "__main__":
    main()
