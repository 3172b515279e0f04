"""Small checkpoints and helpers shared by the command-line tests (test_cli_*.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from weaving.cli import main

SHAPES = {"enc.weight": (6, 5), "enc.bias": (6,), "head.weight": (4, 6), "zz_last.weight": (3, 4)}
SRC = Path(__file__).resolve().parents[1] / "src"
SUBPROCESS_ENV = {**os.environ, "HF_HUB_OFFLINE": "1",
                  "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(SRC)) if p)}


def make_models(seed: int = 0, tasks: int = 3, shapes: dict[str, tuple[int, ...]] | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """A pretrained state dict (plus an int64 buffer) and ``tasks`` fine-tuned ones near it."""
    g = torch.Generator().manual_seed(seed)
    pretrained = {key: torch.randn(shape, generator=g).to(dtype) for key, shape in (shapes or SHAPES).items()}
    pretrained["position_ids"] = torch.arange(7, dtype=torch.int64).reshape(1, 7)
    finetuned = [
        {k: (v + 0.1 * torch.randn(v.shape, generator=g).to(dtype)) if v.is_floating_point() else v.clone()
         for k, v in pretrained.items()}
        for _ in range(tasks)
    ]
    return pretrained, finetuned


def weave_files(tmp_path: Path, seed: int) -> tuple[list[str], dict[str, torch.Tensor],
                                                     list[dict[str, torch.Tensor]], Path]:
    """`make_models(seed)` saved as safetensors: the `weaving weave` arguments naming them (without a method),
    the models, and the output path."""
    pretrained, finetuned = make_models(seed=seed)
    save_file(pretrained, tmp_path / "pre.safetensors")
    for i, sd in enumerate(finetuned):
        save_file(sd, tmp_path / f"ft{i}.safetensors")
    out = tmp_path / "out.safetensors"
    argv = ["weave", "--pretrained", str(tmp_path / "pre.safetensors"), "--finetuned",
            *(str(tmp_path / f"ft{i}.safetensors") for i in range(len(finetuned))), "--out", str(out), "--quiet"]
    return argv, pretrained, finetuned, out


def write_sharded(folder: Path, state: dict[str, torch.Tensor], parts: int = 2) -> Path:
    """``state`` as Hugging Face shards ``model-0000i-of-0000n.safetensors`` plus the index."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    size = -(-len(keys) // parts)
    weight_map = {}
    for i in range(parts):
        name = f"model-{i + 1:05d}-of-{parts:05d}.safetensors"
        chunk = keys[i * size:(i + 1) * size]
        save_file({k: state[k] for k in chunk}, folder / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in chunk})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("weaving: error: "), err
    assert "Traceback" not in err
    return lines[0]


def merge_args(pretrained: Path | str, finetuned: list[Path | str], out: Path | str, method: str = "task_arithmetic",
               *extra: str) -> list[str]:
    return ["merge", "--pretrained", str(pretrained), "--finetuned", *map(str, finetuned), "--method", method,
            "--out", str(out), "--quiet", *extra]


def cli_command() -> list[str]:
    return [sys.executable, "-m", "weaving.cli"]


@contextlib.contextmanager
def tmpfs(folder: Path, *options: str) -> Iterator[Path]:
    """A small tmpfs mounted on ``folder`` (root only); skips the test where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files or folders weaving may have left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))
