"""Issue 15, items 4 and 5: Hugging Face model folders, --dtype, --device, --weights, merge files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from cli_fixtures import make_models, merge_args, one_line_error, run
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weaving import apply_task_vector, merge, task_vectors
from weaving.io import load_state_dict, read_metadata

torch.set_num_threads(1)
transformers = pytest.importorskip("transformers")


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 64)}}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>")
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny Llama saved by transformers (sharded, with tokenizer) and three fine-tuned copies."""
    root = tmp_path_factory.mktemp("hf")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(root / "base", max_shard_size="10KB")
    save_tokenizer(root / "base")
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finetuned = []
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        state = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        model.load_state_dict(state)
        model.save_pretrained(root / f"ft{i}", max_shard_size="10KB")
        finetuned.append(state)
    return {"root": root, "base": base, "finetuned": finetuned}


def test_model_folder_loads_with_transformers(llama, tmp_path, capsys) -> None:
    root = llama["root"]
    out = tmp_path / "merged"
    code, _, err = run(merge_args(root / "base", [root / f"ft{i}" for i in range(3)], f"{out}/", "ties",
                                  "--set", "density=0.3", "--max-shard-size", "20KB"), capsys)
    assert code == 0, err
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    assert sorted(index["weight_map"]) == sorted(llama["base"])
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in llama["base"].values())
    for shard in shards:
        assert (out / shard).stat().st_size <= 20_000 + 4096  # data at most 20 kB, plus the header
        with safe_open(out / shard, framework="pt") as handle:
            meta = handle.metadata()
        assert meta["format"] == "pt" and meta["method"] == "ties" and json.loads(meta["hparams"]) == {"density": 0.3}
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (root / "base" / name).read_bytes(), name
    assert json.loads((out / "config.json").read_text()) == json.loads((root / "base" / "config.json").read_text())
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "- weaving" in card and "method: ties" in card and "weaving run" in card

    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    expected = apply_task_vector(llama["base"], merge("ties", task_vectors(llama["base"], llama["finetuned"]),
                                                      density=0.3))
    state = loaded.state_dict()
    for key in expected:
        torch.testing.assert_close(state[key], expected[key], rtol=1e-6, atol=1e-6, msg=key)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer("w3 w4 w5", return_tensors="pt").input_ids
    assert loaded(ids).logits.shape == (1, ids.shape[1], 64)


def test_dtype_bfloat16_folder(llama, tmp_path, capsys) -> None:
    root = llama["root"]
    out = tmp_path / "bf16"
    code, _, err = run(merge_args(root / "base", [root / "ft0", root / "ft1"], f"{out}/", "task_arithmetic",
                                  "--dtype", "bfloat16"), capsys)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert loaded.dtype == torch.bfloat16
    expected = apply_task_vector(llama["base"], merge("task_arithmetic", task_vectors(llama["base"],
                                                                                      llama["finetuned"][:2])))
    merged = load_state_dict(out)
    for key in expected:
        assert merged[key].dtype == torch.bfloat16
        assert torch.equal(merged[key], expected[key].to(torch.bfloat16)) or torch.allclose(
            merged[key].float(), expected[key], rtol=2 ** -8, atol=1e-6), key
    meta = read_metadata(out / "model.safetensors")
    assert (meta["compute_dtype"], meta["output_dtype"]) == ("float32", "bfloat16")


def test_shard_size_below_one_tensor_is_refused(llama, tmp_path, capsys) -> None:
    root = llama["root"]
    out = tmp_path / "o"
    code, _, err = run(merge_args(root / "base", [root / "ft0"], f"{out}/", "task_arithmetic",
                                  "--max-shard-size", "1KB"), capsys)
    assert code == 2
    line = one_line_error(err)
    assert "--max-shard-size 1000 bytes is below the size of tensor" in line and "give a larger size" in line
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
    code, _, err = run(merge_args(root / "base", [root / "ft0"], f"{out}/", "task_arithmetic",
                                  "--max-shard-size", "lots"), capsys)
    assert code == 2 and "expected a size such as 5GB" in one_line_error(err)


