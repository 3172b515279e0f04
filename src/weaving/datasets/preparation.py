"""``prepare``: resolve a dataset's source, split it, subsample it to the limits, write it.

Splits (all disjoint; sizes and every choice recorded in meta.json):

- embedded profile: ``val``, ``train`` and ``pretrain`` are consecutive segments, in that
  priority, of one seeded stratified order of the official train split (a ``None`` limit
  takes all that remain; limits are caps, so a small source fills ``train`` before
  ``pretrain``); ``test`` is a seeded stratified subsample of the official test split.
  A source with an official val split subsamples ``val`` from it instead.
- paper profile: ``pretrain`` is empty; ``val`` is the official val split where the
  literature has one (EuroSAT), else the task-vector rule (10 % of train, at most 5,000,
  ``torch.randperm`` with seed 0) and ``train`` is the rest; each split is then capped by
  its limit with a seeded stratified subsample.

Within a split, images keep their source order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from weaving.datasets.archives import recorded_sha256
from weaving.datasets.base import ArrayPool, DatasetError, FilePool, Pool, RawDataset, sha256_file
from weaving.datasets.metadata import ClassMetadata, load_metadata
from weaving.datasets.prepared import FILES_ROOT, ArraySplitPayload, FileSplitPayload, write_prepared
from weaving.datasets.registry import DatasetSpec, get_spec, resolve
from weaving.datasets.splits import SPLITS, literature_val_split, rng_for, stratified_order, take_segments

PROFILES = ("embedded", "paper")
FORMAT_VERSION = 1
_STREAM = {"embedded_train_pool": 1, "test": 2, "val": 3, "train": 4}


def normalize_limits(limits: Mapping[str, int | None] | None, profile: str, dataset: str) -> dict[str, int | None]:
    """Per-split caps with the profile's defaults filled in; unknown keys and bad values are errors."""
    given = dict(limits or {})
    unknown = sorted(set(given) - set(SPLITS))
    if unknown:
        raise DatasetError(f"{dataset}: unknown limits {unknown}; valid: {', '.join(SPLITS)}")
    for key, value in given.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
            raise DatasetError(f"{dataset}: limits[{key!r}] must be None or an int >= 0, got {value!r}")
    defaults = {"pretrain": 0, "train": None, "val": 0 if profile == "embedded" else None, "test": None}
    out = {key: (int(given[key]) if given.get(key) is not None else None) if key in given else defaults[key]
           for key in SPLITS}
    if profile == "paper":
        if out["pretrain"]:
            raise DatasetError(f"{dataset}: the paper profile has no pretrain split (CLIP comes pretrained); "
                               f"set limits['pretrain'] to 0, got {out['pretrain']}")
        out["pretrain"] = 0
    return out


