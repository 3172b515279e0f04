"""Issue 16: the command line for language-model users (output names, mixed dtypes, PEFT LoRA
adapters, resized vocabularies, hub ids from the local cache, hashing, mergekit names)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from cli_fixtures import make_models, merge_args, one_line_error, run
from safetensors.torch import load_file, save_file

import weaving.io
from weaving import apply_task_vector, merge, task_vectors
from weaving.io import read_metadata

torch.set_num_threads(1)
pytest.importorskip("peft")
pytest.importorskip("transformers")


def save_set(folder: Path, pretrained: dict, finetuned: list[dict]) -> tuple[Path, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(pretrained, folder / "pretrained.safetensors")
    paths = []
    for i, state in enumerate(finetuned):
        save_file(state, folder / f"task{i}.safetensors")
        paths.append(folder / f"task{i}.safetensors")
    return folder / "pretrained.safetensors", paths


# ---------------------------------------------------------------- 1. --out names


def test_out_names(tmp_path, capsys) -> None:
    pre, tasks = save_set(tmp_path, *make_models())
    for name, fragment in [("merged", "must end in .safetensors"), ("merged.bin", "a .bin name would lie"),
                           ("merged.pt", "must end in .safetensors")]:
        code, _, err = run(merge_args(pre, tasks, tmp_path / name), capsys)
        assert code == 2 and fragment in one_line_error(err) and "end the name with '/'" in err
        assert not (tmp_path / name).exists()
    code, _, err = run(merge_args(pre, tasks, f"{tmp_path / 'outdir'}/"), capsys)  # trailing slash: a folder
    assert code == 0, err
    assert (tmp_path / "outdir" / "model.safetensors").is_file()
    (tmp_path / "existing").mkdir()  # an existing folder without the slash: a folder too
    code, _, err = run(merge_args(pre, tasks, tmp_path / "existing"), capsys)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "existing")) == ["README.md", "model.safetensors"]


def test_existing_folder_is_replaced_only_when_it_is_a_weaving_output(tmp_path, capsys) -> None:
    pre, tasks = save_set(tmp_path, *make_models())
    out = tmp_path / "out"
    code, _, err = run(merge_args(pre, tasks, f"{out}/", "task_arithmetic", "--max-shard-size", "150B"), capsys)
    assert code == 0, err
    assert len(list(out.glob("model-*.safetensors"))) > 1
    code, _, err = run(merge_args(pre, tasks, f"{out}/"), capsys)  # one shard now: the old shards are gone
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["README.md", "model.safetensors"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = run(merge_args(pre, tasks, f"{tmp_path / 'mine'}/"), capsys)
    assert code == 2 and "not a weaving output (notes.txt)" in one_line_error(err)
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


# ---------------------------------------------------------------- 2. mixed dtypes


def test_mixed_dtypes_computed_precisely_written_in_pretrained_dtype(tmp_path, capsys) -> None:
    pretrained, finetuned = make_models()
    casts = [torch.bfloat16, torch.float32, torch.float16]
    pretrained = {k: v.to(casts[0]) if v.is_floating_point() else v for k, v in pretrained.items()}
    finetuned = [{k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
                 for sd, dtype in zip(finetuned, casts)]
    pre, tasks = save_set(tmp_path, pretrained, finetuned)
    for extra, out_dtype in [((), torch.bfloat16), (("--dtype", "float32"), torch.float32)]:
        out = tmp_path / f"out-{out_dtype}.safetensors"
        code, _, err = run(merge_args(pre, tasks, out, "task_arithmetic", "--lam", "0.5", *extra), capsys)
        assert code == 0, err
        merged = load_file(out)
        for key, base in pretrained.items():
            if not base.is_floating_point():
                assert torch.equal(merged[key], base)
                continue
            reference = base.double() + 0.5 * sum(ft[key].double() - base.double() for ft in finetuned)
            assert merged[key].dtype == out_dtype
            # float32 compute then one rounding: within float32 error of the float64 reference, then
            # half an ulp of the output dtype
            ulp = torch.finfo(out_dtype).eps * reference.abs().clamp(min=1e-3)
            assert bool(((merged[key].double() - reference).abs() <= ulp + 1e-6).all()), key
        meta = read_metadata(out)
        assert meta["compute_dtype"] == "float32" and meta["output_dtype"] == str(out_dtype).removeprefix("torch.")
        assert json.loads(meta["input_dtypes"]) == {str(pre): ["bfloat16"], str(tasks[0]): ["bfloat16"],
                                                    str(tasks[1]): ["float32"], str(tasks[2]): ["float16"]}


def test_float64_input_raises_the_compute_dtype(tmp_path, capsys) -> None:
    pretrained, finetuned = make_models()
    finetuned[1] = {k: v.double() if v.is_floating_point() else v for k, v in finetuned[1].items()}
    pre, tasks = save_set(tmp_path, pretrained, finetuned)
    code, _, err = run(merge_args(pre, tasks, tmp_path / "o.safetensors"), capsys)
    assert code == 0, err
    meta = read_metadata(tmp_path / "o.safetensors")
    assert meta["compute_dtype"] == "float64" and meta["output_dtype"] == "float32"


# ---------------------------------------------------------------- 3. PEFT LoRA adapters


def tiny_llama(folder: Path, vocab: int = 64, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return model


def make_adapter(base_folder: Path, folder: Path, seed: int, **lora: object) -> dict[str, torch.Tensor]:
    """Save a LoRA adapter with random (non-zero) factors; return PEFT's merge_and_unload state dict."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_folder),
                           LoraConfig(init_lora_weights=False, **lora))
    for name, parameter in model.named_parameters():
        if "modules_to_save" in name:  # a trained copy, not the base's values
            parameter.data += 0.01 * torch.randn(parameter.shape)
    model.save_pretrained(folder)
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("llama")
    base = tiny_llama(root / "base")
    merged = {
        "plain": make_adapter(root / "base", root / "plain", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        "rslora": make_adapter(root / "base", root / "rslora", 2, r=2, lora_alpha=3, use_rslora=True,
                               target_modules=["o_proj", "down_proj", "embed_tokens"], modules_to_save=["lm_head"]),
    }
    return {"root": root, "base": {k: v.detach().clone() for k, v in base.state_dict().items()}, "merged": merged}


@pytest.mark.parametrize("adapter", ["plain", "rslora"])
def test_adapter_merged_alone_equals_peft_merge_and_unload(llama, tmp_path, capsys, adapter: str) -> None:
    root = llama["root"]
    out = tmp_path / "out"
    code, _, err = run(merge_args(root / "base", [root / adapter], f"{out}/"), capsys)
    assert code == 0, err
    merged = load_file(out / "model.safetensors")
    expected = llama["merged"][adapter]
    assert sorted(merged) == sorted(expected)
    changed = {k for k in expected if not torch.equal(expected[k], llama["base"][k])}
    assert changed == {"plain": {f"model.layers.{i}.self_attn.{m}_proj.weight" for i in (0, 1) for m in "qv"},
                       "rslora": {"lm_head.weight", "model.embed_tokens.weight"}
                       | {f"model.layers.{i}.{m}.weight" for i in (0, 1)
                          for m in ("self_attn.o_proj", "mlp.down_proj")}}[adapter]
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], rtol=0, atol=1e-6, msg=key)
    finetuned = json.loads(read_metadata(out / "model.safetensors")["finetuned"])
    assert finetuned[0]["adapter"] == "peft-lora"


