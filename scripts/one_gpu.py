"""Run a command on one GPU that no other `one_gpu.py` process holds: the queue's GPU scheduler.

    python scripts/one_gpu.py python stages/finetune.py ViT-B-32 cars

With `dvc queue start -j N`, N experiments run at once; each stage launched through this
wrapper (params `launch: python scripts/one_gpu.py python`) claims a free GPU by an
exclusive lock on `$WEAVING_GPU_LOCKS/gpu<i>.lock` (default: the system temp folder), runs
with `CUDA_VISIBLE_DEVICES=<i>`, and releases it when the command ends, however it ends.
When all GPUs are taken it waits. GPUs are counted with `nvidia-smi -L`, or given by
`WEAVING_GPUS` (a count). Exits with the command's exit status.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def gpu_count() -> int:
    if "WEAVING_GPUS" in os.environ:
        return int(os.environ["WEAVING_GPUS"])
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def claim(count: int, lock_dir: Path, poll_s: float = 5.0):
    """Block until one of `count` GPU locks is free; return (index, open lock file)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        for index in range(count):
            handle = open(lock_dir / f"gpu{index}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            return index, handle
        if not announced:
            print(f"one_gpu: all {count} GPUs are held; waiting", file=sys.stderr)
            announced = True
        time.sleep(poll_s)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: one_gpu.py COMMAND [ARGS...]", file=sys.stderr)
        return 2
    count = gpu_count()
    if count == 0:
        print("one_gpu: no GPU found (nvidia-smi -L, WEAVING_GPUS); running on what the command picks", file=sys.stderr)
        return subprocess.call(argv)
    lock_dir = Path(os.environ.get("WEAVING_GPU_LOCKS", Path(tempfile.gettempdir()) / "weaving-gpu-locks"))
    index, handle = claim(count, lock_dir)
    try:
        print(f"one_gpu: GPU {index} of {count}", file=sys.stderr)
        return subprocess.call(argv, env={**os.environ, "CUDA_VISIBLE_DEVICES": str(index)})
    finally:
        handle.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