def test_dtype_overflow_names_the_key(tmp_path, capsys) -> None:
    pretrained, finetuned = make_models()
    finetuned[0]["head.weight"] = finetuned[0]["head.weight"] + 1e5
    save_file(pretrained, tmp_path / "p.safetensors")
    save_file(finetuned[0], tmp_path / "f.safetensors")
    code, _, err = run(merge_args(tmp_path / "p.safetensors", [tmp_path / "f.safetensors"], tmp_path / "o.safetensors",
                                  "task_arithmetic", "--dtype", "float16"), capsys)
    assert code == 1
    assert "'head.weight'" in one_line_error(err) and "beyond the range of torch.float16 (--dtype float16)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors", "p.safetensors"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_device_cuda_without_gpu(tmp_path, capsys) -> None:
    pretrained, finetuned = make_models()
    save_file(pretrained, tmp_path / "p.safetensors")
    save_file(finetuned[0], tmp_path / "f.safetensors")
    code, _, err = run(merge_args(tmp_path / "p.safetensors", [tmp_path / "f.safetensors"], tmp_path / "o.safetensors",
                                  "ties", "--device", "cuda"), capsys)
    assert code == 2 and "--device cuda: no CUDA GPU is available" in one_line_error(err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "tsv", "breadcrumbs"])