@pytest.mark.parametrize("method", ["ties", "tsv", "dare"])
def test_adapters_as_task_vectors_in_every_method(llama, tmp_path, capsys, method: str) -> None:
    root = llama["root"]
    out = tmp_path / "o.safetensors"
    code, _, err = run(merge_args(root / "base", [root / "plain", root / "rslora"], out, method, "--lam", "0.8"), capsys)
    assert code == 0, err
    taus = task_vectors(llama["base"], [llama["merged"]["plain"], llama["merged"]["rslora"]])
    expected = apply_task_vector(llama["base"], merge(method, taus, lam=0.8))
    merged = load_file(out)
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_weave_over_adapters(llama, tmp_path, capsys) -> None:
    root = llama["root"]
    out = tmp_path / "w.safetensors"
    argv = ["weave", "--pretrained", root / "base", "--finetuned", root / "plain", root / "rslora", "--method",
            "ties", "--lambdas", "0.5,1.0", "--out", out, "--quiet"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    from weaving import weave

    taus = task_vectors(llama["base"], [llama["merged"]["plain"], llama["merged"]["rslora"]])
    expected = apply_task_vector(llama["base"], weave("ties", taus, lambdas=[0.5, 1.0]))
    for key, value in load_file(out).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_unsupported_adapters_are_refused(llama, tmp_path, capsys) -> None:
    root = llama["root"]
    dora = tmp_path / "dora"
    dora.mkdir()
    config = json.loads((root / "plain" / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (dora / "adapter_model.safetensors").write_bytes((root / "plain" / "adapter_model.safetensors").read_bytes())
    code, _, err = run(merge_args(root / "base", [dora], tmp_path / "o.safetensors"), capsys)
    assert code == 1 and "use_dora is set" in one_line_error(err) and "adapter_config.json" in err
    code, _, err = run(merge_args(root / "plain", [root / "rslora"], tmp_path / "o.safetensors"), capsys)
    assert code == 1 and "cannot be the pretrained model" in one_line_error(err)
    other = tmp_path / "other_base"
    tiny_llama(other, vocab=64)
    capsys.readouterr()  # transformers' own progress bars
    small = load_file(other / "model.safetensors")
    small["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(8, 16)
    save_file(small, other / "model.safetensors", metadata={"format": "pt"})
    code, _, err = run(merge_args(other, [root / "plain"], tmp_path / "o.safetensors"), capsys)
    assert code == 1 and "another base model" in one_line_error(err)


# ---------------------------------------------------------------- 4. resized vocabularies


@pytest.fixture
def resized(tmp_path: Path) -> dict:
    shapes = {"model.embed_tokens.weight": (10, 4), "lm_head.weight": (10, 4), "layer.weight": (4, 4)}
    pretrained, finetuned = make_models(shapes=shapes, tasks=3)
    g = torch.Generator().manual_seed(7)
    for sd, extra in zip(finetuned, (1, 0, 3)):  # 11, 10 and 13 rows
        for key in ("model.embed_tokens.weight", "lm_head.weight"):
            sd[key] = torch.cat([sd[key], torch.randn(extra, 4, generator=g)])
    folder = tmp_path / "base"
    folder.mkdir()
    save_file(pretrained, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10, "torch_dtype": "float32"}))
    tasks = []
    for i, sd in enumerate(finetuned):
        (tmp_path / f"ft{i}").mkdir()
        save_file(sd, tmp_path / f"ft{i}" / "model.safetensors")
        tasks.append(tmp_path / f"ft{i}")
    return {"pre": folder, "tasks": tasks, "pretrained": pretrained, "finetuned": finetuned}


def test_resized_vocabulary_refused_by_default(resized, tmp_path, capsys) -> None:
    code, _, err = run(merge_args(resized["pre"], resized["tasks"], tmp_path / "o.safetensors"), capsys)
    assert code == 1
    line = one_line_error(err)
    assert str(resized["tasks"][0]) in line and "'lm_head.weight'" in line and "(11, 4)" in line
    assert "(10, 4)" in line and "--vocab base" in line and "--vocab union" in line


def test_vocab_base_merges_the_shared_rows(resized, tmp_path, capsys) -> None:
    out = tmp_path / "o.safetensors"
    code, _, err = run(merge_args(resized["pre"], resized["tasks"], out, "ties", "--vocab", "base"), capsys)
    assert code == 0, err
    cut = [{k: v[:10] if v.ndim == 2 and v.shape[0] > 10 else v for k, v in sd.items()} for sd in resized["finetuned"]]
    expected = apply_task_vector(resized["pretrained"], merge("ties", task_vectors(resized["pretrained"], cut)))
    merged = load_file(out)
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], rtol=0, atol=1e-6, msg=key)
    assert json.loads(read_metadata(out)["vocab"]) == {"policy": "base", "keys": ["lm_head.weight",
                                                                                   "model.embed_tokens.weight"]}


