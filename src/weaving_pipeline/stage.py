"""What every stage script shares: params validation, clean errors, a one-line summary."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from weaving.errors import WeavingError
from weaving_pipeline.params import Params, ParamsError, load_params


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def stage_params(choices: dict[str, list[str]] | None = None, argv: list[str] | None = None) -> tuple[Params, list[str]]:
    """Validate ``params.yaml`` and the stage's positional arguments against ``choices``.

    ``choices`` maps each positional argument's name to its valid values (taken from params).
    """
    try:
        params = load_params("params.yaml")
    except ParamsError as error:
        fail(str(error))
    args = list(sys.argv[1:] if argv is None else argv)
    names = list(choices or {})
    if len(args) != len(names):
        fail(f"{Path(sys.argv[0]).name} takes {len(names)} argument(s) <{'> <'.join(names)}>, got {args}")
    for name, value in zip(names, args):
        valid = choices[name](params) if callable(choices[name]) else choices[name]
        if value not in valid:
            fail(f"{name} {value!r} is not in params.yaml; valid: {list(valid)}")
    return params, args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def stage(name: str, threads: int | None = None) -> Iterator[None]:
    """Run a stage body: user errors become one clean line and exit 1; a summary line at the end.

    SIGTERM is handled like Ctrl-C (the atomic writers remove their temporary files on the way
    out); `threads` pins torch's intra-op thread count (the `threads` param), so a run gives the
    same numbers whatever the machine's default.
    """
    import signal

    previous = signal.signal(signal.SIGTERM, _interrupt)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        yield
    except WeavingError as error:  # ParamsError included
        fail(f"{name}: {error}", code=1)
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        fail(f"{name}: {where}{error.strerror or error}", code=1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"[{name}] done in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def is_main_process() -> bool:
    """False in the extra workers that `torchrun` starts (only rank 0 writes outputs)."""
    return int(os.environ.get("RANK", "0")) == 0


def load_tensors(path: str | Path) -> dict:
    """A `torch.save`d dict of tensors (the test caches), read with `weights_only=True`; any failure
    to read it is an `InputError` naming the file and saying how to rebuild it."""
    import torch

    from weaving.errors import InputError

    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: missing; run the stage that writes it (dvc repro)") from None
    except Exception as error:  # noqa: BLE001 (a truncated or foreign file raises many kinds)
        raise InputError(f"{path}: cannot be read ({type(error).__name__}: {error}); "
                         "it is damaged: remove it and run dvc repro") from None


def save_weights(path: str | Path, state_dict: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a stage's safetensors output atomically, creating its folder (DVC removed it before the run)."""
    from weaving.io import save_state_dict

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(path, state_dict, metadata=metadata)


def compute_device() -> str:
    """Where a stage runs its forward passes: this process's GPU when there is one, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"
