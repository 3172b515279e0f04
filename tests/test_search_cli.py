"""`weaving search` end to end on the tiny CLIP (random weights) and small labelled tensors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from weaving.cli import main

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

TASKS = ("alpha", "beta")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from weaving.clip.models import create_model

    root = tmp_path_factory.mktemp("search_cli")
    g = torch.Generator().manual_seed(0)
    visual = create_model("weaving-tiny-clip", seed=0).visual.state_dict()
    pretrained = {k: v.clone().contiguous() for k, v in visual.items()}
    save_file(pretrained, root / "pretrained.safetensors")
    paths: dict[str, list[str]] = {"finetuned": [], "heads": [], "val": [], "test": []}
    for i, task in enumerate(TASKS):
        finetuned = {k: (v + 0.05 * torch.randn(v.shape, generator=g)).contiguous() if v.is_floating_point() else v
                     for k, v in pretrained.items()}
        save_file(finetuned, root / f"{task}.safetensors")
        head = torch.nn.functional.normalize(torch.randn(3 + i, 128, generator=g), dim=-1)
        save_file({"weight": head}, root / f"{task}_head.safetensors")
        for split, n in (("val", 20), ("test", 30)):
            data = {"images": torch.randn(n, 3, 32, 32, generator=g), "labels": torch.randint(0, 3 + i, (n,), generator=g)}
            torch.save(data, root / f"{task}_{split}.pt")
            paths[split].append(str(root / f"{task}_{split}.pt"))
        paths["finetuned"].append(str(root / f"{task}.safetensors"))
        paths["heads"].append(str(root / f"{task}_head.safetensors"))
    return root, pretrained, paths


def command(root, paths, *extra, out="result.json"):
    return [
        "search", "--arch", "weaving-tiny-clip", "--pretrained", str(root / "pretrained.safetensors"),
        "--tasks", *TASKS, "--finetuned", *paths["finetuned"], "--heads", *paths["heads"],
        "--val", *paths["val"], "--test", *paths["test"],
        "--anchors", "4", "--population-size", "7", "--search-population", "4", "--generations", "2",
        "--out", str(root / out), "--quiet", *extra,
    ]


def test_search_writes_results_and_the_merged_encoder(files):
    root, pretrained, paths = files
    argv = command(root, paths, "--fitness", "gmp_irt", "full", "--save-merged", str(root / "merged.safetensors"))
    assert main(argv) == 0
    result = json.loads((root / "result.json").read_text())
    assert result["tasks"] == list(TASKS)
    assert result["items"]["total"] == 40 and result["items"]["anchors_total"] == 8
    gmp, full = result["searches"]["task_arithmetic"]["gmp_irt"], result["searches"]["task_arithmetic"]["full"]
    assert gmp["items_per_candidate"] == 8 and full["items_per_candidate"] == 40
    assert set(gmp["final"]["test_accuracy"]) == set(TASKS)
    # the saved encoder is pretrained + sum_t c_t (finetuned_t - pretrained) of the gmp-IRT search's genome
    coefficients = gmp["best_genome"]["coefficients"]
    finetuned = {t: load_file(p) for t, p in zip(TASKS, paths["finetuned"])}
    merged = load_file(root / "merged.safetensors")
    for key, base in pretrained.items():
        want = base + sum(coefficients[t] * (finetuned[t][key] - base) for t in TASKS) if base.is_floating_point() else base
        torch.testing.assert_close(merged[key], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        (["--method", "slerp"], 2, "unknown search method 'slerp'"),
        (["--fitness", "irt"], 2, "unknown fitness kind 'irt'"),
        (["--coefficient-bounds", "1:0"], 2, "coefficient bounds are reversed"),
        (["--density-bounds", "0:1", "--method", "ties"], 2, r"density bounds must lie in \(0, 1\]"),
        (["--anchors", "21"], 2, r"anchors per task \(21\) exceed"),
        (["--population-size", "6"], 2, "population_size=6 is too small"),
        (["--algorithm", "cmaes"], 2, "unknown --algorithm 'cmaes'"),
    ],
)
def test_search_refuses_bad_requests(files, capsys, extra, status, message):
    import re

    root, _, paths = files
    assert main(command(root, paths, *extra, out="refused.json")) == status
    assert re.search(message, capsys.readouterr().err)
    assert not (root / "refused.json").exists()


def test_search_refuses_bad_inputs(files, capsys, tmp_path):
    root, _, paths = files
    same = dict(paths, test=[paths["val"][0], paths["test"][1]])
    assert main(command(root, same, out="refused.json")) == 1
    assert "--val and --test are the same file" in capsys.readouterr().err
    uneven = dict(paths, heads=paths["heads"][:1])
    assert main(command(root, uneven, out="refused.json")) == 2
    assert "--heads needs one path per task" in capsys.readouterr().err
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torch file")
    assert main(command(root, dict(paths, val=[str(broken), paths["val"][1]]), out="refused.json")) == 1
    assert "not a readable torch file" in capsys.readouterr().err
    overlapping = tmp_path / "tagged"
    overlapping.mkdir()
    val = torch.load(paths["val"][0], weights_only=True)
    test = torch.load(paths["test"][0], weights_only=True)
    torch.save({**val, "ids": torch.arange(20)}, overlapping / "val.pt")
    torch.save({**test, "ids": torch.arange(15, 45)}, overlapping / "test.pt")
    tagged = dict(paths, val=[str(overlapping / "val.pt"), paths["val"][1]],
                  test=[str(overlapping / "test.pt"), paths["test"][1]])
    assert main(command(root, tagged, out="refused.json")) == 1
    assert "validation split overlaps the test split on 5 examples" in capsys.readouterr().err
    assert not (root / "refused.json").exists()


def test_search_reads_a_saved_model_folder(files, tmp_path):
    from weaving.clip.models import create_model, save_pretrained

    root, _, paths = files
    save_pretrained(create_model("weaving-tiny-clip", seed=0), "weaving-tiny-clip", tmp_path / "pretrained")
    argv = command(root, paths, "--fitness", "anchors", out="from_dir.json")
    at = argv.index("--arch")
    argv[at:at + 4] = ["--model-dir", str(tmp_path / "pretrained")]
    assert main(argv) == 0
    result = json.loads((root / "from_dir.json").read_text())
    assert result["inputs"]["model_dir"] == str(tmp_path / "pretrained")
    assert result["searches"]["task_arithmetic"]["anchors"]["items_per_candidate"] == 8
