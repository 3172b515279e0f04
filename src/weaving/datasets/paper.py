"""Readers of the paper's datasets in their real on-disk formats (after archives are unpacked).

Each reader takes the dataset's raw folder (``<raw_dir>/<name>``) and returns its official
splits; the split each follows is the one of the task-vector / MagMax literature (see
SOURCES.md): SUN397 partition 1; Cars, GTSRB, SVHN, MNIST, CIFAR100, CUB200 official
train/test; CIFAR-10 and EMNIST Letters (C2M3's datasets) official train/test; DTD partition 1 with train+val merged as train (as PAINT / task vectors);
RESISC45 the published train/test lists of Neumann et al.; EuroSAT and ImageNet-R a
seeded (seed 0) random split, since they have none (task vectors: 21,600/2,700/2,700 for
EuroSAT; MagMax: 80/20 for ImageNet-R).
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np

from weaving.datasets.base import DatasetError, FilePool, RawDataset, array_pool, int64_labels, read_idx
from weaving.datasets.splits import rng_for

DTD_PARTITION = 1
SUN397_PARTITION = 1
EUROSAT_SIZES = (21_600, 2_700, 2_700)  # train, val, test of the task-vector literature (27,000 images)
IMAGENET_R_TRAIN_FRACTION = 0.8
SPLIT_SEED = 0  # the literature's fixed seed for splits that are not published
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".tif", ".tiff", ".bmp")


def _need(path: Path, dataset: str, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{dataset}: {what} not found at {path}")
    return path


def _first_existing(root: Path, candidates: tuple[str, ...], dataset: str, what: str) -> Path:
    for rel in candidates:
        if (root / rel).exists():
            return root / rel
    raise DatasetError(f"{dataset}: {what} not found in {root} (looked for {', '.join(candidates)})")


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _pool(root: Path, items: list[tuple[str, int]]) -> FilePool:
    return FilePool(int64_labels([label for _, label in items]), [path for path, _ in items], root)


# ---------------------------------------------------------------- npz datasets

def read_svhn(root: Path, seed: int = 0) -> RawDataset:
    """SVHN cropped digits: ``train_32x32.mat`` / ``test_32x32.mat``; ``X`` [32,32,3,N], ``y`` [N,1] with 10 = digit 0."""
    import scipy.io

    pools, files = {}, {}
    for split in ("train", "test"):
        path = _need(root / f"{split}_32x32.mat", "svhn", f"{split}_32x32.mat")
        try:
            mat = scipy.io.loadmat(path)
        except Exception as error:  # scipy raises several types for a bad file
            raise DatasetError(f"svhn: cannot read {path} ({type(error).__name__}: {error})") from None
        if "X" not in mat or "y" not in mat:
            raise DatasetError(f"svhn: {path} lacks the variables 'X' and 'y'")
        images = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2)), dtype=np.uint8)
        labels = int64_labels(mat["y"]) % 10
        pools[split] = array_pool(images, labels, split)
        files[path.name] = path
    return RawDataset(pools, files, notes={"split": "official train/test .mat files (extra_32x32 unused)",
                                           "label": "y % 10 (the files store digit 0 as 10)"})


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        data = pickle.load(handle, encoding="bytes")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def read_cifar100(root: Path, seed: int = 0) -> RawDataset:
    """CIFAR-100 python version: ``cifar-100-python/{train,test,meta}`` pickles, fine labels."""
    base = _need(root / "cifar-100-python", "cifar100", "folder cifar-100-python (from cifar-100-python.tar.gz)")
    meta = _unpickle(_need(base / "meta", "cifar100", "cifar-100-python/meta"))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["fine_label_names"]]
    pools, files = {}, {"cifar-100-python/meta": base / "meta"}
    for split in ("train", "test"):
        path = _need(base / split, "cifar100", f"cifar-100-python/{split}")
        data = _unpickle(path)
        raw = np.asarray(data["data"], dtype=np.uint8)
        if raw.ndim != 2 or raw.shape[1] != 3072:
            raise DatasetError(f"cifar100: {path}: 'data' must be [N, 3072], got {raw.shape}")
        images = np.ascontiguousarray(raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        pools[split] = array_pool(images, int64_labels(data["fine_labels"]), split)
        files[f"cifar-100-python/{split}"] = path
    return RawDataset(pools, files, archive_classnames=names, notes={"split": "official train/test pickles"})


CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
EMNIST_SPLIT = "letters"  # C2M3's EMNIST (the reference's conf/dataset/emnist.yaml: split letters, 26 classes)
EMNIST_CLASSES = 26


def _cifar_images(data: dict, path: Path, dataset: str) -> np.ndarray:
    raw = np.asarray(data["data"], dtype=np.uint8)
    if raw.ndim != 2 or raw.shape[1] != 3072:
        raise DatasetError(f"{dataset}: {path}: 'data' must be [N, 3072], got {raw.shape}")
    return np.ascontiguousarray(raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def read_cifar10(root: Path, seed: int = 0) -> RawDataset:
    """CIFAR-10 python version: ``cifar-10-batches-py/data_batch_{1..5}`` (train, in that order),
    ``test_batch`` and ``batches.meta`` (``label_names``)."""
    base = _need(root / "cifar-10-batches-py", "cifar10", "folder cifar-10-batches-py (from cifar-10-python.tar.gz)")
    meta = _unpickle(_need(base / "batches.meta", "cifar10", "cifar-10-batches-py/batches.meta"))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta["label_names"]]
    files = {"cifar-10-batches-py/batches.meta": base / "batches.meta"}
    pools = {}
    for split, batches in (("train", CIFAR10_TRAIN_BATCHES), ("test", ("test_batch",))):
        images, labels = [], []
        for batch in batches:
            path = _need(base / batch, "cifar10", f"cifar-10-batches-py/{batch}")
            data = _unpickle(path)
            images.append(_cifar_images(data, path, "cifar10"))
            labels.append(int64_labels(data["labels"]))
            files[f"cifar-10-batches-py/{batch}"] = path
        pools[split] = array_pool(np.concatenate(images), np.concatenate(labels), split)
    return RawDataset(pools, files, archive_classnames=names,
                      notes={"split": "official: data_batch_1..5 (50,000) / test_batch (10,000)"})


def emnist_file(split: str, kind: str) -> str:
    """``emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte.gz``, as in the ``gzip/`` folder of ``gzip.zip``."""
    return f"emnist-{EMNIST_SPLIT}-{split}-{'images-idx3' if kind == 'images' else 'labels-idx1'}-ubyte.gz"


def read_emnist(root: Path, seed: int = 0) -> RawDataset:
    """EMNIST Letters: the IDX files ``gzip/emnist-letters-{train,test}-*.gz`` of NIST's ``gzip.zip`` (or the
    same files placed directly in the folder). Labels 1..26 (the letters a..z, cases merged) become 0..25.
    Images are kept as the files store them (transposed against MNIST's orientation), as torchvision's
    ``EMNIST`` loads them for the C2M3 reference."""
    pools, files = {}, {}
    for split in ("train", "test"):
        paths = [_first_existing(root, (f"gzip/{emnist_file(split, kind)}", emnist_file(split, kind)), "emnist",
                                 emnist_file(split, kind)) for kind in ("images", "labels")]
        images, labels = read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or not len(labels):
            raise DatasetError(f"emnist: {paths[0]} / {paths[1]}: expected images [N,H,W] and labels [N], "
                               f"got {images.shape} and {labels.shape}")
        low, high = int(labels.min()), int(labels.max())
        if low < 1 or high > EMNIST_CLASSES:
            raise DatasetError(f"emnist: {paths[1]}: letters labels must lie in 1..{EMNIST_CLASSES}, found {low}..{high}")
        pools[split] = array_pool(np.ascontiguousarray(images[..., None], dtype=np.uint8), labels - 1, split)
        files.update({path.name: path for path in paths})
    return RawDataset(pools, files, notes={"split": "official EMNIST Letters train/test (124,800 / 20,800)",
                                           "label": "file label - 1 (the files number the letters 1..26)",
                                           "orientation": "as stored in the IDX files (torchvision's EMNIST, the "
                                                          "C2M3 reference's input)"})


# ---------------------------------------------------------------- files datasets

def read_gtsrb(root: Path, seed: int = 0) -> RawDataset:
    """GTSRB: ``GTSRB/Training/000NN/*.ppm`` (label = folder number) and ``GTSRB/Final_Test/Images/*.ppm``
    labelled by ``GT-final_test.csv`` (``Filename;...;ClassId``), the layout torchvision's GTSRB reads."""
    training = _need(root / "GTSRB" / "Training", "gtsrb", "GTSRB/Training (from GTSRB-Training_fixed.zip)")
    train = []
    for folder in _class_folders(training):
        if not folder.isdigit():
            continue
        label = int(folder)
        train += [(p.relative_to(root).as_posix(), label) for p in _images_in(training / folder) if p.suffix == ".ppm"]
    test_dir = _need(root / "GTSRB" / "Final_Test" / "Images", "gtsrb",
                     "GTSRB/Final_Test/Images (from GTSRB_Final_Test_Images.zip)")
    gt = _first_existing(root, ("GT-final_test.csv", "GTSRB/GT-final_test.csv"), "gtsrb",
                         "GT-final_test.csv (from GTSRB_Final_Test_GT.zip)")
    with open(gt, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter=";", skipinitialspace=True))
    if not rows or "Filename" not in rows[0] or "ClassId" not in rows[0]:
        raise DatasetError(f"gtsrb: {gt} needs ';'-separated columns Filename and ClassId")
    test = [((test_dir / row["Filename"]).relative_to(root).as_posix(), int(row["ClassId"])) for row in rows]
    return RawDataset({"train": _pool(root, train), "test": _pool(root, test)}, {gt.name: gt},
                      notes={"split": "official: GTSRB-Training_fixed (26,640) / Final_Test with GT-final_test.csv (12,630)"})


def read_dtd(root: Path, seed: int = 0) -> RawDataset:
    """DTD: ``dtd/images/<class>/*.jpg`` and ``dtd/labels/{train,val,test}<k>.txt``; train = train+val of partition k."""
    base = _need(root / "dtd", "dtd", "folder dtd (from dtd-r1.0.1.tar.gz)")
    classes = _class_folders(_need(base / "images", "dtd", "dtd/images"))
    index = {c: i for i, c in enumerate(classes)}
    files, pools = {}, {}
    for split, parts in (("train", ("train", "val")), ("test", ("test",))):
        items = []
        for part in parts:
            path = _need(base / "labels" / f"{part}{DTD_PARTITION}.txt", "dtd", f"dtd/labels/{part}{DTD_PARTITION}.txt")
            files[f"dtd/labels/{path.name}"] = path
            for line in _lines(path):
                cls = line.split("/")[0]
                if cls not in index:
                    raise DatasetError(f"dtd: {path}: class {cls!r} of {line!r} has no folder in dtd/images")
                items.append((f"dtd/images/{line}", index[cls]))
        pools[split] = _pool(root, items)
    return RawDataset(pools, files, archive_classnames=classes,
                      notes={"split": f"partition {DTD_PARTITION}: train = train{DTD_PARTITION}+val{DTD_PARTITION}, test = test{DTD_PARTITION}"})


def read_eurosat(root: Path, seed: int = 0) -> RawDataset:
    """EuroSAT RGB: ``2750/<Class>/*.jpg`` (EuroSAT.zip; ``EuroSAT_RGB/`` in the Zenodo copy), seeded 80/10/10 split."""
    base = _first_existing(root, ("2750", "EuroSAT_RGB", "EuroSAT"), "eurosat", "the RGB class folders")
    classes = _class_folders(base)
    items = [(p.relative_to(root).as_posix(), i) for i, c in enumerate(classes) for p in _images_in(base / c)]
    n = len(items)
    total = sum(EUROSAT_SIZES)
    n_val = round(n * EUROSAT_SIZES[1] / total)
    n_test = round(n * EUROSAT_SIZES[2] / total)
    perm = rng_for(SPLIT_SEED, 201).permutation(n)
    parts = {"train": perm[: n - n_val - n_test], "val": perm[n - n_val - n_test: n - n_test], "test": perm[n - n_test:]}
    pools = {split: _pool(root, [items[i] for i in np.sort(idx)]) for split, idx in parts.items()}
    return RawDataset(pools, {}, archive_classnames=classes, notes={
        "split": f"seeded uniform random split (seed {SPLIT_SEED}) into {n - n_val - n_test}/{n_val}/{n_test} "
                 "train/val/test, the sizes of the task-vector literature (21,600/2,700/2,700 of 27,000)"})


def read_resisc45(root: Path, seed: int = 0) -> RawDataset:
    """RESISC45: ``NWPU-RESISC45/<class>/<class>_NNN.jpg`` and the published ``resisc45-{train,test}.txt`` lists."""
    base = root / "NWPU-RESISC45"
    if not base.is_dir():
        rar = root / "NWPU-RESISC45.rar"
        extra = (f"; {rar} is a RAR archive, which is not unpacked here: extract it by hand "
                 f"(e.g. `unar {rar.name}` in {root})") if rar.exists() else ""
        raise DatasetError(f"resisc45: folder NWPU-RESISC45 not found in {root}{extra}")
    classes = _class_folders(base)
    index = {c: i for i, c in enumerate(classes)}
    files, pools = {}, {}
    for split in ("train", "test"):
        path = _need(root / f"resisc45-{split}.txt", "resisc45", f"resisc45-{split}.txt")
        files[path.name] = path
        items = []
        for name in _lines(path):
            cls = name.rsplit("_", 1)[0]
            if cls not in index:
                raise DatasetError(f"resisc45: {path}: image {name!r} has no class folder {cls!r}")
            items.append((f"NWPU-RESISC45/{cls}/{name}", index[cls]))
        pools[split] = _pool(root, items)
    return RawDataset(pools, files, archive_classnames=classes, notes={
        "split": "published resisc45-train.txt / resisc45-test.txt (Neumann et al. 2019); resisc45-val.txt unused, "
                 "as in the task-vector code"})


def _sun397_class(line: str) -> str:
    return line.strip().lstrip("/")


def read_sun397(root: Path, seed: int = 0) -> RawDataset:
    """SUN397: ``SUN397/<l>/<class>[/<sub>]/sun_*.jpg``, ``ClassName.txt`` (label order) and partition lists."""
    _need(root / "SUN397", "sun397", "folder SUN397 (from SUN397.tar.gz)")
    names_file = _first_existing(root, ("SUN397/ClassName.txt", "ClassName.txt", "Partitions/ClassName.txt"),
                                 "sun397", "ClassName.txt")
    archive_names = _lines(names_file)
    index = {_sun397_class(c): i for i, c in enumerate(archive_names)}
    files, pools = {names_file.name: names_file}, {}
    for split, stem in (("train", "Training"), ("test", "Testing")):
        fname = f"{stem}_{SUN397_PARTITION:02d}.txt"
        path = _first_existing(root, (f"SUN397/{fname}", fname, f"Partitions/{fname}"), "sun397",
                               f"{fname} (from Partitions.zip)")
        files[fname] = path
        items = []
        for line in _lines(path):
            rel = line.lstrip("/")
            cls = "/".join(rel.split("/")[:-1])
            if cls not in index:
                raise DatasetError(f"sun397: {path}: {line!r} belongs to no class of {names_file.name}")
            items.append((f"SUN397/{rel}", index[cls]))
        pools[split] = _pool(root, items)
    return RawDataset(pools, files, archive_classnames=archive_names,
                      notes={"split": f"partition {SUN397_PARTITION}: Training_{SUN397_PARTITION:02d}.txt / "
                                      f"Testing_{SUN397_PARTITION:02d}.txt (50 + 50 images per class)"})


def _mat_annotations(path: Path, dataset: str) -> list[tuple[str, int]]:
    import scipy.io

    try:
        annotations = scipy.io.loadmat(path, squeeze_me=True)["annotations"]
    except Exception as error:
        raise DatasetError(f"{dataset}: cannot read 'annotations' from {path} ({type(error).__name__}: {error})") from None
    annotations = np.atleast_1d(annotations)
    fields = annotations.dtype.names or ()
    if "fname" not in fields or "class" not in fields:
        raise DatasetError(f"{dataset}: {path}: annotations need fields 'fname' and 'class', have {fields}")
    return [(str(a["fname"]), int(a["class"]) - 1) for a in annotations]


def read_cars(root: Path, seed: int = 0) -> RawDataset:
    """Stanford Cars: ``devkit/cars_meta.mat`` (class names), ``devkit/cars_train_annos.mat``,
    ``cars_test_annos_withlabels.mat`` (``fname``, ``class`` 1-based) and ``cars_train/``, ``cars_test/``."""
    import scipy.io

    meta_path = _need(root / "devkit" / "cars_meta.mat", "cars", "devkit/cars_meta.mat (from car_devkit.tgz)")
    names = [str(n) for n in np.atleast_1d(scipy.io.loadmat(meta_path, squeeze_me=True)["class_names"])]
    files = {"devkit/cars_meta.mat": meta_path}
    pools = {}
    for split, annos in (("train", "devkit/cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
        path = _first_existing(root, (annos, f"devkit/{Path(annos).name}"), "cars", Path(annos).name)
        files[annos] = path
        folder = _first_existing(root, (f"cars_{split}/cars_{split}", f"cars_{split}"), "cars",
                                 f"folder cars_{split} (from cars_{split}.tgz)")
        prefix = folder.relative_to(root).as_posix()
        pools[split] = _pool(root, [(f"{prefix}/{fname}", label) for fname, label in _mat_annotations(path, "cars")])
    return RawDataset(pools, files, archive_classnames=names, notes={"split": "official train/test annotations (8,144 / 8,041)"})


def read_cub200(root: Path, seed: int = 0) -> RawDataset:
    """CUB-200-2011: ``images.txt``, ``image_class_labels.txt`` (1-based), ``train_test_split.txt``, ``classes.txt``."""
    base = _need(root / "CUB_200_2011", "cub200", "folder CUB_200_2011 (from CUB_200_2011.tgz)")
    tables = {}
    files = {}
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"):
        path = _need(base / name, "cub200", f"CUB_200_2011/{name}")
        files[f"CUB_200_2011/{name}"] = path
        tables[name] = dict(line.split(" ", 1) for line in _lines(path))
    classes = [tables["classes.txt"][k] for k in sorted(tables["classes.txt"], key=int)]
    pools = {}
    for split, flag in (("train", "1"), ("test", "0")):
        items = [(f"CUB_200_2011/images/{tables['images.txt'][i]}", int(tables["image_class_labels.txt"][i]) - 1)
                 for i in sorted(tables["images.txt"], key=int) if tables["train_test_split.txt"][i] == flag]
        pools[split] = _pool(root, items)
    return RawDataset(pools, files, archive_classnames=classes,
                      notes={"split": "official train_test_split.txt (5,994 / 5,794)"})


def read_imagenet_r(root: Path, seed: int = 0) -> RawDataset:
    """ImageNet-R: ``imagenet-r/<wnid>/*.jpg`` and ``README.txt`` (``<wnid> <name>`` lines); labels follow
    the sorted class names (MagMax's order); seeded 80/20 train/test split (seed 0)."""
    base = _need(root / "imagenet-r", "imagenet_r", "folder imagenet-r (from imagenet-r.tar)")
    readme = _need(base / "README.txt", "imagenet_r", "imagenet-r/README.txt")
    wnid_to_name = {}
    for line in _lines(readme):
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("n") and parts[0][1:].isdigit():
            wnid_to_name[parts[0]] = parts[1]
    folders = [f for f in _class_folders(base) if f in wnid_to_name]
    if not folders:
        raise DatasetError(f"imagenet_r: no class folder of {readme} found in {base}")
    names = sorted(wnid_to_name[f] for f in folders)
    index = {name: i for i, name in enumerate(names)}
    items = [(p.relative_to(root).as_posix(), index[wnid_to_name[f]]) for f in folders for p in _images_in(base / f)]
    perm = rng_for(SPLIT_SEED, 202).permutation(len(items))
    n_train = int(IMAGENET_R_TRAIN_FRACTION * len(items))
    pools = {split: _pool(root, [items[i] for i in np.sort(idx)])
             for split, idx in (("train", perm[:n_train]), ("test", perm[n_train:]))}
    return RawDataset(pools, {"imagenet-r/README.txt": readme}, archive_classnames=names, notes={
        "split": f"seeded uniform random split (seed {SPLIT_SEED}): {IMAGENET_R_TRAIN_FRACTION:.0%} train / rest test, "
                 "as MagMax (whose torch random_split was unseeded)"})
