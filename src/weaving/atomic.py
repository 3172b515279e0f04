"""Atomic file writes: write beside the target, then rename, so no half-written output survives.

Files written here get the mode a plain ``open(path, "w")`` would give them (0666 less the
umask, so 0644 under the usual umask 022), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def normal_file_mode() -> int:
    """0o666 less the process's umask: the mode ``open(path, "w")`` gives a new file."""
    return 0o666 & ~_umask()


def normal_folder_mode() -> int:
    """0o777 less the process's umask: the mode ``mkdir`` gives a new folder."""
    return 0o777 & ~_umask()


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    On any exception the temporary file (or folder) is removed and ``target`` is untouched.
    A file left at the temporary path gets ``normal_file_mode()`` before the rename.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, normal_file_mode())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_json(target: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (keys in insertion order, newline at the end)."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
