"""Small files in the real on-disk formats of the paper's datasets, and a local HTTP server.

Every ``make_<dataset>(raw)`` writes the archives the way the dataset's publisher ships them
into ``raw`` (``<raw_dir>/<name>``) and returns the ground truth it encoded:
``{"train": {relpath: label}, "test": {...}, ...}`` with paths relative to ``raw``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import pickle
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

METADATA = Path(__file__).resolve().parent.parent / "src" / "weaving" / "datasets" / "metadata"


def archive_names(name: str) -> list[str]:
    return json.loads((METADATA / f"{name}.json").read_text())["archive_names"]


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (8, 6)) -> bytes:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz") -> None:
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            _add(tar, name, data)


def write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding: magic 0x0000 0x08 ndim, big-endian uint32 dims, uint8 data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


# ---------------------------------------------------------------- npz datasets

def make_mnist(raw: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
        truth[split] = (images, labels.astype(np.int64))
    return truth


def make_svhn(raw: Path, seed: int = 0) -> dict:
    import scipy.io

    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, n in (("train", 50), ("test", 20)):
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).reshape(n, 1).astype(np.uint8)  # the files store 0 as 10
        scipy.io.savemat(raw / f"{split}_32x32.mat", {"X": np.transpose(images, (1, 2, 3, 0)), "y": y})
        truth[split] = (images, digits.astype(np.int64))
    return truth


def make_cifar100(raw: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    names = archive_names("cifar100")
    members, truth = {}, {}
    for split, n in (("train", 300), ("test", 100)):
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in np.arange(n) % 100]
        data = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # rows: R plane, G plane, B plane
        members[f"cifar-100-python/{split}"] = pickle.dumps(
            {b"filenames": [f"{i}.png".encode() for i in range(n)], b"data": data, b"fine_labels": labels,
             b"coarse_labels": [0] * n}, protocol=2)
        truth[split] = (images, np.asarray(labels, dtype=np.int64))
    members["cifar-100-python/meta"] = pickle.dumps(
        {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"x"] * 20}, protocol=2)
    write_tar(raw / "cifar-100-python.tar.gz", members)
    return truth


# ---------------------------------------------------------------- files datasets

def make_gtsrb(raw: Path) -> dict:
    raw.mkdir(parents=True, exist_ok=True)
    train_members, truth = {}, {"train": {}, "test": {}}
    for cls in range(43):
        rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
        for k in range(2):
            name = f"{k:05d}_{k:05d}.ppm"
            train_members[f"GTSRB/Training/{cls:05d}/{name}"] = image_bytes(cls * 10 + k, "PPM")
            rows.append(f"{name};8;6;0;0;7;5;{cls}")
            truth["train"][f"GTSRB/Training/{cls:05d}/{name}"] = cls
        train_members[f"GTSRB/Training/{cls:05d}/GT-{cls:05d}.csv"] = ("\n".join(rows) + "\n").encode()
    write_zip(raw / "GTSRB-Training_fixed.zip", train_members)
    test_members, gt_rows = {}, ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(60):
        cls = (i * 7) % 43
        test_members[f"GTSRB/Final_Test/Images/{i:05d}.ppm"] = image_bytes(1000 + i, "PPM")
        gt_rows.append(f"{i:05d}.ppm;8;6;0;0;7;5;{cls}")
        truth["test"][f"GTSRB/Final_Test/Images/{i:05d}.ppm"] = cls
    test_members["GTSRB/Final_Test/Images/GT-final_test.test.csv"] = b"Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2\n"
    write_zip(raw / "GTSRB_Final_Test_Images.zip", test_members)
    write_zip(raw / "GTSRB_Final_Test_GT.zip", {"GT-final_test.csv": ("\n".join(gt_rows) + "\n").encode()})
    return truth


def make_dtd(raw: Path, per_part: int = 1) -> dict:
    raw.mkdir(parents=True, exist_ok=True)
    classes = archive_names("dtd")
    members, lists, truth = {}, {"train": [], "val": [], "test": [], "train2": []}, {"train": {}, "test": {}}
    for ci, cls in enumerate(classes):
        for part in ("train", "val", "test"):
            for k in range(per_part):
                rel = f"{cls}/{cls}_{part}{k:04d}.jpg"
                members[f"dtd/images/{rel}"] = image_bytes(ci * 100 + len(lists[part]))
                lists[part].append(rel)
                truth["test" if part == "test" else "train"][f"dtd/images/{rel}"] = ci
        lists["train2"].append(f"{cls}/{cls}_test0000.jpg")  # another partition, must be ignored
    for part in ("train", "val", "test"):
        members[f"dtd/labels/{part}1.txt"] = ("\n".join(lists[part]) + "\n").encode()
    members["dtd/labels/train2.txt"] = ("\n".join(lists["train2"]) + "\n").encode()
    write_tar(raw / "dtd-r1.0.1.tar.gz", members)
    return truth


def make_eurosat(raw: Path, per_class: int = 10) -> dict:
    raw.mkdir(parents=True, exist_ok=True)
    members, truth = {}, {"all": {}}
    for ci, cls in enumerate(archive_names("eurosat")):
        for k in range(1, per_class + 1):
            rel = f"2750/{cls}/{cls}_{k}.jpg"
            members[rel] = image_bytes(ci * 1000 + k)
            truth["all"][rel] = ci
    write_zip(raw / "EuroSAT.zip", members)
    return truth


def make_resisc45(raw: Path) -> dict:
    raw.mkdir(parents=True, exist_ok=True)
    members, lists, truth = {}, {"train": [], "val": [], "test": []}, {"train": {}, "test": {}, "val": {}}
    for ci, cls in enumerate(archive_names("resisc45")):
        for k, split in enumerate(("train", "train", "val", "test")):
            name = f"{cls}_{k + 1:03d}.jpg"
            members[f"NWPU-RESISC45/{cls}/{name}"] = image_bytes(ci * 10 + k)
            lists[split].append(name)
            truth[split][f"NWPU-RESISC45/{cls}/{name}"] = ci
    write_zip(raw / "NWPU-RESISC45.zip", members)
    for split, names in lists.items():
        (raw / f"resisc45-{split}.txt").write_text("\n".join(names) + "\n")
    return truth


def make_sun397(raw: Path) -> dict:
    raw.mkdir(parents=True, exist_ok=True)
    names = archive_names("sun397")
    members = {"SUN397/ClassName.txt": ("\n".join(names) + "\n").encode()}
    lists, truth = {"Training": [], "Testing": [], "Training2": []}, {"train": {}, "test": {}}
    for ci, cls in enumerate(names):
        for k, stem in enumerate(("Training", "Testing", "Training2")):
            line = f"{cls}/sun_{ci:04d}{k}.jpg"
            members[f"SUN397{line}"] = image_bytes(ci * 10 + k)
            lists[stem].append(line)
            if stem != "Training2":
                truth["train" if stem == "Training" else "test"][f"SUN397{line}"] = ci
    write_tar(raw / "SUN397.tar.gz", members)
    write_zip(raw / "Partitions.zip", {
        "ClassName.txt": ("\n".join(names) + "\n").encode(),
        "Training_01.txt": ("\n".join(lists["Training"]) + "\n").encode(),
        "Testing_01.txt": ("\n".join(lists["Testing"]) + "\n").encode(),
        "Training_02.txt": ("\n".join(lists["Training2"]) + "\n").encode(),
    })
    return truth


def _cars_annotations(path: Path, rows: list[tuple[str, int]]) -> None:
    import scipy.io

    dtype = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    table = np.zeros((1, len(rows)), dtype=dtype)
    for i, (fname, cls) in enumerate(rows):
        table[0, i] = (np.array([[1]]), np.array([[1]]), np.array([[7]]), np.array([[5]]), np.array([[cls]]), np.array([fname]))
    scipy.io.savemat(path, {"annotations": table})


def make_cars(raw: Path) -> dict:
    import scipy.io

    raw.mkdir(parents=True, exist_ok=True)
    names = archive_names("cars")
    devkit = raw / "_devkit_build"
    devkit.mkdir()
    scipy.io.savemat(devkit / "cars_meta.mat", {"class_names": np.array(names, dtype=object).reshape(1, -1)})
    truth, rows = {"train": {}, "test": {}}, {"train": [], "test": []}
    for split, offset in (("train", 0), ("test", 5000)):
        members = {}
        for ci in range(len(names)):
            fname = f"{offset + ci + 1:05d}.jpg"
            members[f"cars_{split}/{fname}"] = image_bytes(offset + ci)
            rows[split].append((fname, ci + 1))  # class is 1-based in the .mat files
            truth[split][f"cars_{split}/{fname}"] = ci
        write_tar(raw / f"cars_{split}.tgz", members)
    _cars_annotations(devkit / "cars_train_annos.mat", rows["train"])
    _cars_annotations(raw / "cars_test_annos_withlabels.mat", rows["test"])
    write_tar(raw / "car_devkit.tgz", {f"devkit/{p.name}": p.read_bytes() for p in devkit.iterdir()})
    for p in devkit.iterdir():
        p.unlink()
    devkit.rmdir()
    return truth


def make_cub200(raw: Path) -> dict:
    raw.mkdir(parents=True, exist_ok=True)
    classes = archive_names("cub200")
    members, images, labels, split_rows = {}, [], [], []
    truth, image_id = {"train": {}, "test": {}}, 0
    for ci, cls in enumerate(classes):
        for k, is_train in enumerate((1, 0)):
            image_id += 1
            rel = f"{cls}/{cls[4:]}_{k:04d}_{image_id}.jpg"
            members[f"CUB_200_2011/images/{rel}"] = image_bytes(image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {ci + 1}")
            split_rows.append(f"{image_id} {is_train}")
            truth["train" if is_train else "test"][f"CUB_200_2011/images/{rel}"] = ci
    members["CUB_200_2011/images.txt"] = ("\n".join(images) + "\n").encode()
    members["CUB_200_2011/image_class_labels.txt"] = ("\n".join(labels) + "\n").encode()
    members["CUB_200_2011/train_test_split.txt"] = ("\n".join(split_rows) + "\n").encode()
    members["CUB_200_2011/classes.txt"] = ("\n".join(f"{i + 1} {c}" for i, c in enumerate(classes)) + "\n").encode()
    write_tar(raw / "CUB_200_2011.tgz", members)
    return truth


def make_imagenet_r(raw: Path, per_class: int = 5) -> dict:
    raw.mkdir(parents=True, exist_ok=True)
    names = archive_names("imagenet_r")
    order = np.random.default_rng(7).permutation(len(names))  # wnid order differs from name order
    readme = ["ImageNet-R: renditions of 200 ImageNet classes.", "", "wnid name"]
    members, truth = {}, {"all": {}}
    for k, ni in enumerate(order):
        wnid = f"n{1000000 + k:08d}"
        readme.append(f"{wnid} {names[ni]}")
        for j in range(per_class):
            rel = f"imagenet-r/{wnid}/art_{j}.jpg"
            members[rel] = image_bytes(k * 100 + j)
            truth["all"][rel] = int(ni)
    members["imagenet-r/README.txt"] = ("\n".join(readme) + "\n").encode()
    write_tar(raw / "imagenet-r.tar", members, mode="w")
    return truth


PAPER_MAKERS = {
    "svhn": make_svhn, "cifar100": make_cifar100, "gtsrb": make_gtsrb, "dtd": make_dtd, "eurosat": make_eurosat,
    "resisc45": make_resisc45, "sun397": make_sun397, "cars": make_cars, "cub200": make_cub200,
    "imagenet_r": make_imagenet_r,
}


# ---------------------------------------------------------------- HTTP server for the downloader

class FileServer:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 with HTTP Range support.

    ``drop_after[name] = n`` makes the first GET of ``name`` send the full Content-Length but
    close the connection after ``n`` body bytes. ``ignore_range`` makes it answer 200 to Range.
    ``requests`` records ``(name, range header)`` of every GET.
    """

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.drop_after: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                range_header = self.headers.get("Range")
                server.requests.append((name, range_header))
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                start = 0
                if range_header and not server.ignore_range:
                    start = int(range_header.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                cut = server.drop_after.pop(name, None)
                if cut is not None:
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def trust_fixture_archives(monkeypatch, name: str, folder: Path) -> None:
    """Point the registry's digests for ``name`` at the fixture files in ``folder`` (they are not the real archives)."""
    import dataclasses

    from weaving.datasets import DATASETS

    spec = DATASETS[name]
    sources = []
    for source in spec.sources:
        artifacts = tuple(
            dataclasses.replace(a, sha256=sha256(folder / a.filename), md5=None, size=None)
            if (folder / a.filename).is_file() else a
            for a in source.artifacts)
        sources.append(dataclasses.replace(source, artifacts=artifacts))
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, sources=tuple(sources)))
