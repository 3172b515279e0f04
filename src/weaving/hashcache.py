"""A small cache of file digests, so unchanged inputs are not hashed again on every run.

An entry is keyed by the file's absolute path and is valid while the file's size, mtime
and ctime (both in nanoseconds) and inode are those recorded: any write, copy over, rename
onto, ``touch`` or ``chmod`` of the file makes it a miss and the digest is computed again.
The cache is one JSON file (``sha256.json``) in ``cache_dir()``; it keeps the most recently
used ``MAX_ENTRIES`` entries, is rewritten atomically, and a missing, unreadable or corrupt
cache file is treated as empty (it is only ever a shortcut, never a source of truth beyond
the stat fields above).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from weaving.atomic import write_json

CACHE_FILENAME = "sha256.json"
MAX_ENTRIES = 4096


def cache_dir() -> Path:
    """``$WEAVING_CACHE_DIR``, else ``$XDG_CACHE_HOME/weaving``, else ``~/.cache/weaving``."""
    if os.environ.get("WEAVING_CACHE_DIR"):
        return Path(os.environ["WEAVING_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "weaving"


def _stamp(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


class HashCache:
    """Digests of files by (absolute path, size, mtime, ctime, inode); see the module docstring."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(folder if folder is not None else cache_dir()) / CACHE_FILENAME
        self._entries: dict[str, dict[str, object]] = {}
        self._dirty = False
        self.hits = 0
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        if isinstance(loaded, dict):
            self._entries = {k: v for k, v in loaded.items() if isinstance(v, dict)}

    def get(self, file: Path) -> str | None:
        """The recorded digest of ``file`` if it is unchanged since it was recorded."""
        key = str(Path(file).resolve())
        entry = self._entries.get(key)
        if entry is None:
            return None
        stat = os.stat(key)
        digest = entry.get("sha256")
        if entry.get("stamp") != _stamp(stat) or not isinstance(digest, str):
            return None
        entry["used"] = time.time()
        self._dirty = True
        self.hits += 1
        return digest

    def put(self, file: Path, digest: str, stat: os.stat_result) -> None:
        """Record ``digest`` for ``file`` as it was when ``stat`` was taken (before reading it)."""
        if _stamp(os.stat(file)) != _stamp(stat):
            return  # the file changed while it was read: record nothing
        self._entries[str(Path(file).resolve())] = {"stamp": _stamp(stat), "sha256": digest, "used": time.time()}
        self._dirty = True

    def save(self) -> None:
        """Write the cache (at most ``MAX_ENTRIES``, most recently used kept); failures are ignored."""
        if not self._dirty:
            return
        newest = sorted(self._entries.items(), key=lambda item: float(item[1].get("used", 0)), reverse=True)
        try:
            write_json(self.path, dict(newest[:MAX_ENTRIES]))
        except OSError:
            pass  # a read-only home folder must not fail a merge
        self._dirty = False