def _capped(pool: Pool, candidates: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    """A seeded stratified subsample of ``candidates`` of at most ``limit`` items, in source order."""
    if limit is None or limit >= len(candidates):
        return np.sort(candidates)
    order = stratified_order(pool.labels[candidates], rng, length=limit)
    return np.sort(candidates[order])


def allocate(raw: RawDataset, profile: str, limits: dict[str, int | None], seed: int) -> tuple[dict[str, tuple[str, np.ndarray]], str]:
    """For each split, the official pool it is drawn from and the indices into that pool; plus the rule used."""
    pools = raw.pools
    if "train" not in pools or "test" not in pools:
        raise DatasetError(f"reader returned splits {sorted(pools)}; need at least train and test")
    train_pool = pools["train"]
    n_train = len(train_pool.labels)
    out: dict[str, tuple[str, np.ndarray]] = {}
    if profile == "embedded":
        wanted = [limits["val"], limits["train"], limits["pretrain"]]
        length = None if any(v is None for v in wanted) else sum(wanted)
        order = stratified_order(train_pool.labels, rng_for(seed, _STREAM["embedded_train_pool"]), length=length)
        if "val" in pools:
            val_pool = pools["val"]
            out["val"] = ("val", _capped(val_pool, np.arange(len(val_pool.labels)), limits["val"], rng_for(seed, _STREAM["val"])))
            train_idx, pretrain_idx = take_segments(order, [limits["train"], limits["pretrain"]])
        else:
            val_idx, train_idx, pretrain_idx = take_segments(order, [limits["val"], limits["train"], limits["pretrain"]])
            out["val"] = ("train", val_idx)
        out["train"] = ("train", train_idx)
        out["pretrain"] = ("train", pretrain_idx)
        rule = ("embedded: val, train, pretrain = consecutive segments of one seeded stratified order of the official "
                "train split (caps, filled in that priority); test = seeded stratified subsample of the official test split")
    else:
        if "val" in pools:
            val_candidates, train_candidates = np.arange(len(pools["val"].labels)), np.arange(n_train)
            val_source, val_rule = "val", "the official val split"
        else:
            train_candidates, val_candidates = literature_val_split(n_train)
            val_source, val_rule = "train", ("task-vector rule: val = min(int(0.1 n), 5000) items of "
                                             "torch.randperm(n, generator=manual_seed(0)), the last ones; train = the rest")
        out["val"] = (val_source, _capped(pools[val_source], val_candidates, limits["val"], rng_for(seed, _STREAM["val"])))
        out["train"] = ("train", _capped(train_pool, train_candidates, limits["train"], rng_for(seed, _STREAM["train"])))
        out["pretrain"] = ("train", np.zeros(0, dtype=np.int64))
        rule = (f"paper: pretrain empty; val = {val_rule}; each split then capped by a seeded stratified subsample")
    test_pool = pools["test"]
    out["test"] = ("test", _capped(test_pool, np.arange(len(test_pool.labels)), limits["test"], rng_for(seed, _STREAM["test"])))
    return {split: out[split] for split in SPLITS}, rule


def _load_in_chunks(pool: ArrayPool, idx: np.ndarray, desc: str, progress: bool, chunk: int = 4096) -> np.ndarray:
    """``pool.load(idx)``, decoded in chunks under a progress bar."""
    from tqdm import tqdm

    if len(idx) <= chunk:
        return pool.load(idx)
    parts = [pool.load(idx[start: start + chunk])
             for start in tqdm(range(0, len(idx), chunk), desc=f"decode {desc}", unit="chunk", disable=not progress,
                               leave=False)]
    return np.concatenate(parts)


def _check_classes(spec: DatasetSpec, raw: RawDataset, meta: ClassMetadata) -> None:
    n = len(meta.classnames)
    if meta.archive_names is not None and raw.archive_classnames is not None:
        archive, expected = list(raw.archive_classnames), list(meta.archive_names)
        if archive != expected:
            first = next((i for i, (a, b) in enumerate(zip(archive, expected)) if a != b), min(len(archive), len(expected)))
            got = archive[first] if first < len(archive) else "<end>"
            want = expected[first] if first < len(expected) else "<end>"
            raise DatasetError(f"{spec.name}: the source's class list ({len(archive)} classes) differs from "
                               f"metadata/{spec.name}.json archive_names ({len(expected)}) at index {first}: "
                               f"{got!r} vs {want!r}")
    if len(meta.archive_names or meta.classnames) != n:
        raise DatasetError(f"{spec.name}: metadata has {n} classnames but {len(meta.archive_names)} archive_names")
    for split, pool in raw.pools.items():
        labels = pool.labels
        if len(labels) and (labels.min() < 0 or labels.max() >= n):
            raise DatasetError(f"{spec.name}: official {split} split has labels in [{labels.min()}, {labels.max()}], "
                               f"outside [0, {n}) of its {n} class names")


def _hash_sources(raw: RawDataset, source_folder: Path, artifacts) -> dict[str, str]:
    """sha256 of every file read, and of the source's archives (from their unpack record when unchanged)."""
    digests = {name: sha256_file(path) for name, path in raw.source_files.items()}
    for artifact in artifacts:
        path = source_folder / artifact.filename
        if path.is_file():
            digests[artifact.filename] = recorded_sha256(path, source_folder) or sha256_file(path)
    return dict(sorted(digests.items()))


def prepare(name: str, out_dir: str | Path, raw_dir: str | Path = "data/raw", seed: int = 0,
            limits: Mapping[str, int | None] | None = None, allow_download: bool = False, progress: bool = True,
            profile: str | None = None, trust_first_download: bool = False) -> dict:
    """Prepare dataset ``name`` into ``out_dir`` (meta.json + one file per split); return the meta dict.

    ``limits`` caps each split (``pretrain``, ``train``, ``val``, ``test``; None = no cap, 0 =
    empty; missing keys: pretrain 0, val 0 (embedded) or the literature val (paper), train and
    test uncapped). ``profile`` defaults to the dataset's own ("embedded" for the offline
    suite, "paper" for the paper's datasets); MNIST serves both.
    """
    spec = get_spec(name)
    profile = profile or spec.profile
    if profile not in PROFILES:
        raise DatasetError(f"{name}: unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DatasetError(f"{name}: seed must be an int, got {seed!r}")
    caps = normalize_limits(limits, profile, name)
    metadata = load_metadata(name, profile)
    source, folder = resolve(spec, raw_dir, allow_download=allow_download, progress=progress,
                             trust_first_download=trust_first_download)
    raw = source.read(folder, int(seed))
    _check_classes(spec, raw, metadata)
    chosen, rule = allocate(raw, profile, caps, int(seed))

    payloads: dict[str, ArraySplitPayload | FileSplitPayload] = {}
    class_counts: dict[str, list[int]] = {}
    image_shape = None
    for split, (pool_name, idx) in chosen.items():
        pool = raw.pools[pool_name]
        labels = pool.labels[idx]
        class_counts[split] = np.bincount(labels, minlength=len(metadata.classnames)).tolist()
        if spec.format == "npz":
            if not isinstance(pool, ArrayPool):
                raise DatasetError(f"{name}: the npz format needs decoded images; the reader gave files")
            images = _load_in_chunks(pool, idx, f"{name} {split}", progress)
            if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(idx):
                raise DatasetError(f"{name}: split {split}: reader produced {images.dtype} {images.shape}, "
                                   f"expected uint8 [{len(idx)}, H, W, C]")
            if image_shape is None and len(images):
                image_shape = list(images.shape[1:])
            elif len(images) and list(images.shape[1:]) != image_shape:
                raise DatasetError(f"{name}: split {split} has images {images.shape[1:]}, other splits {image_shape}")
            payloads[split] = ArraySplitPayload(images, labels, pool.ids[idx])
        else:
            if not isinstance(pool, FilePool):
                raise DatasetError(f"{name}: the files format needs image files; the reader gave arrays")
            payloads[split] = FileSplitPayload([pool.paths[i] for i in idx], labels, pool.root)

    meta = {
        "name": name,
        "profile": profile,
        "format": spec.format,
        "classnames": list(metadata.classnames),
        "templates": list(metadata.templates),
        "num_classes": len(metadata.classnames),
        "splits": {split: int(len(idx)) for split, (_, idx) in chosen.items()},
        "class_counts": class_counts,
        "seed": int(seed),
        "limits": caps,
        "source": {
            "description": source.description,
            "location": str(folder),
            "sha256": _hash_sources(raw, folder, source.artifacts),
        },
        "rules": {"splits": rule, **raw.notes},
        "metadata_provenance": metadata.provenance,
        "format_version": FORMAT_VERSION,
    }
    if spec.format == "npz":
        meta["image_shape"] = image_shape
    else:
        meta["root"] = FILES_ROOT
    json.dumps(meta)  # fail before writing anything if a value is not JSON-serialisable
    write_prepared(out_dir, meta, payloads, progress=progress)
    return meta
