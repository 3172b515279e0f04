"""Checkpoint readers, the streaming safetensors writer and sha256 (weaving.io)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weaving.errors import InputError
from weaving.io import (
    ShardedSource,
    TorchFileSource,
    load_state_dict,
    open_source,
    read_metadata,
    save_state_dict,
    sha256_file,
    write_safetensors,
)


def sample_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(4, 3, 2, 2, generator=g),
        "ln.bias": torch.randn(7, generator=g).to(torch.bfloat16),
        "proj": torch.randn(5, 6, generator=g).to(torch.float16),
        "scale": torch.randn((), generator=g, dtype=torch.float64),
        "position_ids": torch.arange(9, dtype=torch.int64).reshape(1, 9),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def write_hf_sharded(folder: Path, state: dict[str, torch.Tensor], fmt: str, shards: list[list[str]]) -> Path:
    """Write ``state`` as Hugging Face does: ``<prefix>-0000i-of-0000n.<ext>`` plus an index JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix, ext, index_name = (
        ("model", "safetensors", "model.safetensors.index.json")
        if fmt == "safetensors"
        else ("pytorch_model", "bin", "pytorch_model.bin.index.json")
    )
    weight_map = {}
    for i, keys in enumerate(shards, start=1):
        name = f"{prefix}-{i:05d}-of-{len(shards):05d}.{ext}"
        part = {k: state[k] for k in keys}
        if fmt == "safetensors":
            save_file(part, folder / name, metadata={"format": "pt"})
        else:
            torch.save(part, folder / name)
        weight_map.update({k: name for k in keys})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / index_name).write_text(json.dumps(index, indent=2))
    return folder / index_name


SHARDS = [["conv.weight", "ln.bias", "mask"], ["proj", "scale"], ["position_ids", "empty"]]


# ---------------------------------------------------------------- readers


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin", ".pth"])
def test_single_file_reader_matches_saved_state(tmp_path: Path, suffix: str) -> None:
    state = sample_state_dict()
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    source = open_source(path)
    assert source.name == str(path)
    assert source.keys() == sorted(state)
    for key, tensor in state.items():
        assert source.spec(key) == (tuple(tensor.shape), tensor.dtype)
    assert_same_state({k: source.load(k) for k in source.keys()}, state)


def test_legacy_torch_format_is_read(tmp_path: Path) -> None:
    state = sample_state_dict()
    path = tmp_path / "legacy.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert_same_state(load_state_dict(path), state)


def test_format_sniffed_from_content_when_extension_is_unknown(tmp_path: Path) -> None:
    state = sample_state_dict()
    save_file(state, tmp_path / "a.weights")
    torch.save(state, tmp_path / "b.weights")
    assert_same_state(load_state_dict(tmp_path / "a.weights"), state)
    assert_same_state(load_state_dict(tmp_path / "b.weights"), state)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoint_reads_as_one_state_dict(tmp_path: Path, fmt: str) -> None:
    state = sample_state_dict()
    index = write_hf_sharded(tmp_path / "ckpt", state, fmt, SHARDS)
    for path in (index, tmp_path / "ckpt"):  # the index itself, or the folder holding it
        source = open_source(path)
        assert isinstance(source, ShardedSource)
        assert source.keys() == sorted(state)
        assert source.spec("proj") == ((5, 6), torch.float16)
        assert_same_state({k: source.load(k) for k in source.keys()}, state)


def test_folder_with_single_file_checkpoint(tmp_path: Path) -> None:
    state = sample_state_dict()
    save_file(state, tmp_path / "model.safetensors")
    assert_same_state(load_state_dict(tmp_path), state)


def overwrite_bytes(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_tensor_data_is_read_only_when_loaded(tmp_path: Path, suffix: str) -> None:
    """Change a tensor's bytes in the file after opening: load() must see the new bytes."""
    g = torch.Generator().manual_seed(1)
    state = {"a": torch.randn(64, generator=g), "b": torch.randn(64, generator=g)}
    path = tmp_path / f"m{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    source = open_source(path)
    replacement = torch.randn(64, generator=g)
    overwrite_bytes(path, state["b"].numpy().tobytes(), replacement.numpy().tobytes())
    assert torch.equal(source.load("a"), state["a"])
    assert torch.equal(source.load("b"), replacement)


def test_torch_loads_are_independent_copies(tmp_path: Path) -> None:
    state = {"a": torch.ones(1000), "b": torch.zeros(1000)}
    torch.save(state, tmp_path / "m.pt")
    source = TorchFileSource(tmp_path / "m.pt", mapped_budget_bytes=1)  # drop the map after every load
    first = source.load("a")
    first.add_(5)
    assert torch.equal(source.load("a"), torch.ones(1000))
    assert torch.equal(source.load("b"), torch.zeros(1000))


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(2)}, tmp_path / "m.safetensors")
    source = open_source(tmp_path / "m.safetensors")
    with pytest.raises(InputError, match=r"m\.safetensors.*'nope'"):
        source.load("nope")
    with pytest.raises(InputError, match=r"'nope'"):
        source.spec("nope")