def test_device_cuda_matches_cpu(tmp_path, capsys, method) -> None:
    pretrained, finetuned = make_models()
    save_file(pretrained, tmp_path / "p.safetensors")
    tasks = []
    for i, state in enumerate(finetuned):
        save_file(state, tmp_path / f"f{i}.safetensors")
        tasks.append(tmp_path / f"f{i}.safetensors")
    for device in ("cpu", "cuda"):
        code, _, err = run(merge_args(tmp_path / "p.safetensors", tasks, tmp_path / f"{device}.safetensors", method,
                                      "--device", device), capsys)
        assert code == 0, err
    cpu, cuda = load_file(tmp_path / "cpu.safetensors"), load_file(tmp_path / "cuda.safetensors")
    for key in cpu:
        torch.testing.assert_close(cuda[key], cpu[key], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- --weights


@pytest.fixture
def small(tmp_path: Path) -> dict:
    pretrained, finetuned = make_models()
    save_file(pretrained, tmp_path / "p.safetensors")
    tasks = []
    for i, state in enumerate(finetuned):
        save_file(state, tmp_path / f"f{i}.safetensors")
        tasks.append(tmp_path / f"f{i}.safetensors")
    return {"pre": tmp_path / "p.safetensors", "tasks": tasks, "pretrained": pretrained, "finetuned": finetuned}


def test_weights_in_task_arithmetic_by_hand(small, tmp_path, capsys) -> None:
    out = tmp_path / "o.safetensors"
    code, _, err = run(merge_args(small["pre"], small["tasks"], out, "task_arithmetic", "--lam", "0.5",
                                  "--weights", "0.2", "-1", "3"), capsys)
    assert code == 0, err
    merged = load_file(out)
    for key, base in small["pretrained"].items():
        if base.is_floating_point():
            expected = base.double() + 0.5 * sum(w * (ft[key].double() - base.double())
                                                 for w, ft in zip((0.2, -1.0, 3.0), small["finetuned"]))
            torch.testing.assert_close(merged[key].double(), expected, rtol=0, atol=1e-5)
    assert json.loads(read_metadata(out)["weights"]) == [0.2, -1.0, 3.0]


@pytest.mark.parametrize("method, hparams", [("dare", {"p": 0.3}), ("breadcrumbs", {"beta": 0.5, "gamma": 0.1})])
def test_weights_scale_each_task_vector(small, tmp_path, capsys, method, hparams) -> None:
    out = tmp_path / "o.safetensors"
    sets = [a for k, v in hparams.items() for a in ("--set", f"{k}={v}")]
    code, _, err = run(merge_args(small["pre"], small["tasks"], out, method, "--weights", "0.5", "2", "1", *sets),
                       capsys)
    assert code == 0, err
    taus = task_vectors(small["pretrained"], small["finetuned"])
    scaled = [{k: w * v for k, v in tau.items()} for w, tau in zip((0.5, 2.0, 1.0), taus)]
    expected = apply_task_vector(small["pretrained"], merge(method, scaled, **hparams))
    merged = load_file(out)
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_weights_refused_where_a_method_takes_none(small, tmp_path, capsys) -> None:
    out = tmp_path / "o.safetensors"
    for method in ("ties", "magmax", "tsv", "iso_c", "pcb"):
        code, _, err = run(merge_args(small["pre"], small["tasks"], out, method, "--weights", "1", "1", "1"), capsys)
        assert code == 2 and f"method {method!r} takes no per-model weights" in one_line_error(err)
    code, _, err = run(merge_args(small["pre"], small["tasks"], out, "dare", "--weights", "1", "1"), capsys)
    assert code == 2 and "2 weights for 3 fine-tuned models" in one_line_error(err)
    assert not out.exists()


# ---------------------------------------------------------------- merge files


def test_run_merge_file_equals_command_line_and_records_its_sha256(small, tmp_path, capsys) -> None:
    folder = tmp_path
    merge_file = folder / "merge.yaml"
    merge_file.write_text(yaml.safe_dump({
        "command": "weave", "pretrained": "p.safetensors", "finetuned": ["f0.safetensors", "f1.safetensors"],
        "method": "ties", "hparams": {"density": 0.4}, "lambdas": "0.5:1.0:0.25", "pooling": "magmax",
        "seed": 3, "out": "from_file.safetensors",
    }))
    code, _, err = run(["run", merge_file, "--quiet"], capsys)
    assert code == 0, err
    argv = ["weave", "--pretrained", small["pre"], "--finetuned", *small["tasks"][:2], "--method", "ties",
            "--set", "density=0.4", "--lambdas", "0.5:1.0:0.25", "--pooling", "magmax", "--seed", "3",
            "--out", tmp_path / "from_cli.safetensors", "--quiet"]
    assert run(argv, capsys)[0] == 0
    from_file, from_cli = load_file(tmp_path / "from_file.safetensors"), load_file(tmp_path / "from_cli.safetensors")
    assert all(torch.equal(from_file[k], from_cli[k]) for k in from_cli)
    meta = read_metadata(tmp_path / "from_file.safetensors")
    assert json.loads(meta["merge_file"]) == {"path": str(merge_file),
                                              "sha256": hashlib.sha256(merge_file.read_bytes()).hexdigest()}


@pytest.mark.parametrize("content, fragment", [
    ({"densty": 0.2}, "densty: unknown key; valid keys: allow_download,"),
    ({"lambdas": "0.1,0.2"}, "lambdas: only for command: weave"),
    ({"command": "weave"}, "lambdas: required for command: weave"),
    ({"finetuned": []}, "finetuned: List should have at least 1 item"),
    ({"dtype": "float8"}, "dtype: Input should be"),
])
def test_bad_merge_file_is_refused_naming_the_key(small, tmp_path, capsys, content, fragment) -> None:
    merge_file = tmp_path / "bad.yaml"
    record = {"pretrained": "p.safetensors", "finetuned": ["f0.safetensors"], "method": "ties", "out": "o.safetensors"}
    merge_file.write_text(yaml.safe_dump({**record, **content}))
    code, _, err = run(["run", merge_file], capsys)
    assert code == 2
    line = one_line_error(err)
    assert line.startswith(f"weaving: error: {merge_file}: ") and fragment in line
    assert not (tmp_path / "o.safetensors").exists()


def test_save_config_then_run_reproduces_the_output(small, tmp_path, capsys) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    out = tmp_path / "out"
    argv = merge_args(small["pre"], small["tasks"], f"{out}/", "dare", "--set", "p=0.3", "--seed", "5", "--lam", "0.7",
                      "--weights", "1", "0.5", "2", "--dtype", "float64", "--save-config", configs / "merge.yaml")
    code, _, err = run(argv, capsys)
    assert code == 0, err
    record = yaml.safe_load((configs / "merge.yaml").read_text())
    assert record["pretrained"] == os.path.join("..", "p.safetensors") and record["out"] == "../out/"
    assert record["hparams"] == {"p": 0.3} and record["weights"] == [1.0, 0.5, 2.0] and record["dtype"] == "float64"
    first = load_state_dict(out)
    out.rename(tmp_path / "first")
    code, _, err = run(["run", configs / "merge.yaml", "--quiet"], capsys)
    assert code == 0, err
    second = load_state_dict(out)
    assert sorted(first) == sorted(second) and all(torch.equal(first[k], second[k]) for k in first)
    assert first["enc.weight"].dtype == torch.float64


def test_save_config_never_replaces_an_input_or_lands_in_the_output(small, tmp_path, capsys) -> None:
    before = small["pre"].read_bytes()
    (tmp_path / "out").mkdir()
    for path, fragment in [(small["pre"], "must end in .yaml"), (tmp_path / "out" / "m.yaml", "inside or on the output")]:
        code, _, err = run(merge_args(small["pre"], small["tasks"], f"{tmp_path / 'out'}/", "task_arithmetic",
                                      "--save-config", path), capsys)
        assert code == 2 and fragment in one_line_error(err)
    linked = tmp_path / "linked.yaml"
    os.link(small["tasks"][0], linked)
    code, _, err = run(merge_args(small["pre"], small["tasks"], tmp_path / "o.safetensors", "task_arithmetic",
                                  "--save-config", linked), capsys)
    assert code == 2 and "is a file of input" in one_line_error(err)
    assert small["pre"].read_bytes() == before and list((tmp_path / "out").iterdir()) == []
