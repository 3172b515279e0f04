"""The paper profile, as far as it can be checked offline on a CPU: its DVC graph and its fine-tune loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from clip_fixtures import ArraySplit  # noqa: E402
from project_copy import copy_project  # noqa: E402

from weaving.clip import FinetuneRecipe, TrainingInterrupted, create_model, finetune  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAPER = yaml.safe_load((ROOT / "profiles" / "paper.yaml").read_text())


def expected_stages(params: dict) -> set[str]:
    """Every stage the paper needs, written out independently of dvc.yaml's templates."""
    models, methods = params["models"], params["methods"]
    stages = {f"data@{d}" for d in params["datasets"]} | {"params", "report"}
    for m in models:
        stages |= {f"pretrain@{m}", f"heads@{m}"}
        for seed in params["seeds"]:  # the replicates
            stages |= {f"taskvectors@{m}-{seed}"}
            stages |= {f"finetune@{m}-{t}-{seed}" for t in params["suite"]["mtl"]}
            stages |= {f"finetune_sequential@{m}-{b}-{seed}" for b in params["suite"]["cl"]}
            stages |= {f"weave@{m}-{method}-{seed}" for method in methods}  # each runs the three setups
        stages |= {f"compress@{m}", f"mass@{m}"}  # Task Singular Vectors (docs/tsv.md)
        stages |= {f"merge3@{m}"}  # MERGE3 (docs/search.md)
    c2m3 = params["c2m3"]  # C2M3 (docs/align.md): per dataset and architecture, not per CLIP model
    stages |= {f"{s}@{d}-{a}" for s in ("align_train", "align") for d in c2m3["datasets"] for a in c2m3["archs"]}
    return stages


def test_paper_profile_has_the_papers_models_suites_and_recipe() -> None:
    assert PAPER["models"] == ["ViT-B-32", "ViT-B-16", "ViT-L-14"]
    assert all(spec["pretrained"] == "openai" for spec in PAPER["model_specs"].values())
    assert sorted(PAPER["suite"]["mtl"]) == sorted(["sun397", "cars", "resisc45", "eurosat", "svhn", "gtsrb", "mnist", "dtd"])
    splits = {name: (b["dataset"], b["splits"]) for name, b in PAPER["cl_benchmarks"].items()}
    assert sorted(splits.values()) == sorted(
        [("cifar100", n) for n in (5, 10, 20, 50)] + [("imagenet_r", n) for n in (5, 10, 20, 50)]
        + [("cub200", n) for n in (5, 10, 20)] + [("cars", n) for n in (5, 10, 20)])
    ft = PAPER["finetune"]
    assert (ft["lr"], ft["weight_decay"], ft["batch_size"], ft["warmup_steps"]) == (1e-5, 0.1, 128, 500)
    epochs = {task: o["epochs"] for task, o in ft["per_task"].items()}
    assert epochs == {"cars": 35, "dtd": 76, "eurosat": 12, "gtsrb": 11, "mnist": 5, "resisc45": 15,
                      "sun397": 14, "svhn": 4}
    seq = PAPER["sequential"]
    assert seq["epochs"] == 10 and {t: o["epochs"] for t, o in seq["per_task"].items()} == {"cub200": 30, "cars": 30}


