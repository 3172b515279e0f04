"""Issue 10 (items 1, 5's SIGTERM case, 7 and 8) on the command line: the output never
replaces an input, formats are read from content, every message names the right file."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli_fixtures import (
    SUBPROCESS_ENV,
    cli_command,
    leftovers,
    make_models,
    merge_args,
    one_line_error,
    run,
    tmpfs,
    write_sharded,
)
from safetensors.torch import load_file, save_file

import weaving.cli
from weaving import apply_task_vector, merge, task_vectors
from weaving.atomic import write_json
from weaving.errors import InputError
from weaving.io import write_safetensors

torch.set_num_threads(1)


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, list[Path], dict, list[dict]]:
    pretrained, finetuned = make_models()
    save_file(pretrained, tmp_path / "pretrained.safetensors")
    paths = []
    for i, state in enumerate(finetuned):
        save_file(state, tmp_path / f"task{i}.safetensors")
        paths.append(tmp_path / f"task{i}.safetensors")
    return tmp_path / "pretrained.safetensors", paths, pretrained, finetuned


def expected_task_arithmetic(pretrained: dict, finetuned: list[dict]) -> dict:
    return apply_task_vector(pretrained, merge("task_arithmetic", task_vectors(pretrained, finetuned)))


# ---------------------------------------------------------------- item 1: --out is never an input


def test_out_inside_a_folder_input_is_refused(models, tmp_path, capsys) -> None:
    pre, tasks, _, finetuned = models
    folder = tmp_path / "folder_in"
    folder.mkdir()
    save_file(finetuned[0], folder / "model.safetensors")
    before = (folder / "model.safetensors").read_bytes()
    code, _, err = run(merge_args(pre, [folder, tasks[1]], folder / "model.safetensors"), capsys)
    assert code == 2
    line = one_line_error(err)
    assert "is also an input" in line and str(folder) in line
    assert (folder / "model.safetensors").read_bytes() == before


def test_out_onto_a_shard_of_a_sharded_input_is_refused(models, tmp_path, capsys) -> None:
    pre, tasks, _, finetuned = models
    sharded = write_sharded(tmp_path / "sharded", finetuned[0])
    shard = sharded / "model-00001-of-00002.safetensors"
    before = shard.read_bytes()
    for given in (sharded, sharded / "model.safetensors.index.json"):
        code, _, err = run(merge_args(pre, [given, tasks[1]], shard), capsys)
        assert code == 2 and "is also an input" in one_line_error(err)
        assert shard.read_bytes() == before


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_out_linked_to_an_input_is_refused(models, tmp_path, capsys, link: str) -> None:
    pre, tasks, _, _ = models
    out = tmp_path / "out.safetensors"
    (os.symlink if link == "symlink" else os.link)(tasks[2], out)
    before = tasks[2].read_bytes()
    code, _, err = run(merge_args(pre, tasks, out), capsys)
    assert code == 2 and "is also an input" in one_line_error(err)
    assert tasks[2].read_bytes() == before


def test_model_folder_output_holding_an_input_is_refused(models, tmp_path, capsys) -> None:
    pre, tasks, _, finetuned = models
    folder = tmp_path / "in_and_out"
    folder.mkdir()
    save_file(finetuned[0], folder / "model.safetensors")
    code, _, err = run(merge_args(pre, [folder, tasks[1]], f"{folder}/"), capsys)
    assert code == 2 and "holds an input" in one_line_error(err)
    linked = tmp_path / "linked"
    linked.mkdir()
    os.link(tasks[0], linked / "weights.safetensors")
    code, _, err = run(merge_args(pre, tasks, f"{linked}/"), capsys)
    assert code == 2 and "link to an input" in one_line_error(err)
    assert sorted(p.name for p in linked.iterdir()) == ["weights.safetensors"]


# ---------------------------------------------------------------- item 7: formats from content


def test_safetensors_file_named_pt_is_read_as_safetensors(models, tmp_path, capsys) -> None:
    pre, tasks, pretrained, finetuned = models
    renamed = tmp_path / "m.pt"
    renamed.write_bytes(tasks[0].read_bytes())
    out = tmp_path / "out.safetensors"
    code, _, err = run(merge_args(pre, [renamed, *tasks[1:]], out), capsys)
    assert code == 0, err
    expected = expected_task_arithmetic(pretrained, finetuned)
    for key, value in load_file(out).items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_pickle_gets_no_advice_to_disable_weights_only(models, tmp_path, capsys) -> None:
    pre, _, _, _ = models
    evil = tmp_path / "evil.pt"
    torch.save({"enc.weight": Payload()}, evil)
    code, out, err = run(merge_args(pre, [evil], tmp_path / "out.safetensors"), capsys)
    assert code == 1
    line = one_line_error(err)
    assert str(evil) in line and "objects other than tensors" in line
    assert "weights_only" not in line and "pwned" not in out


@pytest.mark.parametrize("content, fragment", [
    ("hello, I am a text file\n", "is a text file (it starts with 'hello, I am a text file')"),
    ("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "git lfs pull"),
    ("<!DOCTYPE html><html><body>502</body></html>", "HTML page"),
])
def test_text_file_named_bin_gets_a_sentence(models, tmp_path, capsys, content: str, fragment: str) -> None:
    pre, _, _, _ = models
    text = tmp_path / "pytorch_model.bin"
    text.write_text(content)
    code, _, err = run(merge_args(pre, [text], tmp_path / "out.safetensors"), capsys)
    assert code == 1
    line = one_line_error(err)
    assert f"{text}: unrecognised checkpoint format: it " in line and fragment in line
    assert "101" not in line.replace(str(text), "")  # the message's own words; pytest's tmp path may hold "101"


# ---------------------------------------------------------------- item 8: messages name the output


def _forbid_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("inputs were hashed before the output was checked")

    monkeypatch.setattr(weaving.cli, "sha256_files", refuse)


def test_read_only_output_folder_is_named_before_hashing(models, tmp_path, capsys, monkeypatch) -> None:
    pre, tasks, _, _ = models
    _forbid_hashing(monkeypatch)
    folder = tmp_path / "readonly"
    if os.geteuid() == 0:
        context = tmpfs(folder, "ro", "size=1m")
    else:
        folder.mkdir()
        folder.chmod(0o555)
        context = __import__("contextlib").nullcontext(folder)
    with context:
        for out in (folder / "merged.safetensors", f"{folder}/model/"):
            code, _, err = run(merge_args(pre, tasks, out), capsys)
            assert code == 1
            line = one_line_error(err)
            assert line.startswith(f"weaving: error: {str(out).rstrip('/')}: cannot write the output in {folder}")
            assert ".tmp" not in line and ".probe" not in line


def test_disk_full_is_named_before_any_work(models, tmp_path, capsys, monkeypatch) -> None:
    pre, tasks, _, _ = models
    _forbid_hashing(monkeypatch)
    with tmpfs(tmp_path / "small", "size=64k") as small:
        out = small / "merged.safetensors"
        code, _, err = run(merge_args(pre, tasks, out), capsys)
        assert code == 1
        line = one_line_error(err)
        assert line.startswith(f"weaving: error: {out}: no space left on the device of {small}")
        assert list(small.iterdir()) == []


def test_disk_full_while_writing_names_the_output(tmp_path) -> None:
    with tmpfs(tmp_path / "small", "size=64k") as small:
        out = small / "big.safetensors"
        specs = {"a": ((64, 1024), torch.float32)}  # 256 KiB: more than the device holds
        with pytest.raises(InputError, match=rf"^{out}: no space left on the device of {small}"):
            write_safetensors(out, specs, [("a", torch.zeros(64, 1024))])
        assert list(small.iterdir()) == []


# ---------------------------------------------------------------- item 8: file modes


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_get_the_modes_the_umask_gives(models, tmp_path, capsys, umask, file_mode, folder_mode) -> None:
    pre, tasks, _, _ = models
    previous = os.umask(umask)
    try:
        code, _, err = run(merge_args(pre, tasks, tmp_path / "one.safetensors"), capsys)
        assert code == 0, err
        code, _, err = run(merge_args(pre, tasks, f"{tmp_path / 'folder'}/"), capsys)
        assert code == 0, err
        write_json(tmp_path / "record.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "one.safetensors").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "record.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == folder_mode
    for file in (tmp_path / "folder").iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == file_mode, file.name


# ---------------------------------------------------------------- item 5: SIGTERM like Ctrl-C


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_weave_materialize_leaves_no_temporary_file(tmp_path, sig, code) -> None:
    """As ``timeout -s TERM`` does: the signal arrives while the output is being written."""
    shapes = {f"k{i:02d}": (512, 512) for i in range(12)}
    pretrained, finetuned = make_models(shapes=shapes)
    save_file(pretrained, tmp_path / "p.safetensors")
    for i, state in enumerate(finetuned):
        save_file(state, tmp_path / f"t{i}.safetensors")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["weave", "--pretrained", tmp_path / "p.safetensors", "--finetuned",
            *[tmp_path / f"t{i}.safetensors" for i in range(3)], "--method", "ties", "--lambdas", "0.05:2:0.05",
            "--materialize", "--out", out_dir / "woven.safetensors", "--quiet"]
    process = subprocess.Popen(cli_command() + [str(a) for a in argv], env={**SUBPROCESS_ENV, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    def writing() -> bool:
        return any(name.endswith(".tmp") for name in leftovers(out_dir))

    while not writing() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None and writing(), "the output was not being written"
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "no output written" in err and "Traceback" not in err
    assert list(out_dir.iterdir()) == []


def test_sigterm_handler_is_restored_after_main(models, tmp_path, capsys) -> None:
    before = signal.getsignal(signal.SIGTERM)
    pre, tasks, _, _ = models
    assert run(merge_args(pre, tasks, tmp_path / "o.safetensors"), capsys)[0] == 0
    assert signal.getsignal(signal.SIGTERM) is before
    assert json.loads(weaving.io.read_metadata(tmp_path / "o.safetensors")["hparams"]) == {}


@pytest.mark.parametrize("out_name", ["merged.safetensors", "folder/"])
def test_a_killed_runs_temporaries_beside_the_output_are_removed_by_the_next_run(models, tmp_path, capsys,
                                                                                 out_name) -> None:
    """Issue 10, item 5: kill -9 during a write leaves `.<name>.*.tmp`; the next write of that output
    deletes it. Temporaries of other names, and fresh ones (a concurrent write), are kept."""
    pre, tasks, pretrained, finetuned = models
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    name = out_name.rstrip("/")
    stale_file, stale_folder = out_dir / f".{name}.k1ll3d.tmp", out_dir / f".{name}.x9.tmp"
    stale_file.write_bytes(b"half a tensor")
    (stale_folder / "shard").mkdir(parents=True)
    other, fresh = out_dir / ".other.safetensors.a1.tmp", out_dir / f".{name}.fresh.tmp"
    other.write_bytes(b"not ours")
    an_hour_ago = time.time() - 3600
    for path in (stale_file, stale_folder, other):
        os.utime(path, (an_hour_ago, an_hour_ago))
    out = str(out_dir / name) + ("/" if out_name.endswith("/") else "")
    fresh_written = False
    if not out_name.endswith("/"):
        fresh.write_bytes(b"being written right now")
        fresh_written = True
    assert run(merge_args(pre, tasks, out), capsys)[0] == 0
    assert not stale_file.exists() and not stale_folder.exists()
    assert other.exists() and fresh.exists() == fresh_written
