"""Stage `align_train@<dataset>-<arch>`: N models of one architecture trained from different seeds (C2M3 branch).

Trains `c2m3.num_models` models of `arch` (`c2m3.mlp` or `c2m3.resnet`: layout and training recipe)
on the prepared `train` split of `dataset` (`weaving.align.experiment.train_models`: model `i`
initialised from seed `c2m3.seed + i`, shuffled by `c2m3.seed + 1000 + i`; inputs normalised by the
training images' mean and standard deviation) and writes them under
`models/align/<dataset>-<arch>/`: `model_<i>.safetensors` (metadata: dataset, arch, index, seed) and
`train.json` (the architecture's arguments, the normalisation, the recipe, per model its seed and
training losses, the training time), which the `align` stage reads back. No task vectors, no CLIP.
"""

from __future__ import annotations

from _common import paths, stage, stage_params

from weaving_pipeline.params import Params


def train_stage(params: Params, dataset: str, arch: str) -> dict:
    """Train and write the models (see the module docstring); returns `train.json`'s content."""
    import torch

    from weaving.align.experiment import train_models
    from weaving.align.models import TrainConfig
    from weaving.atomic import atomic_dir, write_json
    from weaving.datasets import load_prepared
    from weaving.io import save_state_dict

    c2m3 = params.c2m3
    options = getattr(c2m3, arch)
    layout = options.model_dump(exclude={"train"})
    config = TrainConfig(**options.train.model_dump())
    data = load_prepared(paths.prepared(dataset))
    train = data.split("train")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the paper profile's settings need a GPU
    print(f"[align_train] training {c2m3.num_models} {arch} models on {len(train)} {dataset} images ({device})")
    trained = train_models(arch, train.uint8_images(), train.labels, num_models=c2m3.num_models, seed=c2m3.seed,
                           num_classes=data.num_classes, config=config, progress=True, device=device, **layout)
    record = {
        "dataset": dataset, "arch": arch, "num_models": c2m3.num_models, "seed": c2m3.seed,
        "model_kwargs": trained.model_kwargs, "normalisation": {"mean": trained.mean, "std": trained.std},
        "train": config.to_dict(), "train_images": len(train),
        "models": [{"file": paths.align_models(dataset, arch, i).name, "seed": c2m3.seed + i,
                    "shuffle_seed": c2m3.seed + 1000 + i, "losses": losses}
                   for i, losses in enumerate(trained.train_losses)],
        "seconds": trained.seconds,
    }
    with atomic_dir(paths.align_models(dataset, arch)) as staging:
        for i, state in enumerate(trained.state_dicts):
            save_state_dict(staging / paths.align_models(dataset, arch, i).name, state,
                            metadata={"dataset": dataset, "arch": arch, "index": str(i), "seed": str(c2m3.seed + i)})
        write_json(staging / "train.json", record)
    return record


def main() -> None:
    params, (dataset, arch) = stage_params({"dataset": lambda p: p.c2m3.datasets, "arch": lambda p: p.c2m3.archs})
    name = f"align_train@{paths.align_run(dataset, arch)}"
    with stage(name, threads=params.threads):
        record = train_stage(params, dataset, arch)
        final = [m["losses"][-1] for m in record["models"]]
        print(f"[{name}] {record['num_models']} models trained in {record['seconds']:.1f} s; final training loss "
              f"{min(final):.3f}-{max(final):.3f}")


if __name__ == "__main__":
    main()
