"""Verified downloads: HTTP(S) with resume, sha256 (or md5) verification, clear offline errors.

A transfer goes to ``<file>.part``; an interrupted transfer resumes from the bytes already
there with an HTTP ``Range`` request (a server that ignores it restarts the file). Only a
file whose digest matches is renamed to its final name; a mismatch deletes the ``.part`` and
raises. An artifact without any published digest is refused unless the caller passes
``trust_first_download=True``: its sha256 is then recorded in ``TRUSTED_SHA256.json`` beside
it and enforced from then on.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from weaving.datasets.base import DatasetError

TRUST_FILE = "TRUSTED_SHA256.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Artifact:
    """One file of a dataset source: where to get it and how to check it."""

    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None = None
    md5: str | None = None
    extract: bool = False

    def describe(self) -> str:
        digest = f"sha256 {self.sha256}" if self.sha256 else (f"md5 {self.md5}" if self.md5 else "no published digest")
        size = f", {self.size:,} bytes" if self.size else ""
        return f"{self.filename} ({digest}{size}) from {self.urls[0]}"


class DownloadError(DatasetError):
    """A download failed or its bytes did not verify."""


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _trusted(dest_dir: Path) -> dict[str, str]:
    try:
        return json.loads((dest_dir / TRUST_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _record_trust(dest_dir: Path, filename: str, sha256: str) -> None:
    table = _trusted(dest_dir)
    table[filename] = sha256
    tmp = dest_dir / f".{TRUST_FILE}.tmp"
    tmp.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, dest_dir / TRUST_FILE)


def expected_sha256(artifact: Artifact, dest_dir: Path) -> str | None:
    """The sha256 to enforce: the published one, else one recorded by a trusted first download."""
    return artifact.sha256 or _trusted(dest_dir).get(artifact.filename)


def verify(path: Path, artifact: Artifact, dataset: str) -> str:
    """Check ``path`` against the artifact's digests; return its sha256 or raise naming both digests."""
    sha, md5 = _digests(path)
    expected = expected_sha256(artifact, path.parent)
    if expected and sha != expected.lower():
        raise DownloadError(f"{dataset}: {path} has sha256 {sha}, expected {expected} ({artifact.urls[0]})")
    if artifact.md5 and md5 != artifact.md5.lower():
        raise DownloadError(f"{dataset}: {path} has md5 {md5}, expected {artifact.md5} ({artifact.urls[0]})")
    return sha


def _manual_hint(artifact: Artifact, target: Path) -> str:
    return (f"download {artifact.urls[0]} by hand (see src/weaving/datasets/SOURCES.md) and put it at {target}")


def _transfer(url: str, part: Path, total: int | None, dataset: str, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (Range from its current size). Raises OSError/URLError on failure."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "weaving-datasets/1"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the .part already holds the whole file
            return
        raise
    with response:
        status = getattr(response, "status", 200)
        if have and status != 206:
            have = 0  # the server ignored the Range request: start over
        length = response.headers.get("Content-Length")
        size = total or (int(length) + have if length is not None else None)
        with open(part, "ab" if have else "wb") as handle, tqdm(
            total=size, initial=have, unit="B", unit_scale=True, desc=f"{dataset}: {part.name[:-5]}",
            disable=not progress, leave=False,
        ) as bar:
            while block := response.read(CHUNK):
                handle.write(block)
                bar.update(len(block))
        if length is not None and part.stat().st_size < have + int(length):
            raise ConnectionError(f"connection closed after {part.stat().st_size} of {have + int(length)} bytes")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _fetch(artifact: Artifact, part: Path, target: Path, *, dataset: str, timeout: float, progress: bool,
           max_attempts: int) -> None:
    """Fill ``part`` from the first URL that works; retry (resuming) while attempts make progress."""
    errors: list[str] = []
    for url in artifact.urls:
        for _ in range(max_attempts):
            before = _size(part)
            try:
                _transfer(url, part, artifact.size, dataset, timeout, progress)
                return
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                errors.append(f"{url}: {getattr(error, 'reason', None) or error!r}")
                if _size(part) <= before:  # no progress (offline, refused, 404): next URL, do not hammer
                    break
    raise DownloadError(f"{dataset}: cannot download {artifact.filename} ({'; '.join(errors)}); "
                        + _manual_hint(artifact, target) + (f"; the partial {part.name} is kept for resuming"
                                                            if part.exists() else ""))


def download(artifact: Artifact, dest_dir: str | Path, *, dataset: str, trust_first_download: bool = False,
             progress: bool = True, timeout: float = 20.0, max_attempts: int = 5) -> Path:
    """Fetch ``artifact`` into ``dest_dir`` (resuming a ``.part``), verify it, return its final path.

    An existing final file is verified and kept. Attempts that transfer bytes are retried (with
    resume) up to ``max_attempts``; a connection that cannot be opened at all fails at once with
    a message naming the dataset, the URL, and where to put a hand-downloaded copy.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / artifact.filename
    if target.exists():
        try:
            verify(target, artifact, dataset)
        except DownloadError as error:
            raise DownloadError(f"{error}; the existing file was left in place: delete or replace it") from None
        return target
    if not (artifact.sha256 or artifact.md5 or expected_sha256(artifact, dest_dir) or trust_first_download):
        raise DownloadError(
            f"{dataset}: {artifact.filename} has no published checksum, so a download cannot be verified; "
            f"pass trust_first_download=True to accept and record the first download's sha256, or "
            + _manual_hint(artifact, target))
    part = dest_dir / f"{artifact.filename}.part"
    _fetch(artifact, part, target, dataset=dataset, timeout=timeout, progress=progress, max_attempts=max_attempts)
    try:
        sha = verify(part, artifact, dataset)
    except DownloadError as error:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{error}; the corrupted download was deleted") from None
    if artifact.size is not None and part.stat().st_size != artifact.size:
        size = part.stat().st_size
        part.unlink(missing_ok=True)
        raise DownloadError(f"{dataset}: {artifact.filename} has {size} bytes, expected {artifact.size}; "
                            "the corrupted download was deleted")
    if not (artifact.sha256 or artifact.md5 or expected_sha256(artifact, dest_dir)):
        _record_trust(dest_dir, artifact.filename, sha)
    os.replace(part, target)
    return target
