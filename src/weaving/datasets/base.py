"""Shared pieces of the dataset package: the error type, in-memory image pools, file helpers.

A reader turns one source (installed package folder, raw download folder) into a
``RawDataset``: one pool per *official* split (``train``, ``test``, sometimes ``val``),
each pool either an ``ArrayPool`` (decoded on demand into uint8 ``[n, H, W, C]``) or a
``FilePool`` (image files on disk, paths relative to a root folder).
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weaving.errors import WeavingError


class DatasetError(WeavingError):
    """A dataset cannot be found, downloaded, verified, parsed or prepared; the message says which and why."""


@dataclass(frozen=True)
class ArrayPool:
    """Images of one official split, decoded on demand: ``load(indices) -> uint8 [n, H, W, C]``.

    ``ids[i]`` names image ``i`` within its source (``"train/123"``, ``"brick@y=10,x=20"``),
    so that the prepared splits can be audited for disjointness.
    """

    labels: np.ndarray
    load: Callable[[np.ndarray], np.ndarray]
    ids: np.ndarray

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.ids):
            raise ValueError(f"ArrayPool: {len(self.labels)} labels but {len(self.ids)} ids")


@dataclass(frozen=True)
class FilePool:
    """Images of one official split as files: ``root / paths[i]`` has label ``labels[i]``."""

    labels: np.ndarray
    paths: list[str]
    root: Path

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.paths):
            raise ValueError(f"FilePool: {len(self.labels)} labels but {len(self.paths)} paths")

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(self.paths, dtype=str)


Pool = ArrayPool | FilePool


@dataclass
class RawDataset:
    """What a reader found: official splits, the files it read (hashed into meta.json), how it split."""

    pools: dict[str, Pool]
    source_files: dict[str, Path]
    archive_classnames: list[str] | None = None
    notes: dict[str, str] = field(default_factory=dict)


def int64_labels(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def array_pool(images: np.ndarray, labels: np.ndarray, split: str) -> ArrayPool:
    """An ``ArrayPool`` over images already in memory (uint8 ``[N, H, W, C]``)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"array_pool({split}): expected uint8 [N,H,W,C], got {images.dtype} {images.shape}")
    ids = np.char.add(f"{split}/", np.arange(len(images)).astype(str))
    return ArrayPool(labels=int64_labels(labels), load=lambda idx: images[np.asarray(idx, dtype=np.int64)], ids=ids)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, origin: str) -> np.ndarray:
    """Decode an IDX file (MNIST format): magic ``0 0 dtype ndim``, big-endian uint32 dims, data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{origin}: not an IDX file (bad magic {data[:4].hex()})")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_DTYPES:
        raise DatasetError(f"{origin}: unknown IDX dtype code 0x{dtype_code:02x}")
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetError(f"{origin}: IDX header says {dims} ({expected} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, gunzipping ``*.gz``."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DatasetError(f"{path}: not a valid gzip file ({error})") from None
    return parse_idx(raw, str(path))


def idx_split(images_path: Path, labels_path: Path, split: str) -> ArrayPool:
    """An ``ArrayPool`` from an IDX image file ``[N, H, W]`` and its IDX label file ``[N]``."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{images_path} / {labels_path}: expected images [N,H,W] and labels [N], "
                           f"got {images.shape} and {labels.shape}")
    return array_pool(np.ascontiguousarray(images[..., None], dtype=np.uint8), labels, split)
