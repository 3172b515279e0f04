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


def already_extracted(archive: Path, dest: Path) -> bool:
    marker = _marker(dest, archive)
    try:
        return json.loads(marker.read_text()) == _stamp(archive)
    except (OSError, ValueError):
        return False


def extract(archive: Path, dest: Path, progress: bool = False) -> None:
    """Unpack ``archive`` into ``dest`` (skipped when its marker matches), refusing unsafe members."""
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
    tmp.write_text(json.dumps(_stamp(archive)))
    os.replace(tmp, marker)

