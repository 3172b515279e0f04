"""scripts/one_gpu.py: concurrent commands get distinct GPUs; a third waits for a free one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "one_gpu.py"
REPORT = "import os, sys, time; open(sys.argv[1], 'w').write(os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(float(sys.argv[2]))"


def start(tmp_path: Path, name: str, hold_s: float, gpus: int = 2) -> subprocess.Popen:
    env = {**os.environ, "WEAVING_GPUS": str(gpus), "WEAVING_GPU_LOCKS": str(tmp_path / "locks")}
    return subprocess.Popen([sys.executable, str(SCRIPT), sys.executable, "-c", REPORT, str(tmp_path / name), str(hold_s)],
                            env=env, stderr=subprocess.PIPE, text=True)


def test_concurrent_commands_get_distinct_gpus_and_a_third_waits(tmp_path: Path) -> None:
    first, second = start(tmp_path, "a", 3.0), start(tmp_path, "b", 3.0)
    time.sleep(1.5)
    third = start(tmp_path, "c", 0.0)
    time.sleep(1.0)
    assert not (tmp_path / "c").exists(), "the third command ran while both GPUs were held"
    for process in (first, second, third):
        assert process.wait(timeout=30) == 0
    assert {(tmp_path / "a").read_text(), (tmp_path / "b").read_text()} == {"0", "1"}
    assert (tmp_path / "c").read_text() in {"0", "1"}
    assert "waiting" in third.stderr.read()


def test_exit_status_is_the_commands(tmp_path: Path) -> None:
    env = {**os.environ, "WEAVING_GPUS": "1", "WEAVING_GPU_LOCKS": str(tmp_path)}
    result = subprocess.run([sys.executable, str(SCRIPT), sys.executable, "-c", "raise SystemExit(3)"], env=env)
    assert result.returncode == 3
