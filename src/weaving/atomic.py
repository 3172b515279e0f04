"""Atomic file and folder writes: build beside the target, then rename, so no half-written output survives.

Every file the project writes goes through here. Temporary names start with a dot and end in
`.tmp` (files and folders being built) or `.old` (a replaced folder being deleted), beside the
target; `.gitignore` and `.dvcignore` cover them, and `remove_leftovers` deletes those of an
earlier, killed run. Files and folders get the modes a plain ``open(path, "w")`` and ``mkdir``
would give them (0644 and 0755 under the usual umask 022), not ``mkstemp``'s private 0600/0700.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_STARTED = time.time()


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``target`` (``.<name>.*.tmp`` / ``.old`` beside it) that a killed
    earlier run left: only those last modified before this process started, so a write of the
    same target still under way in another process keeps its file."""
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.glob(f".{glob_escape(target.name)}.*"):
        if not entry.name.endswith((".tmp", ".old")):
            continue
        try:
            if entry.lstat().st_mtime >= _STARTED:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except FileNotFoundError:
            continue
        removed.append(entry)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with the glob metacharacters ``*?[`` matched literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


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
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    On any exception the temporary file is removed and ``target`` is untouched. The file gets
    ``normal_file_mode()`` before the rename. Temporaries of ``target`` left by a killed earlier
    run are deleted first (``remove_stale_temporaries``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
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


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; on success it replaces ``target`` whole.

    A previous ``target`` is moved aside first and deleted after the swap, so readers see the
    old folder or the new one, never a mix. On any exception the staging folder is removed.
    Staging and trash folders of ``target`` left by a killed earlier run are deleted first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, normal_folder_mode())
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, trash / target.name)
            os.replace(staging, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``target``, then rename it onto ``target``."""
    with atomic_path(target) as tmp:
        write(tmp)


def write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (keys in insertion order, newline at the end)."""
    atomic_write(target, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8"))


def save_torch(target: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` atomically."""
    import torch

    atomic_write(target, lambda tmp: torch.save(obj, tmp))


def save_safetensors(target: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (made contiguous, on CPU) as safetensors atomically."""
    from safetensors.torch import save_file

    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(target, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders (``.*.tmp``, ``.*.old``) a killed run left in ``folder``."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith((".tmp", ".old")):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
    return removed