# ---------------------------------------------------------------- reader errors


def test_missing_file_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"absent\.safetensors: no such file"):
        open_source(tmp_path / "absent.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: folder holds no checkpoint"):
        open_source(tmp_path / "empty")


@pytest.mark.parametrize("keep", [0, 4, 7, 20, -1])
def test_truncated_safetensors_names_file(tmp_path: Path, keep: int) -> None:
    save_file(sample_state_dict(), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(InputError, match=r"cut\.safetensors: not a readable safetensors file"):
        open_source(cut)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.9])
def test_truncated_torch_file_names_file(tmp_path: Path, legacy: bool, fraction: float) -> None:
    torch.save(sample_state_dict(), tmp_path / "full.pt", _use_new_zipfile_serialization=not legacy)
    data = (tmp_path / "full.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InputError, match=r"cut\.pt: not a readable PyTorch state-dict file"):
        open_source(cut)


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"state_dict": {"a": torch.zeros(2)}, "epoch": 3}, r"not a flat state dict.*'state_dict'"),
        ([torch.zeros(2)], r"holds a list, not a state dict"),
        ({"a": torch.zeros(2), "step": 5}, r"not a flat state dict.*'step'"),
        ({1: torch.zeros(2)}, r"not a flat state dict"),
    ],
)
def test_torch_file_that_is_not_a_flat_state_dict(tmp_path: Path, obj: object, message: str) -> None:
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(InputError, match=r"x\.pt: " + message):
        open_source(tmp_path / "x.pt")


class NotATensor:
    pass


def test_torch_file_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    torch.save({"a": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match=r"evil\.pt: not a readable PyTorch"):
        open_source(tmp_path / "evil.pt")


def test_garbage_with_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "x.weights").write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(InputError, match=r"x\.weights: unrecognised checkpoint format"):
        open_source(tmp_path / "x.weights")


def test_sharded_missing_shard(tmp_path: Path) -> None:
    index = write_hf_sharded(tmp_path / "c", sample_state_dict(), "safetensors", SHARDS)
    (tmp_path / "c" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(InputError, match=r"index\.json: shard 'model-00002-of-00003\.safetensors'.*missing"):
        open_source(index)


def test_sharded_key_in_two_shards(tmp_path: Path) -> None:
    state = sample_state_dict()
    index = write_hf_sharded(tmp_path / "c", state, "safetensors", SHARDS)
    save_file({"proj": state["proj"], "scale": state["scale"], "mask": state["mask"]},
              tmp_path / "c" / "model-00002-of-00003.safetensors")
    with pytest.raises(InputError, match=r"index\.json: tensor 'mask' is in two shards"):
        open_source(index)


def test_sharded_index_points_to_shard_lacking_key(tmp_path: Path) -> None:
    state = sample_state_dict()
    index = write_hf_sharded(tmp_path / "c", state, "bin", SHARDS)
    torch.save({"proj": state["proj"]}, tmp_path / "c" / "pytorch_model-00002-of-00003.bin")
    with pytest.raises(InputError, match=r"index\.json: the index puts 'scale' in shard .*which lacks it"):
        open_source(index)


def test_sharded_index_with_duplicate_key_or_bad_json(tmp_path: Path) -> None:
    index = write_hf_sharded(tmp_path / "c", sample_state_dict(), "safetensors", SHARDS)
    text = index.read_text()
    index.write_text(text.replace('"weight_map": {', '"weight_map": {"proj": "model-00001-of-00003.safetensors", '))
    with pytest.raises(InputError, match=r"'proj' appears twice in the index"):
        open_source(index)
    index.write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match=r"index\.json: not a valid JSON index"):
        open_source(index)
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(InputError, match=r"no 'weight_map'"):
        open_source(index)


def test_sharded_truncated_shard_names_shard(tmp_path: Path) -> None:
    index = write_hf_sharded(tmp_path / "c", sample_state_dict(), "safetensors", SHARDS)
    shard = tmp_path / "c" / "model-00003-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(InputError, match=r"model-00003-of-00003\.safetensors: not a readable safetensors"):
        open_source(index)


# ---------------------------------------------------------------- sha256


def test_sha256_of_plain_file_matches_hashlib(tmp_path: Path) -> None:
    data = torch.randint(0, 256, (3 * (1 << 20) + 123,), dtype=torch.uint8).numpy().tobytes()
    (tmp_path / "blob.bin").write_bytes(data)
    assert sha256_file(tmp_path / "blob.bin") == hashlib.sha256(data).hexdigest()


