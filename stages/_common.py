"""Bootstrap of every stage script: import path, environment, then the pipeline's shared helpers."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # the stages run from a checkout even without `pip install -e`

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Passive OpenMP waiting unless the caller chose: spinning threads slow down manyfold when two
# multi-threaded processes share the cores (`dvc queue start -j 2`). `make repro`, one stage at a time,
# lets them spin briefly instead, which is faster there (Makefile; benchmarks/README.md, "OpenMP waiting").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from weaving_pipeline import paths  # noqa: E402,F401
from weaving_pipeline.stage import (  # noqa: E402,F401
    compute_device,
    fail,
    is_main_process,
    load_tensors,
    save_weights,
    stage,
    stage_params,
)
