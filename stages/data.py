"""Stage `data@<dataset>`: resolve one dataset from its first available source, write it under data/prepared/."""

from _common import paths, stage, stage_params

from weaving_pipeline.params import Params


def prepare_dataset(params: Params, name: str) -> None:
    from weaving.datasets import prepare

    meta = prepare(
        name,
        out_dir=paths.prepared(name),
        raw_dir=params.data.raw_dir,
        seed=params.data.seed,
        limits=params.data.limits.model_dump(),
        allow_download=params.data.allow_download,
        progress=True,
        profile="paper" if params.profile == "paper" else "embedded",
    )
    sizes = ", ".join(f"{split} {n}" for split, n in meta["splits"].items())
    print(f"[data@{name}] {meta['num_classes']} classes; {sizes}")


def main() -> None:
    params, (name,) = stage_params({"dataset": lambda p: p.datasets})
    with stage(f"data@{name}", threads=params.threads):
        prepare_dataset(params, name)


if __name__ == "__main__":
    main()