def test_dvc_lists_every_paper_stage_for_three_models_and_three_setups(tmp_path: Path) -> None:
    copy_project(tmp_path, "paper")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    result = subprocess.run(["dvc", "status", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    listed = set(json.loads(result.stdout))
    expected = expected_stages(PAPER)
    assert listed == expected, (sorted(expected - listed), sorted(listed - expected))
    assert len([s for s in listed if s.startswith("weave@")]) == 3 * len(PAPER["methods"])


@pytest.mark.slow
def test_vit_b_32_finetune_runs_on_cpu_and_resumes_after_a_kill(tmp_path: Path) -> None:
    """The paper's smallest architecture at random weights: a few real steps, a kill, a resume."""
    model = create_model("ViT-B-32", pretrained=None, seed=0)
    rng = np.random.default_rng(0)
    split = ArraySplit(rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8), np.array([0, 1, 2, 0, 1, 2]))

    head = torch.nn.functional.normalize(torch.randn(3, model.text_projection.shape[1], generator=torch.Generator().manual_seed(0)), dim=-1)
    recipe = FinetuneRecipe(steps=3, batch_size=2, lr=1e-5, weight_decay=0.1, warmup_steps=1, checkpoint_every=1)
    uninterrupted = finetune(model, head, split, recipe, seed=0, progress=False)
    with pytest.raises(TrainingInterrupted):
        finetune(model, head, split, recipe, seed=0, checkpoint_dir=tmp_path, progress=False, max_steps_this_run=2)
    resumed = finetune(model, head, split, recipe, seed=0, checkpoint_dir=tmp_path, progress=False)
    pretrained = model.visual.state_dict()
    assert any(not torch.equal(resumed[k], pretrained[k]) for k in resumed)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_paper_profile_aligns_resnet20_at_4x_width_on_cifar100() -> None:
    """C2M3's paper settings the dataset registry has (docs/align.md, "Pipeline"): ResNet20 (3 stages of 3
    blocks) at 4x width and the reference's MLP, 5 models, subsets of 2, 3 and 5."""
    c2m3 = PAPER["c2m3"]
    assert "cifar100" in c2m3["datasets"] and set(c2m3["datasets"]) <= set(PAPER["datasets"])
    assert c2m3["resnet"]["width"] == [64, 128, 256] and c2m3["resnet"]["blocks_per_stage"] == 3
    assert c2m3["mlp"]["width"] == [512, 512, 512, 256]
    assert c2m3["num_models"] == 5 and c2m3["subset_sizes"] == [2, 3, 5]


# --- C2M3's paper grid (docs/align.md, "Paper profile"): the reference's architectures on its four datasets ----------

def test_paper_profile_runs_c2m3s_grid_with_the_references_architectures() -> None:
    """crisostomi/cycle-consistent-model-merging: MLP 512-512-512-256 (conf/model/mlp.yaml, 4 hidden layers),
    ResNet(depth=22, widen_factor=4) = ResNet20 x4 (conf/model/resnet20.yaml; stages of (22 - 4) / 6 = 3 blocks at
    16w, 32w, 64w), VGG16 (src/ccmm/models/vgg.py cfg["VGG16"], classifier 512), LayerNorm ("ln");
    datasets MNIST, EMNIST (letters), CIFAR-10, CIFAR-100 (conf/dataset/)."""
    from weaving_pipeline.params import load_params

    c2m3 = PAPER["c2m3"]
    assert c2m3["archs"] == ["mlp", "resnet", "vgg"]
    assert sorted(c2m3["datasets"]) == ["cifar10", "cifar100", "emnist", "mnist"]
    assert set(c2m3["datasets"]) <= set(PAPER["datasets"])
    w, depth = 4, 22
    resnet = c2m3["resnet"]
    assert resnet["width"] == [16 * w, 32 * w, 64 * w] and resnet["blocks_per_stage"] == (depth - 4) // 6
    assert (resnet["stem_kernel"], resnet["stem_stride"], resnet["shortcut_kernel"]) == (3, 1, 3)
    assert resnet["norm"] == "channel"  # LayerNorm2d of src/ccmm/models/utils.py: nn.LayerNorm over the channels
    vgg16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    stages, current = [], []
    for entry in vgg16:
        if entry == "M":
            stages.append(current)
            current = []
        else:
            current.append(entry)
    vgg = c2m3["vgg"]
    assert vgg["width"] == [s[0] for s in stages] and vgg["convs_per_stage"] == [len(s) for s in stages]
    assert all(len(set(s)) == 1 for s in stages) and vgg["classifier_width"] == 512 and vgg["norm"] == "channel"
    epochs = {arch: (c2m3[arch]["train"]["epochs"], c2m3[arch]["train"]["batch_size"]) for arch in c2m3["archs"]}
    assert epochs == {"mlp": (100, 512), "resnet": (250, 100), "vgg": (100, 100)}  # the reference's trainer configs
    params = load_params(ROOT / "profiles" / "paper.yaml")  # validates the whole profile, c2m3 block included
    assert params.c2m3.vgg is not None and params.c2m3.vgg.convs_per_stage == [2, 2, 3, 3, 3]


def test_paper_grid_models_build_for_every_dataset_shape() -> None:
    """Every cell of the grid can be built: 28x28 grey (MNIST, EMNIST) and 32x32 colour (CIFAR) images, the
    class counts of the registry's metadata; the VGG's five pools reach 1x1 on both sizes."""
    from weaving.align.models import build_model
    from weaving.datasets.metadata import load_metadata

    c2m3 = PAPER["c2m3"]
    shapes = {"mnist": (1, 28), "emnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32)}
    classes = {name: len(load_metadata(name, "paper").classnames) for name in c2m3["datasets"]}
    assert classes == {"mnist": 10, "emnist": 26, "cifar10": 10, "cifar100": 100}
    for dataset in c2m3["datasets"]:
        channels, size = shapes[dataset]
        for arch in c2m3["archs"]:
            layout = {k: v for k, v in c2m3[arch].items() if k != "train"}
            # at 1/16 of the width: the layout is the paper's, the test stays cheap
            layout["width"] = [max(1, v // 16) for v in layout["width"]]
            if arch == "vgg":
                layout["classifier_width"] = 32
            model = build_model(arch, in_channels=channels, image_size=size, num_classes=classes[dataset], seed=0,
                                **layout)
            with torch.no_grad():
                assert model(torch.zeros(2, channels, size, size)).shape == (2, classes[dataset]), (dataset, arch)