def test_sha256_of_sharded_checkpoint_is_digest_of_sha256sum_manifest(tmp_path: Path) -> None:
    index = write_hf_sharded(tmp_path / "c", sample_state_dict(), "safetensors", SHARDS)
    names = [index.name] + [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    manifest = "".join(f"{hashlib.sha256((tmp_path / 'c' / n).read_bytes()).hexdigest()}  {n}\n" for n in names)
    expected = hashlib.sha256(manifest.encode()).hexdigest()
    assert sha256_file(index) == expected
    assert sha256_file(tmp_path / "c") == expected


def test_sha256_changes_when_a_shard_changes(tmp_path: Path) -> None:
    state = sample_state_dict()
    index = write_hf_sharded(tmp_path / "c", state, "safetensors", SHARDS)
    before = sha256_file(index)
    save_file({"proj": state["proj"] + 1, "scale": state["scale"]}, tmp_path / "c" / "model-00002-of-00003.safetensors")
    assert sha256_file(index) != before


# ---------------------------------------------------------------- writer


def specs_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in sorted(state.items())}


def test_streaming_writer_round_trip_with_metadata(tmp_path: Path) -> None:
    state = sample_state_dict()
    out = tmp_path / "out.safetensors"
    metadata = {"method": "ties", "hparams": json.dumps({"density": 0.2})}
    write_safetensors(out, specs_of(state), ((k, state[k]) for k in sorted(state)), metadata)
    assert_same_state(load_file(out), state)
    with safe_open(out, framework="pt") as handle:
        assert handle.metadata() == metadata
    assert read_metadata(out) == metadata
    header_length = struct.unpack("<Q", out.read_bytes()[:8])[0]
    assert header_length % 8 == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_written_file_has_the_mode_the_umask_gives(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        save_state_dict(tmp_path / "m.safetensors", {"a": torch.zeros(1)})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o640


def test_streaming_writer_accepts_noncontiguous_tensors(tmp_path: Path) -> None:
    base = torch.arange(12.0).reshape(3, 4)
    write_safetensors(tmp_path / "o.safetensors", {"t": ((4, 3), torch.float32)}, [("t", base.T)])
    assert torch.equal(load_file(tmp_path / "o.safetensors")["t"], base.T.contiguous())


def test_exception_mid_stream_leaves_no_file(tmp_path: Path) -> None:
    state = sample_state_dict()

    def failing():
        for i, key in enumerate(sorted(state)):
            if i == 3:
                raise RuntimeError("boom")
            yield key, state[key]

    with pytest.raises(RuntimeError, match="boom"):
        write_safetensors(tmp_path / "out.safetensors", specs_of(state), failing())
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_existing_target_and_success_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "out.safetensors"
    save_file({"old": torch.zeros(1)}, out)
    before = out.read_bytes()
    with pytest.raises(ValueError, match=r"'b' is \(3,\) torch.float32, header says \(2,\)"):
        write_safetensors(out, {"a": ((1,), torch.float32), "b": ((2,), torch.float32)},
                          [("a", torch.ones(1)), ("b", torch.ones(3))])
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]
    write_safetensors(out, {"new": ((2,), torch.float32)}, [("new", torch.ones(2))])
    assert_same_state(load_file(out), {"new": torch.ones(2)})


@pytest.mark.parametrize(
    "stream, message",
    [
        ([("b", torch.ones(1))], r"expected tensor 'a' next, got 'b'"),
        ([("a", torch.ones(1))], r"ended before 'b'"),
        ([("a", torch.ones(1)), ("b", torch.ones(1)), ("c", torch.ones(1))], r"got tensor 'c' after all 2"),
        ([("a", torch.ones(1, dtype=torch.float16))], r"'a' is \(1,\) torch.float16, header says \(1,\) torch.float32"),
    ],
)
def test_writer_rejects_stream_not_matching_header(tmp_path: Path, stream: list, message: str) -> None:
    specs = {"a": ((1,), torch.float32), "b": ((1,), torch.float32)}
    with pytest.raises(ValueError, match=message):
        write_safetensors(tmp_path / "o.safetensors", specs, stream)
    assert list(tmp_path.iterdir()) == []


def test_writer_validates_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metadata must map str -> str"):
        write_safetensors(tmp_path / "o.safetensors", {"a": ((1,), torch.float32)}, [], {"seed": 0})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="cannot store"):
        write_safetensors(tmp_path / "o.safetensors", {"a": ((1,), torch.complex64)}, [])
    with pytest.raises(InputError, match="output folder .* does not exist"):
        write_safetensors(tmp_path / "no" / "o.safetensors", {"a": ((1,), torch.float32)}, [])
    assert list(tmp_path.iterdir()) == []


def test_save_and_load_state_dict(tmp_path: Path) -> None:
    state = sample_state_dict()
    save_state_dict(tmp_path / "s.safetensors", state, {"k": "v"})
    assert_same_state(load_state_dict(tmp_path / "s.safetensors"), state)
    assert read_metadata(tmp_path / "s.safetensors") == {"k": "v"}
