"""``weaving compress``, and compressed files as ``--finetuned`` of ``weaving merge`` / ``weaving weave``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weaving import merge
from weaving.cli import main

torch.set_num_threads(1)

SHAPES = {"enc.weight": (12, 10), "enc.bias": (12,), "head.weight": (4, 12), "logit_scale": (), "conv": (2, 3, 2, 2)}
TASKS = ("alpha", "beta", "gamma")


@pytest.fixture
def checkpoints(tmp_path: Path) -> tuple[Path, list[Path]]:
    g = torch.Generator().manual_seed(0)
    pretrained = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    pretrained["position_ids"] = torch.arange(7)
    save_file(pretrained, tmp_path / "pre.safetensors")
    paths = []
    for task in TASKS:
        tuned = {k: (v + 0.1 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v.clone()
                 for k, v in pretrained.items()}
        save_file(tuned, tmp_path / f"{task}.safetensors")
        paths.append(tmp_path / f"{task}.safetensors")
    return tmp_path / "pre.safetensors", paths


def numpy_truncation(matrix: np.ndarray, k: int) -> np.ndarray:
    u, s, vh = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k]


def compress(pre: Path, finetuned: list[Path], out: Path, *extra: str) -> int:
    return main(["compress", "--pretrained", str(pre), "--finetuned", *map(str, finetuned), "--out", str(out),
                 "--quiet", *extra])


def test_compress_writes_one_file_per_task_with_provenance_and_a_summary(checkpoints, tmp_path, capsys):
    pre, finetuned = checkpoints
    assert compress(pre, finetuned, tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{t}.safetensors" for t in sorted(TASKS)]
    # 1/3 of rank 10 -> k = 3 for enc.weight (3 * 23 = 69), rank 4 -> k = 1 for head.weight (1 * 17 = 17);
    # dense: 12 + 1 + 24 -> 123 numbers per task of 48 + 120 + 12 + 1 + 24 = 205
    assert "123 numbers" in printed and "total: 369 numbers" in printed and "1.800 x one model (205 numbers)" in printed
    pre_sd = load_file(pre)
    for task, source in zip(TASKS, finetuned):
        path = tmp_path / "out" / f"{task}.safetensors"
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata()
        assert json.loads(metadata["pretrained"])["sha256"] == hashlib.sha256(pre.read_bytes()).hexdigest()
        assert json.loads(metadata["source"])["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert metadata["task"] == task and json.loads(metadata["ranks"]) == {"enc.weight": 3, "head.weight": 1}
        tuned = load_file(source)
        factors = load_file(path)
        rebuilt = (factors["enc.weight::U"].double() * factors["enc.weight::S"].double()) @ factors["enc.weight::V"].double()
        expected = numpy_truncation((tuned["enc.weight"] - pre_sd["enc.weight"]).numpy(), 3)
        np.testing.assert_allclose(rebuilt.numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(factors["conv"].numpy(), (tuned["conv"] - pre_sd["conv"]).numpy(), atol=1e-6)


def test_merge_and_weave_accept_compressed_files(checkpoints, tmp_path):
    pre, finetuned = checkpoints
    assert compress(pre, finetuned, tmp_path / "c") == 0
    compressed = [tmp_path / "c" / f"{t}.safetensors" for t in TASKS]
    pre_sd = load_file(pre)
    reconstructed = []
    for path in compressed:
        f = load_file(path)
        tau = {k: v for k, v in f.items() if "::" not in k}
        for key in ("enc.weight", "head.weight"):
            tau[key] = (f[key + "::U"] * f[key + "::S"]) @ f[key + "::V"]
        reconstructed.append(tau)

    out = tmp_path / "ta.safetensors"
    assert main(["merge", "--pretrained", str(pre), "--finetuned", *map(str, compressed), "--method",
                 "task_arithmetic", "--out", str(out), "--quiet"]) == 0
    merged = load_file(out)
    assert torch.equal(merged["position_ids"], pre_sd["position_ids"])
    for key in SHAPES:
        torch.testing.assert_close(merged[key], pre_sd[key] + sum(r[key] for r in reconstructed), atol=1e-5, rtol=0)

    out = tmp_path / "tsv.safetensors"
    assert main(["merge", "--pretrained", str(pre), "--finetuned", *map(str, compressed), "--method", "tsv",
                 "--out", str(out), "--quiet"]) == 0
    taus = [{k: load_file(p)[k] - pre_sd[k] for k in SHAPES} for p in finetuned]
    expected = merge("tsv", taus)
    for key in SHAPES:  # at f = 1/T, TSV-Merge of the compressed vectors is TSV-Merge of the originals
        torch.testing.assert_close(load_file(out)[key], pre_sd[key] + expected[key], atol=1e-5, rtol=0)

    out = tmp_path / "woven.safetensors"
    mixed = [str(compressed[0]), str(finetuned[1]), str(compressed[2])]
    assert main(["weave", "--pretrained", str(pre), "--finetuned", *mixed, "--method", "task_arithmetic",
                 "--lambdas", "0.5,1.0", "--out", str(out), "--quiet"]) == 0
    with safe_open(out, framework="pt") as handle:
        records = json.loads(handle.metadata()["finetuned"])
    assert [r["path"] for r in records] == mixed


def test_full_rank_compression_reconstructs_the_checkpoints(checkpoints, tmp_path):
    pre, finetuned = checkpoints
    assert compress(pre, finetuned[:1], tmp_path / "full", "--rank-fraction", "1.0") == 0
    out = tmp_path / "same.safetensors"
    assert main(["merge", "--pretrained", str(pre), "--finetuned", str(tmp_path / "full" / "alpha.safetensors"),
                 "--method", "task_arithmetic", "--out", str(out), "--quiet"]) == 0
    tuned = load_file(finetuned[0])
    for key, value in load_file(out).items():
        torch.testing.assert_close(value, tuned[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fraction", ["0", "-0.5", "1.01", "nan"])
def test_bad_rank_fraction_exits_2_and_writes_nothing(checkpoints, tmp_path, capsys, fraction):
    pre, finetuned = checkpoints
    assert compress(pre, finetuned, tmp_path / "out", "--rank-fraction", fraction) == 2
    assert "--rank-fraction must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_colliding_task_names_exit_2(checkpoints, tmp_path, capsys):
    pre, finetuned = checkpoints
    assert compress(pre, [finetuned[0], finetuned[0]], tmp_path / "out") == 2
    assert "both give the task name 'alpha'; give distinct --names" in capsys.readouterr().err
    assert compress(pre, finetuned[:2], tmp_path / "out", "--names", "a") == 2


def test_non_finite_input_exits_1_and_leaves_no_file(checkpoints, tmp_path, capsys):
    pre, finetuned = checkpoints
    broken = load_file(finetuned[2])
    broken["head.weight"][1, 1] = float("inf")
    save_file(broken, finetuned[2])
    assert compress(pre, finetuned, tmp_path / "out") == 1
    assert "gamma.safetensors: key 'head.weight' contains NaN or inf" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compressed_files_of_another_pretrained_model_exit_1(checkpoints, tmp_path, capsys):
    pre, finetuned = checkpoints
    assert compress(pre, finetuned, tmp_path / "c") == 0
    other = load_file(pre)
    other["enc.bias"] += 1.0
    save_file(other, tmp_path / "other.safetensors")
    out = tmp_path / "merged.safetensors"
    code = main(["merge", "--pretrained", str(tmp_path / "other.safetensors"), "--finetuned",
                 str(tmp_path / "c" / "alpha.safetensors"), "--method", "tsv", "--out", str(out), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "alpha.safetensors: compressed against a different pretrained checkpoint" in err and "other.safetensors" in err
    assert not out.exists()


def test_mismatched_key_sets_exit_1(checkpoints, tmp_path, capsys):
    pre, finetuned = checkpoints
    fewer = load_file(finetuned[1])
    del fewer["enc.bias"]
    save_file(fewer, finetuned[1])
    assert compress(pre, finetuned, tmp_path / "out") == 1
    assert "beta.safetensors: key set differs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
