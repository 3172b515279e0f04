"""Issue 10 on the pipeline side: load errors name the file, SIGTERM is Ctrl-C, threads are pinned,
temporary files are invisible to DVC."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from weaving.errors import InputError
from weaving_pipeline.stage import load_tensors, stage

ROOT = Path(__file__).resolve().parent.parent


def test_a_truncated_cache_is_named_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "mnist_test.pt"
    torch.save({"images": torch.zeros(4, 3, 8, 8), "labels": torch.zeros(4, dtype=torch.int64)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match=rf"{path}: cannot be read .*remove it and run dvc repro"):
        load_tensors(path)
    with pytest.raises(InputError, match="missing; run the stage that writes it"):
        load_tensors(tmp_path / "absent.pt")


def test_a_stage_turns_sigterm_into_an_interrupt_so_atomic_writers_clean_up(tmp_path: Path) -> None:
    from weaving.atomic import atomic_path

    target = tmp_path / "out.json"
    with pytest.raises(KeyboardInterrupt), stage("test", threads=1), atomic_path(target) as tmp:
        tmp.write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    assert torch.get_num_threads() == 1


def test_a_user_error_in_a_stage_is_one_line_naming_the_file(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info, stage("heads@m", threads=None):
        load_tensors(tmp_path / "gone.pt")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: heads@m: {tmp_path / 'gone.pt'}: missing; run the stage that writes it (dvc repro)"


def test_threads_is_a_validated_param(tmp_path: Path) -> None:
    import yaml

    from weaving_pipeline.params import ParamsError, load_params

    raw = yaml.safe_load((ROOT / "profiles/smoke.yaml").read_text())
    raw["threads"] = 0
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="threads"):
        load_params(path)


def test_dvc_ignores_the_atomic_writers_temporary_names() -> None:
    patterns = (ROOT / ".dvcignore").read_text().split()
    assert ".*.tmp" in patterns and ".*.old" in patterns
