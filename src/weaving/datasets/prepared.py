"""The prepared-dataset folder (docs/contracts.md, "Prepared dataset on disk"): write and load.

``<dir>/meta.json`` plus one file per split:

- ``format: "npz"``: ``<split>.npz`` with ``images`` uint8 ``[N, H, W, C]``, ``labels`` int64
  ``[N]`` and ``ids`` (str ``[N]``, where each image came from in its source);
- ``format: "files"``: ``<split>.csv`` with columns ``path`` (relative to ``meta["root"]``,
  itself relative to the folder unless absolute) and ``label``; the images are hard links
  (copies where links fail) under ``<dir>/images/``.

The whole folder is built in a temporary sibling and renamed into place, so a failed run
leaves the previous folder (or nothing) behind, never a half-written one.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weaving.atomic import atomic_dir
from weaving.datasets.base import DatasetError

FORMATS = ("npz", "files")
FILES_ROOT = "images"


@dataclass(frozen=True)
class FileSplitPayload:
    """One split of a ``files`` dataset: ``source_root / paths[i]`` becomes ``images/paths[i]``."""

    paths: list[str]
    labels: np.ndarray
    source_root: Path


@dataclass(frozen=True)
class ArraySplitPayload:
    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_npz(path: Path, payload: ArraySplitPayload) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, images=payload.images, labels=payload.labels.astype(np.int64),
                 ids=np.asarray(payload.ids, dtype=str))


def _write_csv(folder: Path, split: str, payload: FileSplitPayload, progress: bool) -> None:
    from tqdm import tqdm

    with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for rel, label in tqdm(list(zip(payload.paths, payload.labels)), desc=f"link {split} images",
                               unit="img", disable=not progress, leave=False):
            src = payload.source_root / rel
            if not src.is_file():
                raise DatasetError(f"image listed for split {split!r} is missing: {src}")
            _link_or_copy(src, folder / FILES_ROOT / rel)
            writer.writerow([rel, int(label)])


def write_prepared(out_dir: str | Path, meta: dict,
                   splits: dict[str, ArraySplitPayload | FileSplitPayload], progress: bool = False) -> None:
    """Write ``meta`` and every split into ``out_dir``, replacing it only once everything is written."""
    with atomic_dir(out_dir) as staging:
        for split, payload in splits.items():
            if isinstance(payload, ArraySplitPayload):
                _write_npz(staging / f"{split}.npz", payload)
            else:
                _write_csv(staging, split, payload, progress)
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


class SplitData:
    """One prepared split: ``len()``, ``labels`` (int64), ``uint8_images()`` (npz), ``pil(i)`` (both)."""

    def __init__(self, dataset: PreparedDataset, name: str) -> None:
        self.dataset = dataset
        self.name = name
        self._images: np.ndarray | None = None
        fmt = dataset.format
        if fmt == "npz":
            self.file = dataset.path / f"{name}.npz"
            if not self.file.is_file():
                raise DatasetError(f"{dataset.path}: split {name!r} file {self.file.name} is missing")
            with np.load(self.file, allow_pickle=False) as data:
                for key in ("images", "labels"):
                    if key not in data:
                        raise DatasetError(f"{self.file}: no array {key!r} (keys: {sorted(data.files)})")
                self.labels = np.asarray(data["labels"], dtype=np.int64)
                self.ids = np.asarray(data["ids"]) if "ids" in data else None
            self.paths: list[str] | None = None
        else:
            self.file = dataset.path / f"{name}.csv"
            if not self.file.is_file():
                raise DatasetError(f"{dataset.path}: split {name!r} file {self.file.name} is missing")
            with open(self.file, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
                    raise DatasetError(f"{self.file}: needs columns 'path' and 'label', has {reader.fieldnames}")
                rows = list(reader)
            self.paths = [row["path"] for row in rows]
            self.labels = np.asarray([int(row["label"]) for row in rows], dtype=np.int64)
            self.ids = np.asarray(self.paths, dtype=str)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"SplitData({self.dataset.name!r}, {self.name!r}, n={len(self)})"

    def uint8_images(self) -> np.ndarray:
        """All images as uint8 ``[N, H, W, C]`` (``npz`` format only; loaded once, then cached)."""
        if self.dataset.format != "npz":
            raise DatasetError(f"{self.dataset.name}: uint8_images() needs the npz format; this dataset is "
                               f"'{self.dataset.format}' (images of varying sizes): use pil(i)")
        if self._images is None:
            with np.load(self.file, allow_pickle=False) as data:
                self._images = np.asarray(data["images"])
        return self._images

    def image_path(self, i: int) -> Path:
        """The file of image ``i`` (``files`` format only)."""
        if self.paths is None:
            raise DatasetError(f"{self.dataset.name}: image_path() needs the files format")
        return self.dataset.root / self.paths[i]

    def pil(self, i: int):
        """Image ``i`` as an RGB ``PIL.Image``."""
        from PIL import Image

        if not -len(self) <= i < len(self):
            raise IndexError(f"{self!r}: index {i} out of range")
        if self.paths is None:
            array = self.uint8_images()[i]
            return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).convert("RGB")
        with Image.open(self.image_path(i)) as image:
            return image.convert("RGB")


class PreparedDataset:
    """A prepared dataset folder: ``name``, ``classnames``, ``templates``, ``num_classes``, ``meta``, ``split(name)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DatasetError(f"{self.path}: not a prepared dataset (no meta.json); run the data stage first")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DatasetError(f"{meta_path}: invalid JSON ({error})") from None
        missing = [k for k in ("name", "classnames", "templates", "num_classes", "splits", "format") if k not in self.meta]
        if missing:
            raise DatasetError(f"{meta_path}: missing keys {missing}")
        if self.meta["format"] not in FORMATS:
            raise DatasetError(f"{meta_path}: format {self.meta['format']!r} is not one of {list(FORMATS)}")
        self.name: str = self.meta["name"]
        self.classnames: list[str] = list(self.meta["classnames"])
        self.templates: list[str] = list(self.meta["templates"])
        self.num_classes: int = int(self.meta["num_classes"])
        self.format: str = self.meta["format"]
        root = Path(self.meta.get("root", FILES_ROOT))
        self.root = root if root.is_absolute() else self.path / root
        self._splits: dict[str, SplitData] = {}

    def __repr__(self) -> str:
        return f"PreparedDataset({self.name!r}, {self.format}, splits={self.meta['splits']})"

    @property
    def split_names(self) -> list[str]:
        return list(self.meta["splits"])

    def split(self, name: str) -> SplitData:
        if name not in self.meta["splits"]:
            raise DatasetError(f"{self.name}: no split {name!r}; available: {', '.join(self.split_names)}")
        if name not in self._splits:
            self._splits[name] = SplitData(self, name)
        return self._splits[name]


def load_prepared(path: str | Path) -> PreparedDataset:
    """Open a folder written by ``prepare``."""
    return PreparedDataset(path)