def test_vocab_union_appends_added_rows_in_order(resized, tmp_path, capsys) -> None:
    out = tmp_path / "merged"
    code, _, err = run(merge_args(resized["pre"], resized["tasks"], f"{out}/", "task_arithmetic", "--vocab", "union"),
                       capsys)
    assert code == 0, err
    merged = load_file(out / "model.safetensors")
    ft = resized["finetuned"]
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[key].shape == (13, 4)
        base = resized["pretrained"][key]
        shared = base + sum(sd[key][:10] - base for sd in ft)
        torch.testing.assert_close(merged[key][:10], shared, rtol=0, atol=1e-6)
        assert torch.equal(merged[key][10], ft[0][key][10])  # the first model with row 10
        assert torch.equal(merged[key][11:13], ft[2][key][11:13])  # only the third has rows 11, 12
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 13


def test_vocab_policy_needs_identified_keys(resized, tmp_path, capsys) -> None:
    (resized["pre"] / "config.json").unlink()
    argv = merge_args(resized["pre"], resized["tasks"], tmp_path / "o.safetensors", "task_arithmetic", "--vocab", "base")
    code, _, err = run(argv, capsys)
    assert code == 1 and "name it with --vocab-keys" in one_line_error(err)
    code, _, err = run(argv + ["--vocab-keys", "lm_head.weight,model.embed_tokens.weight"], capsys)
    assert code == 0, err


# ---------------------------------------------------------------- 5. hub ids from the local cache


