"""Safe, resumable-by-marker extraction of downloaded archives (tar, tar.gz/tgz, zip).

Members with absolute paths, ``..`` components, links or device files are refused before
anything is written. A finished extraction leaves ``.extracted/<archive>.done`` holding the
archive's size and mtime, so a second ``prepare`` does not unpack it again.
"""

from __future__ import annotations

import json
import os
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from weaving.datasets.base import DatasetError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise DatasetError(f"{archive}: refusing to extract member {name!r} (absolute path or '..')")


def _marker(dest: Path, archive: Path) -> Path:
    return dest / ".extracted" / f"{archive.name}.done"


def _stamp(archive: Path) -> dict:
    stat = archive.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_marker(archive: Path, dest: Path) -> dict | None:
    try:
        record = json.loads(_marker(dest, archive).read_text())
    except (OSError, ValueError):
        return None
    stamp = _stamp(archive)
    return record if all(record.get(k) == v for k, v in stamp.items()) else None


def already_extracted(archive: Path, dest: Path) -> bool:
    return _read_marker(archive, dest) is not None


def recorded_sha256(archive: Path, dest: Path) -> str | None:
    """The sha256 noted when ``archive`` (unchanged since) was unpacked into ``dest``, if any."""
    record = _read_marker(archive, dest)
    return record.get("sha256") if record else None


def extract(archive: Path, dest: Path, progress: bool = False, sha256: str | None = None) -> None:
    """Unpack ``archive`` into ``dest`` (skipped when its marker matches), refusing unsafe members.

    ``sha256``, the archive's verified digest, is kept in the marker for meta.json.
    """
    from tqdm import tqdm

    if already_extracted(archive, dest):
        return
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive) as handle:
                infos = handle.infolist()
                for info in infos:
                    _check_member(archive, info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise DatasetError(f"{archive}: refusing to extract symbolic link {info.filename!r}")
                for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False):
                    handle.extract(info, dest)
        else:
            with tarfile.open(archive, "r:*") as handle:
                members = []
                for member in tqdm(handle, desc=f"scan {archive.name}", unit="file", disable=not progress, leave=False):
                    _check_member(archive, member.name)
                    if not (member.isfile() or member.isdir()):
                        raise DatasetError(f"{archive}: refusing to extract {member.name!r} (link or special file)")
                    members.append(member)
                for member in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=not progress, leave=False):
                    handle.extract(member, dest, set_attrs=False, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise DatasetError(f"{archive}: cannot extract ({type(error).__name__}: {error}); the file may be truncated "
                           "or corrupted: delete it and download it again") from None
    marker = _marker(dest, archive)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({**_stamp(archive), "sha256": sha256}))
    os.replace(tmp, marker)

