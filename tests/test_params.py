"""params.yaml validation: every profile validates; bad keys and values stop with a clear message."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
from params_fixtures import write

from weaving_pipeline.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parent.parent
PROFILES = [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_profile_validates(path: Path) -> None:
    params = load_params(path)
    assert params.models and params.methods
    for method in params.methods:
        for setup in ("mtl", "cl", "dg"):
            assert params.search_space(method, setup)


def test_default_search_spaces_are_the_papers(default: dict) -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.search_space("ties", "mtl") == pytest.approx([round(0.1 * i, 10) for i in range(1, 16)])
    assert params.search_space("pcb", "mtl")[-1] == pytest.approx(2.5)
    assert params.search_space("tsv", "mtl")[0] == pytest.approx(0.5)
    assert len(params.search_space("magmax", "cl")) == 10


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda p: p.update(sed=1), ["sed", "unknown key", "seed"]),
        (lambda p: p["finetune"].update(learning_rate=0.1), ["finetune.learning_rate", "unknown key", "lr"]),
        (lambda p: p["method_params"]["ties"]["hparams"].update(densty=0.3), ["method_params.ties", "densty", "density"]),
        (lambda p: p["method_params"]["ties"]["hparams"].update(density=1.5), ["method_params.ties", "density"]),
        (lambda p: p["method_params"]["dare"]["hparams"].update(p=1.0), ["method_params.dare", "p"]),
        (lambda p: p["methods"].append("tiez"), ["methods", "tiez", "ties"]),
        (lambda p: p["weave"]["poolings"].append("max"), ["weave.poolings", "max", "avg"]),
        (lambda p: p["weave"].update(pool_over=["everything"]), ["weave.pool_over", "all", "augmented"]),
        (lambda p: p["method_params"]["ties"]["search_space"].update(mtl=[]), ["method_params.ties.search_space.mtl"]),
        (lambda p: p["method_params"]["ties"]["search_space"].update(mtl=[0.1, float("nan")]),
         ["method_params.ties.search_space.mtl"]),
        (lambda p: p["finetune"].update(lr=-1), ["finetune.lr", "greater than 0"]),
        (lambda p: p["finetune"].update(epochs=3), ["finetune", "exactly one of steps or epochs"]),
        (lambda p: p["finetune"].update(steps=20, warmup_steps=25), ["finetune", "warmup_steps 25 must be below steps 20"]),
        (lambda p: p["suite"]["mtl"].append("imagenet"), ["imagenet", "datasets"]),
        (lambda p: p["model_specs"]["tiny-clip"].update(pretrained="laion"), ["model_specs.tiny-clip.pretrained",
                                                                          "pipeline", "openai"]),
        (lambda p: p["data"]["limits"].pop("test"), ["data.limits.test", "required key is missing"]),
        (lambda p: p["datasets"].append("no_such_dataset"), ["no_such_dataset", "registry"]),
        (lambda p: p["weave"]["bootstrap"].update(resamples=50), ["weave.bootstrap.resamples", "100"]),
        (lambda p: p["weave"]["bootstrap"].update(level=1.0), ["weave.bootstrap.level", "less than 1"]),
        (lambda p: p.update(seeds=[0, 1, 1]), ["seeds", "listed more than once: [1]"]),
        (lambda p: p.update(seeds=[0, 1.5]), ["seeds.1", "integer"]),
        (lambda p: p.update(seeds=[0, "1"]), ["seeds.1", "integer"]),
        (lambda p: p.update(seeds=[0, True]), ["seeds.1", "integer"]),
        (lambda p: p.update(seeds=[]), ["seeds", "at least 1 item"]),
        (lambda p: p.update(seeds=[0, -1]), ["seeds", "non-negative"]),
        (lambda p: p.update(seeds=[1, 2]), ["seed 0 is not in seeds [1, 2]", "compress, mass, merge3"]),
        (lambda p: p.pop("seeds"), ["seeds", "required key is missing"]),
    ],
    ids=lambda x: None if callable(x) else x[0],
)
def test_bad_params_name_the_key_and_the_choices(tmp_path, default, mutate, expected) -> None:
    params = copy.deepcopy(default)
    mutate(params)
    with pytest.raises(ParamsError) as error:
        load_params(write(tmp_path, params))
    message = str(error.value)
    assert "params.yaml" in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_not_a_mapping_and_not_yaml(tmp_path) -> None:
    (tmp_path / "params.yaml").write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_a_stage_stops_before_writing_anything_on_bad_params(tmp_path, default) -> None:
    params = copy.deepcopy(default)
    params["data"]["limits"]["trian"] = 10
    write(tmp_path, params)
    run = subprocess.run([sys.executable, str(ROOT / "stages" / "data.py"), "mnist"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "data.limits.trian: unknown key" in run.stderr and "train" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_a_stage_rejects_an_argument_not_in_params(tmp_path, default) -> None:
    write(tmp_path, default)
    run = subprocess.run([sys.executable, str(ROOT / "stages" / "data.py"), "cifar10"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "cifar10" in run.stderr and "mnist" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