def lay_out_hub_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """The layout huggingface_hub writes: blobs, a snapshot of symlinks, refs/main."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    (root / "blobs").mkdir()
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))


def test_hub_ids_resolved_from_local_cache(tmp_path, capsys, monkeypatch) -> None:
    pretrained, finetuned = make_models()
    pre, tasks = save_set(tmp_path / "files", pretrained, finetuned)
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "org/tiny-base", {"model.safetensors": pre})
    for i, task in enumerate(tasks):
        lay_out_hub_cache(cache, f"org/tiny-task{i}", {"model.safetensors": task})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o.safetensors"
    code, _, err = run(merge_args("org/tiny-base", [f"org/tiny-task{i}" for i in range(3)], out), capsys)
    assert code == 0, err
    expected = apply_task_vector(pretrained, merge("task_arithmetic", task_vectors(pretrained, finetuned)))
    for key, value in load_file(out).items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6)
    meta = read_metadata(out)
    assert json.loads(meta["pretrained"]) == {"path": "org/tiny-base",
                                              "sha256": hashlib.sha256(pre.read_bytes()).hexdigest()}
    code, _, err = run(merge_args("org/tiny-base", ["org/missing"], out), capsys)
    assert code == 1
    line = one_line_error(err)
    assert "org/missing" in line and f"not in the Hugging Face cache {cache}" in line and "--allow-download" in line


# ---------------------------------------------------------------- 6. hashing


def test_hash_none_reads_no_input_for_hashing(tmp_path, capsys, monkeypatch) -> None:
    pre, tasks = save_set(tmp_path, *make_models())

    def refuse(*args, **kwargs):
        raise AssertionError("hashed")

    monkeypatch.setattr(weaving.io, "_sha256_of_one_file", refuse)
    code, _, err = run(merge_args(pre, tasks, tmp_path / "o.safetensors", "task_arithmetic", "--hash", "none"), capsys)
    assert code == 0, err
    meta = read_metadata(tmp_path / "o.safetensors")
    assert json.loads(meta["pretrained"])["sha256"] is None and meta["hash"] == "none"


def test_hashes_of_unchanged_files_are_reused(tmp_path, capsys, monkeypatch) -> None:
    pre, tasks = save_set(tmp_path / "m", *make_models())
    monkeypatch.setenv("WEAVING_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "o.safetensors"
    true_digest = hashlib.sha256(pre.read_bytes()).hexdigest()
    assert run(merge_args(pre, tasks, out), capsys)[0] == 0
    assert json.loads(read_metadata(out)["pretrained"])["sha256"] == true_digest
    cache_file = tmp_path / "cache" / "sha256.json"
    entries = json.loads(cache_file.read_text())
    assert entries[str(pre.resolve())]["sha256"] == true_digest
    entries[str(pre.resolve())]["sha256"] = "0" * 64  # a planted digest: used only while the file is unchanged
    cache_file.write_text(json.dumps(entries))
    assert run(merge_args(pre, tasks, out), capsys)[0] == 0
    assert json.loads(read_metadata(out)["pretrained"])["sha256"] == "0" * 64
    stat = pre.stat()
    os.utime(pre, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert run(merge_args(pre, tasks, out), capsys)[0] == 0
    assert json.loads(read_metadata(out)["pretrained"])["sha256"] == true_digest


# ---------------------------------------------------------------- 7. mergekit names


@pytest.mark.parametrize("method, setting, fragment", [
    ("dare", "density=0.8", ("weaving's DARE takes p, the drop rate; mergekit's density d (the keep rate) "
                             "corresponds to p = 1 - d")),
    ("breadcrumbs", "density=0.9", "takes beta, the fraction of each row kept"),
    ("ties", "weight=0.5", "--weights W1 W2"),
    ("task_arithmetic", "lambda=0.5", "is weaving's --lam"),
    ("ties", "normalize=true", "does not divide by the sum of the weights"),
])
def test_mergekit_parameter_names_get_their_weaving_meaning(tmp_path, capsys, method, setting, fragment) -> None:
    pre, tasks = save_set(tmp_path, *make_models())
    code, _, err = run(merge_args(pre, tasks, tmp_path / "o.safetensors", method, "--set", setting), capsys)
    assert code == 2 and fragment in one_line_error(err)
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("method, fragment", [("dare_linear", "p = 1 - d"), ("linear", "--lam 1/T"),
                                              ("dare_ties", "no DARE with TIES' sign election"),
                                              ("slerp", "no SLERP")])
def test_mergekit_method_names(tmp_path, capsys, method, fragment) -> None:
    pre, tasks = save_set(tmp_path, *make_models())
    code, _, err = run(merge_args(pre, tasks, tmp_path / "o.safetensors", method), capsys)
    assert code == 2 and fragment in one_line_error(err) and "valid: breadcrumbs" in err


def test_adapter_weights_file_alone_points_to_its_folder(llama, tmp_path, capsys) -> None:
    root = llama["root"]
    weights = root / "plain" / "adapter_model.safetensors"
    code, _, err = run(merge_args(root / "base", [weights], tmp_path / "o.safetensors"), capsys)
    assert code == 1
    line = one_line_error(err)
    assert str(weights) in line and "PEFT adapter" in line and "adapter_config.json" in line
