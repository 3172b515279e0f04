"""``weaving align`` end to end through ``weaving.cli.main``: outputs, spec files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from weaving.align.models import build_model
from weaving.cli import main

torch.set_num_threads(1)


def write_mlps(folder: Path, count: int = 3) -> list[str]:
    paths = []
    for seed in range(count):
        model = build_model("mlp", in_channels=1, image_size=5, num_classes=3, width=[6, 4], seed=seed)
        path = folder / f"model_{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        paths.append(str(path))
    return paths


def run_mlp(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model = build_model("mlp", in_channels=1, image_size=5, num_classes=3, width=[6, 4])
    model.load_state_dict(state)
    with torch.no_grad():
        return model(x)


def test_align_and_merge_builtin_mlp(tmp_path, capsys):
    paths = write_mlps(tmp_path)
    out = tmp_path / "aligned"
    assert main(["align", "--spec", "mlp", "--models", *paths, "--out", str(out), "--merge", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "merged.safetensors", "model_0.safetensors", "model_1.safetensors", "model_2.safetensors",
        "permutations.json"]
    x = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    aligned = [load_file(str(out / Path(p).name)) for p in paths]
    for path, state in zip(paths, aligned):  # each output is its input, re-indexed: same function
        torch.testing.assert_close(run_mlp(state, x), run_mlp(load_file(path), x), rtol=1e-5, atol=1e-6)
    merged = load_file(str(out / "merged.safetensors"))
    for key in merged:
        torch.testing.assert_close(merged[key], torch.stack([s[key] for s in aligned]).mean(0))
    record = json.loads((out / "permutations.json").read_text())
    assert record["method"] == "c2m3" and len(record["info"]["objective_trace"]) >= 2
    original = load_file(paths[1])
    p0 = torch.tensor(record["permutations"]["model_1"]["P_0"])
    torch.testing.assert_close(aligned[1]["layer0.weight"], original["layer0.weight"][p0])
    assert not list(out.glob(".align-*"))


def test_align_with_a_spec_file_for_another_architecture(tmp_path):
    spec = {"format": "weaving.align.spec", "version": 1,
            "axes": {"enc.weight": ["hidden", None], "enc.bias": ["hidden"],
                     "dec.weight": [None, "hidden"], "dec.bias": [None], "scale": []}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    paths = []
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        state = {"enc.weight": torch.randn(5, 3, generator=g), "enc.bias": torch.randn(5, generator=g),
                 "dec.weight": torch.randn(2, 5, generator=g), "dec.bias": torch.randn(2, generator=g),
                 "scale": torch.tensor(2.0)}
        paths.append(str(tmp_path / f"net{seed}.pt"))
        torch.save(state, paths[-1])
    out = tmp_path / "out"
    code = main(["align", "--spec", str(tmp_path / "spec.json"), "--models", *paths, "--out", str(out),
                 "--method", "mergemany", "--merge", "--quiet"])
    assert code == 0
    x = torch.randn(7, 3)

    def forward(s):
        return s["scale"] * (torch.relu(x @ s["enc.weight"].T + s["enc.bias"]) @ s["dec.weight"].T + s["dec.bias"])

    for path in paths:
        torch.testing.assert_close(forward(load_file(str(out / (Path(path).stem + ".safetensors")))),
                                   forward(torch.load(path)), rtol=1e-5, atol=1e-6)


def bad_copy(tmp_path: Path, source: str, name: str, change) -> str:
    state = load_file(source)
    change(state)
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


@pytest.mark.parametrize("case", ["missing", "shape", "nan", "extra"])
def test_bad_models_exit_1_naming_file_and_key(tmp_path, capsys, case):
    paths = write_mlps(tmp_path, 2)
    changes = {
        "missing": lambda s: s.pop("layer1.weight"),
        "shape": lambda s: s.update({"layer1.weight": torch.zeros(4, 7)}),
        "nan": lambda s: s["layer1.weight"].view(-1).__setitem__(0, float("inf")),
        "extra": lambda s: s.update({"layer7.weight": torch.zeros(2)}),
    }
    broken = bad_copy(tmp_path, paths[1], "broken.safetensors", changes[case])
    out = tmp_path / "out"
    assert main(["align", "--spec", "mlp", "--models", paths[0], broken, "--out", str(out), "--quiet"]) == 1
    message = capsys.readouterr().err
    assert "broken.safetensors" in message
    assert ("layer7.weight" if case == "extra" else "layer1.weight") in message
    assert not out.exists() or not any(out.iterdir())


def test_bad_requests_exit_2(tmp_path, capsys):
    paths = write_mlps(tmp_path, 2)
    out = str(tmp_path / "out")
    assert main(["align", "--spec", "mlp", "--models", paths[0], "--out", out]) == 2
    assert "at least 2 models" in capsys.readouterr().err
    assert main(["align", "--spec", "convnext", "--models", *paths, "--out", out]) == 2
    assert "neither a built-in layout" in capsys.readouterr().err
    assert main(["align", "--spec", "vgg", "--models", *paths, "--out", out]) != 0  # built in, but these are MLPs
    assert "not the built-in 'vgg' layout" in capsys.readouterr().err
    assert main(["align", "--spec", "mlp", "--models", *paths, "--out", out, "--method", "ties"]) == 2
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "model_0.safetensors").write_bytes(Path(paths[0]).read_bytes())
    assert main(["align", "--spec", "mlp", "--models", paths[0], str(twin / "model_0.safetensors"), "--out", out]) == 2
    assert "different file names" in capsys.readouterr().err
    assert main(["align", "--spec", "mlp", "--models", *paths, "--out", str(tmp_path)]) == 2
    assert "overwrite the input" in capsys.readouterr().err


def test_builtin_resnet_spec_needs_the_resnet_layout(tmp_path, capsys):
    paths = write_mlps(tmp_path, 2)
    assert main(["align", "--spec", "resnet", "--models", *paths, "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "not the built-in 'resnet' layout" in capsys.readouterr().err
    resnets = []
    for seed in range(2):
        model = build_model("resnet", in_channels=1, image_size=8, num_classes=3, width=[3, 4], seed=seed)
        assert isinstance(model.stem.norm, nn.GroupNorm)
        resnets.append(str(tmp_path / f"r{seed}.safetensors"))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, resnets[-1])
    assert main(["align", "--spec", "resnet", "--models", *resnets, "--out", str(tmp_path / "o"), "--quiet"]) == 0
