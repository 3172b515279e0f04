"""TSV-C (weaving.compress) against independent computations: numpy SVDs, hand counts, the existing `tsv`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from weaving import merge
from weaving.compress import (
    CompressedCheckpointSource,
    CompressedTaskVectorSource,
    compress_task_vector,
    compress_task_vectors,
    is_compressed_file,
    load_compressed,
    rank_for,
    save_compressed,
    storage_summary,
    tsv_merge_compressed,
)
from weaving.errors import InputError, ParamError
from weaving.io import load_state_dict, open_source, sha256_file

torch.set_num_threads(1)

SHAPES = {
    "blocks.0.attn.weight": (12, 7),
    "blocks.0.attn.bias": (12,),
    "blocks.0.mlp.weight": (5, 9),
    "conv.weight": (3, 2, 2, 2),
    "scale": (),
    "text_projection": (6, 4),
}


def random_taus(num_tasks: int, dtype=torch.float64, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=g, dtype=dtype) for k, s in SHAPES.items()} for _ in range(num_tasks)]


def numpy_polar_by_whitening(a: np.ndarray) -> np.ndarray:
    """`A (A^T A)^{-1/2}` with the inverse square root from an eigendecomposition (numpy `eigh`)."""
    eigenvalues, eigenvectors = np.linalg.eigh(a.T @ a)
    return a @ (eigenvectors * eigenvalues ** -0.5) @ eigenvectors.T


# ---------------------------------------------------------------------------- ranks and counts


@pytest.mark.parametrize(("shape", "fraction", "expected"), [
    ((512, 128), 1 / 6, 21), ((768, 3072), 1 / 8, 96), ((12, 7), 1 / 3, 2), ((5, 9), 1 / 3, 1),
    ((5, 9), 0.01, 1), ((4, 4), 1.0, 4), ((10, 3), 0.5, 1),
])
def test_rank_is_the_reference_formula(shape, fraction, expected):
    assert rank_for(shape, fraction) == expected == max(1, int(min(shape) * fraction))


def test_default_fraction_gives_r_over_t_for_every_size_and_task_count():
    for num_tasks in range(1, 21):
        for r in range(1, 1025):
            assert rank_for((r, r + 3), 1 / num_tasks) == max(1, r // num_tasks)


def test_stored_numbers_by_hand():
    tau = {k: v.float() for k, v in random_taus(1)[0].items()}
    compressed = compress_task_vector(tau, 0.5)
    # attn 12x7: k=3 -> 3*(12+7+1)=60; mlp 5x9: k=2 -> 2*(5+9+1)=30; dense: 12 + 24 + 1 + 24 (text_projection)
    assert compressed.ranks() == {"blocks.0.attn.weight": 3, "blocks.0.mlp.weight": 2}
    assert sorted(compressed.dense) == ["blocks.0.attn.bias", "conv.weight", "scale", "text_projection"]
    assert compressed.stored_numbers() == 60 + 30 + 12 + 24 + 1 + 24
    assert compressed.stored_bytes() == 4 * (60 + 30 + 12 + 24 + 1 + 24)
    assert compressed.dense_numbers() == 84 + 12 + 45 + 24 + 1 + 24
    summary = storage_summary([compressed, compressed])
    assert summary["stored_numbers"] == 2 * 151 and summary["one_model_numbers"] == 190
    assert summary["ratio_to_one_model"] == pytest.approx(302 / 190)
    assert summary["ratio_to_all_models"] == pytest.approx(302 / 380)


def test_half_precision_keys_keep_their_dtype_and_bytes():
    tau = {"w": torch.randn(8, 6).half(), "b": torch.randn(8)}
    compressed = compress_task_vector(tau, 0.5)
    assert compressed.factors["w"].u.dtype == torch.float16
    assert compressed.stored_bytes() == 2 * 3 * (8 + 6 + 1) + 4 * 8
    assert compressed.reconstruct("w").dtype == torch.float16


# ---------------------------------------------------------------------------- reconstruction


def test_full_rank_reconstruction_equals_the_task_vector():
    tau = random_taus(1)[0]
    compressed = compress_task_vector(tau, 1.0)
    for key, tensor in compressed.to_dense().items():
        torch.testing.assert_close(tensor, tau[key], rtol=0, atol=1e-12)


@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.6, 0.8])
def test_rank_k_error_is_the_eckart_young_bound(fraction):
    g = torch.Generator().manual_seed(3)
    tau = {"w": torch.randn(40, 25, generator=g, dtype=torch.float64)}
    k = int(25 * fraction)
    error = compress_task_vector(tau, fraction).reconstruct("w") - tau["w"]
    singular_values = np.linalg.svd(tau["w"].numpy(), compute_uv=False)
    assert np.linalg.norm(error.numpy()) == pytest.approx(math.sqrt(np.sum(singular_values[k:] ** 2)), rel=1e-10)
    assert np.linalg.norm(error.numpy(), 2) == pytest.approx(singular_values[k], rel=1e-10)


def test_truncating_a_full_compression_equals_compressing_at_the_smaller_fraction():
    tau = random_taus(1)[0]
    full = compress_task_vector(tau, 1.0)
    for fraction in (0.1, 1 / 3, 0.5):
        direct, truncated = compress_task_vector(tau, fraction), full.truncated(fraction)
        assert direct.ranks() == truncated.ranks()
        for key in tau:
            torch.testing.assert_close(truncated.reconstruct(key), direct.reconstruct(key), rtol=0, atol=1e-12)
    with pytest.raises(ParamError, match="recompress"):
        compress_task_vector(tau, 0.2).truncated(0.9)


# ---------------------------------------------------------------------------- TSV-Merge from factors


@pytest.mark.parametrize("num_tasks", [2, 3, 4])
def test_tsv_merge_from_factors_equals_the_existing_tsv_at_one_over_t(num_tasks):
    taus = random_taus(num_tasks, seed=num_tasks)
    merged = tsv_merge_compressed(compress_task_vectors(taus))
    expected = merge("tsv", taus)
    assert merged.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], rtol=1e-10, atol=1e-10)


def test_tsv_merge_from_factors_equals_whitened_polar_factors_computed_in_numpy():
    taus = random_taus(3, seed=11)
    merged = tsv_merge_compressed(compress_task_vectors(taus), lam=0.7)
    for key in ("blocks.0.attn.weight", "blocks.0.mlp.weight"):
        us, ss, vs = [], [], []
        for tau in taus:
            u, s, vh = np.linalg.svd(tau[key].numpy(), full_matrices=False)
            k = max(1, min(u.shape[0], vh.shape[1]) // 3)
            us.append(u[:, :k]), ss.append(s[:k]), vs.append(vh[:k].T)
        u_perp = numpy_polar_by_whitening(np.concatenate(us, axis=1))
        v_perp = numpy_polar_by_whitening(np.concatenate(vs, axis=1))
        expected = 0.7 * (u_perp * np.concatenate(ss)) @ v_perp.T
        np.testing.assert_allclose(merged[key].numpy(), expected, rtol=1e-9, atol=1e-9)
    for key in ("blocks.0.attn.bias", "conv.weight", "scale"):
        np.testing.assert_allclose(merged[key].numpy(), 0.7 * np.mean([t[key].numpy() for t in taus], axis=0))


def test_one_task_merges_to_exactly_its_reconstruction():
    compressed = compress_task_vectors(random_taus(3))[1]
    merged = tsv_merge_compressed([compressed])
    for key, tensor in compressed.to_dense().items():
        assert torch.equal(merged[key], tensor)


def test_every_method_merges_reconstructions():
    taus = random_taus(3)
    reconstructed = [c.to_dense() for c in compress_task_vectors(taus)]
    summed = merge("task_arithmetic", reconstructed)
    for key in SHAPES:
        torch.testing.assert_close(summed[key], sum(r[key] for r in reconstructed))


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), float("inf"), "0.5", True])
def test_rank_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ParamError, match="rank_fraction"):
        compress_task_vectors(random_taus(2), fraction)


def test_empty_task_lists_are_refused():
    with pytest.raises(ParamError, match="empty"):
        compress_task_vectors([])
    with pytest.raises(ParamError, match="empty"):
        tsv_merge_compressed([])


def test_non_finite_and_mismatched_task_vectors_are_refused():
    taus = random_taus(2)
    taus[1]["blocks.0.mlp.weight"][0, 0] = float("nan")
    with pytest.raises(InputError, match="task 1: key 'blocks.0.mlp.weight' contains NaN"):
        compress_task_vectors(taus)
    taus = random_taus(2)
    del taus[1]["scale"]
    with pytest.raises(InputError, match="task 1: key set differs .* missing 'scale'"):
        compress_task_vectors(taus)


def test_merging_compressions_of_different_pretrained_models_is_refused():
    first, second = compress_task_vectors(random_taus(2))
    first.pretrained_sha256, second.pretrained_sha256 = "a" * 64, "b" * 64
    second.name = "second"
    with pytest.raises(InputError, match="second: made against pretrained sha256 b+"):
        tsv_merge_compressed([first, second])


# ---------------------------------------------------------------------------- files and sources


def test_save_load_round_trip_and_metadata(tmp_path):
    compressed = compress_task_vectors(random_taus(3), names=["a", "b", "c"])[0]
    compressed.pretrained_sha256, compressed.source_sha256 = "1" * 64, "2" * 64
    path = tmp_path / "a.safetensors"
    save_compressed(path, compressed, pretrained_path="pre.safetensors", source_path="a_ft.safetensors")
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
        names = set(handle.keys())
    assert metadata["weaving_format"] == "tsv-compressed"
    assert json.loads(metadata["ranks"]) == {"blocks.0.attn.weight": 2, "blocks.0.mlp.weight": 1}
    assert float(metadata["rank_fraction"]) == 1 / 3
    assert json.loads(metadata["pretrained"]) == {"path": "pre.safetensors", "sha256": "1" * 64}
    assert json.loads(metadata["source"]) == {"path": "a_ft.safetensors", "sha256": "2" * 64}
    assert {"blocks.0.attn.weight::U", "blocks.0.attn.weight::S", "blocks.0.attn.weight::V", "scale"} <= names
    assert is_compressed_file(path)
    loaded = load_compressed(path)
    assert loaded.name == "a" and loaded.ranks() == compressed.ranks()
    for key in SHAPES:
        assert torch.equal(loaded.reconstruct(key), compressed.reconstruct(key))
    source = open_source(path)
    assert isinstance(source, CompressedTaskVectorSource)
    assert source.keys() == sorted(SHAPES)
    assert source.spec("blocks.0.mlp.weight") == ((5, 9), torch.float64)
    assert torch.equal(load_state_dict(path)["blocks.0.mlp.weight"], compressed.reconstruct("blocks.0.mlp.weight"))


def test_a_corrupted_file_is_refused(tmp_path):
    compressed = compress_task_vectors(random_taus(2))[0]
    path = tmp_path / "c.safetensors"
    save_compressed(path, compressed)
    with safe_open(path, framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in sorted(handle.keys())}
        metadata = handle.metadata()
    del tensors["blocks.0.mlp.weight::S"]
    save_file(tensors, tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.raises(InputError, match="bad.safetensors: tensors do not match .*'blocks.0.mlp.weight::S'"):
        open_source(tmp_path / "bad.safetensors")


def write_pretrained(path, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g, dtype=torch.float64) for k, s in SHAPES.items()}
    state["position_ids"] = torch.arange(5)
    save_file(state, path)
    return state


def test_with_the_pretrained_a_compressed_file_reads_as_a_checkpoint(tmp_path):
    pretrained = write_pretrained(tmp_path / "pre.safetensors")
    compressed = compress_task_vectors(random_taus(2))[0]
    compressed.pretrained_sha256 = sha256_file(tmp_path / "pre.safetensors")
    save_compressed(tmp_path / "c.safetensors", compressed)
    source = open_source(tmp_path / "c.safetensors", pretrained=open_source(tmp_path / "pre.safetensors"))
    assert isinstance(source, CompressedCheckpointSource)
    assert source.keys() == sorted(pretrained)
    assert torch.equal(source.load("position_ids"), pretrained["position_ids"])
    torch.testing.assert_close(source.load("blocks.0.mlp.weight"),
                               pretrained["blocks.0.mlp.weight"] + compressed.reconstruct("blocks.0.mlp.weight"))


def test_a_different_pretrained_or_key_set_is_refused(tmp_path):
    write_pretrained(tmp_path / "pre.safetensors", seed=0)
    write_pretrained(tmp_path / "other.safetensors", seed=1)
    compressed = compress_task_vectors(random_taus(2))[0]
    compressed.pretrained_sha256 = sha256_file(tmp_path / "pre.safetensors")
    save_compressed(tmp_path / "c.safetensors", compressed)
    with pytest.raises(InputError, match=r"c.safetensors: compressed against a different pretrained checkpoint"):
        open_source(tmp_path / "c.safetensors", pretrained=open_source(tmp_path / "other.safetensors"))
    taus = random_taus(2)
    for tau in taus:
        del tau["scale"]
    fewer = compress_task_vectors(taus)[0]
    fewer.pretrained_sha256 = compressed.pretrained_sha256
    save_compressed(tmp_path / "fewer.safetensors", fewer)
    with pytest.raises(InputError, match="fewer.safetensors: key set differs .* missing \\['scale'\\]"):
        open_source(tmp_path / "fewer.safetensors", pretrained=open_source(tmp_path / "pre.safetensors"))
