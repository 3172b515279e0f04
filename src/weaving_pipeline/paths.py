"""The pipeline's file layout: every path a stage reads or writes, in one place.

`dvc.yaml` spells the same paths with `${item...}` placeholders; `tests/test_pipeline_layout.py`
checks that the two agree. All paths are relative to the project root (where `dvc repro` runs).
"""

from __future__ import annotations

from pathlib import Path


def prepared(dataset: str) -> Path:
    """`data/prepared/<dataset>/`: a prepared dataset (meta.json and its splits)."""
    return Path("data/prepared") / dataset


def test_cache(model: str, dataset: str | None = None) -> Path:
    """`data/cache/<model>/[<dataset>_test.pt]`: test images preprocessed for `model`."""
    folder = Path("data/cache") / model
    return folder if dataset is None else folder / f"{dataset}_test.pt"


def model_dir(model: str) -> Path:
    """`models/<model>/`."""
    return Path("models") / model


def pretrained(model: str) -> Path:
    """`models/<model>/pretrained/`: open_clip local-dir checkpoint plus `visual.safetensors`."""
    return model_dir(model) / "pretrained"


def pretrained_visual(model: str) -> Path:
    """The pretrained image encoder's state dict (theta_pre of every task vector)."""
    return pretrained(model) / "visual.safetensors"


def heads(model: str, dataset: str | None = None) -> Path:
    """`models/<model>/heads/[<dataset>.safetensors]`: zero-shot classification heads."""
    folder = model_dir(model) / "heads"
    return folder if dataset is None else folder / f"{dataset}.safetensors"


def replicate(seed: int) -> str:
    """`seed<seed>`: the folder of one replicate (params `seeds`) under a model's models and metrics."""
    return f"seed{seed}"


def seed_dir(model: str, seed: int) -> Path:
    """`models/<model>/seed<seed>/`: what one replicate's fine-tuning stages write."""
    return model_dir(model) / replicate(seed)


def finetuned(model: str, task: str | None = None, *, seed: int) -> Path:
    """`models/<model>/seed<seed>/finetuned/[<task>.safetensors]`: image encoders fine-tuned per task."""
    folder = seed_dir(model, seed) / "finetuned"
    return folder if task is None else folder / f"{task}.safetensors"


def sequential(model: str, benchmark: str | None = None, split: int | None = None, *, seed: int) -> Path:
    """`models/<model>/seed<seed>/sequential/[<benchmark>/[split_<i>.safetensors]]`: sequential fine-tunes."""
    folder = seed_dir(model, seed) / "sequential"
    if benchmark is None:
        return folder
    folder = folder / benchmark
    return folder if split is None else folder / f"split_{split}.safetensors"


def woven(model: str, method: str, setup: str | None = None, *, seed: int) -> Path:
    """`models/woven/<model>/seed<seed>/<method>/[<setup>/]`: the woven models a weave stage keeps (its
    out is the method's folder, one subfolder per setup)."""
    folder = Path("models/woven") / model / replicate(seed) / method
    return folder if setup is None else folder / setup


def metrics(model: str, *parts: str) -> Path:
    """`metrics/<model>/<parts...>`: a stage's metrics file (or folder)."""
    return Path("metrics") / model / Path(*parts) if parts else Path("metrics") / model


def seed_metrics(model: str, seed: int, *parts: str) -> Path:
    """`metrics/<model>/seed<seed>/<parts...>`: a metrics file (or folder) of one replicate's stages
    (finetune, finetune_sequential, taskvectors, weave)."""
    return metrics(model, replicate(seed), *parts)


def weave_metrics(model: str, method: str, setup: str | None = None, *, seed: int) -> Path:
    """`metrics/<model>/seed<seed>/weave/<method>/[<setup>.json]`: a weave stage's folder (its out), or one
    setup's file."""
    folder = seed_metrics(model, seed, "weave", method)
    return folder if setup is None else folder / f"{setup}.json"


def resume(model: str, *parts: str) -> Path:
    """`.resume/<model>/<parts...>`: a fine-tune's checkpoints while it runs (ignored by git and DVC)."""
    return Path(".resume") / model / Path(*parts)


# --- Task Singular Vectors (stages compress and mass; docs/tsv.md, "Pipeline") ---

def compressed(model: str, task: str | None = None) -> Path:
    """`models/<model>/compressed/[<task>.safetensors]`: the multi-task suite's task vectors, TSV-C at 1/T."""
    folder = model_dir(model) / "compressed"
    return folder if task is None else folder / f"{task}.safetensors"


def tsv_metrics(model: str, name: str) -> Path:
    """`metrics/<model>/tsv/<name>.json` (`compress`, `mass`)."""
    return metrics(model, "tsv", f"{name}.json")


# --- C2M3 alignment (stages align_train and align; docs/align.md, "Pipeline") ---

def align_run(dataset: str, arch: str) -> str:
    """`<dataset>-<arch>`: one run of the alignment branch (the stages' matrix item)."""
    return f"{dataset}-{arch}"


def align_models(dataset: str, arch: str, index: int | None = None) -> Path:
    """`models/align/<dataset>-<arch>/[model_<i>.safetensors]`: the N trained models (and `train.json`)."""
    folder = Path("models/align") / align_run(dataset, arch)
    return folder if index is None else folder / f"model_{index}.safetensors"


def align_metrics(dataset: str, arch: str) -> Path:
    """`metrics/align/<dataset>-<arch>.json`: the merges of one run."""
    return Path("metrics/align") / f"{align_run(dataset, arch)}.json"
# --- MERGE3: evolutionary merging with IRT-estimated fitness (stage merge3; docs/search.md, "Pipeline") ---

def search_metrics(model: str, name: str) -> Path:
    """`metrics/<model>/search/<name>.json` (`merge3`)."""
    return metrics(model, "search", f"{name}.json")
