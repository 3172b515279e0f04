"""C2M3's datasets in the paper profile: CIFAR-10 and EMNIST Letters, on small files in their real formats."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from fixtures_datasets import FileServer, idx_bytes, sha256, trust_fixture_archives, write_tar  # noqa: E402

from weaving.datasets import DATASETS, Artifact, DatasetError, load_prepared, prepare  # noqa: E402
from weaving.datasets.metadata import load_metadata  # noqa: E402

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar10(raw: Path, per_batch: int = 20, seed: int = 0) -> dict:
    """``cifar-10-python.tar.gz`` as the publisher ships it: five training batches, a test batch, the meta pickle."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    members, train_images, train_labels = {}, [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        data = images.transpose(0, 3, 1, 2).reshape(per_batch, 3072)  # rows: R plane, G plane, B plane
        members[f"cifar-10-batches-py/{name}"] = pickle.dumps(
            {b"batch_label": name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"{i}.png".encode() for i in range(per_batch)]}, protocol=2)
        if name == "test_batch":
            test = (images, np.asarray(labels, dtype=np.int64))
        else:
            train_images.append(images)
            train_labels += labels
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": per_batch, b"num_vis": 3072},
        protocol=2)
    write_tar(raw / "cifar-10-python.tar.gz", members)
    return {"train": (np.concatenate(train_images), np.asarray(train_labels, dtype=np.int64)), "test": test}


def make_emnist(raw: Path, seed: int = 0) -> dict:
    """NIST's ``gzip.zip``: ``gzip/emnist-<split>-{train,test}-{images-idx3,labels-idx1}-ubyte.gz`` for the
    letters split (labels 1..26) and, as a decoy, the digits split (labels 0..9)."""
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    members, truth = {}, {}
    for emnist_split, low, high in (("letters", 1, 27), ("digits", 0, 10)):
        for split, n in (("train", 78), ("test", 52)):
            images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
            labels = (np.arange(n) % (high - low) + low).astype(np.uint8)
            prefix = f"gzip/emnist-{emnist_split}-{split}"
            members[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(images))
            members[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(labels))
            if emnist_split == "letters":
                truth[split] = (images[..., None], labels.astype(np.int64))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    (raw / "gzip.zip").write_bytes(buffer.getvalue())
    return truth


def _train_index(ids) -> list[int]:
    return [int(i.split("/")[1]) for i in ids]


def _check_prepared(out: Path, truth: dict) -> dict:
    """The prepared test split is the official one; train and val split the official train set."""
    ds = load_prepared(out)
    test = ds.split("test")
    assert np.array_equal(test.uint8_images(), truth["test"][0]) and np.array_equal(test.labels, truth["test"][1])
    train, val = ds.split("train"), ds.split("val")
    idx = _train_index(train.ids) + _train_index(val.ids)
    assert sorted(idx) == list(range(len(truth["train"][1])))
    assert np.array_equal(train.uint8_images(), truth["train"][0][_train_index(train.ids)])
    assert np.array_equal(val.labels, truth["train"][1][_train_index(val.ids)])
    return ds.meta


def test_cifar10_reads_the_five_training_batches_in_order_and_the_test_batch(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    truth = make_cifar10(raw / "cifar10")
    trust_fixture_archives(monkeypatch, "cifar10", raw / "cifar10")
    meta = prepare("cifar10", out_dir=tmp_path / "out", raw_dir=raw, seed=0, progress=False)
    assert meta["format"] == "npz" and meta["profile"] == "paper" and meta["image_shape"] == [32, 32, 3]
    assert meta["classnames"] == CIFAR10_NAMES
    assert meta["splits"]["val"] == int(0.1 * 100) and meta["splits"]["test"] == 20
    _check_prepared(tmp_path / "out", truth)


def test_cifar10_class_names_are_cross_checked_against_the_archive(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    make_cifar10(raw / "cifar10")
    trust_fixture_archives(monkeypatch, "cifar10", raw / "cifar10")
    original = load_metadata("cifar10", "paper")
    swapped = list(original.archive_names)
    swapped[3], swapped[5] = swapped[5], swapped[3]  # cat <-> dog
    monkeypatch.setattr("weaving.datasets.preparation.load_metadata",
                        lambda name, profile: dataclasses.replace(original, archive_names=tuple(swapped)))
    with pytest.raises(DatasetError, match=r"cifar10: the source's class list .* at index 3"):
        prepare("cifar10", out_dir=tmp_path / "out", raw_dir=raw, progress=False)


def test_emnist_takes_the_letters_split_with_labels_from_zero(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    truth = make_emnist(raw / "emnist")
    trust_fixture_archives(monkeypatch, "emnist", raw / "emnist")
    meta = prepare("emnist", out_dir=tmp_path / "out", raw_dir=raw, seed=0, progress=False)
    assert meta["format"] == "npz" and meta["image_shape"] == [28, 28, 1]
    assert meta["classnames"] == [chr(ord("a") + i) for i in range(26)]
    shifted = {split: (images, labels - 1) for split, (images, labels) in truth.items()}  # files count 1..26
    _check_prepared(tmp_path / "out", shifted)
    assert meta["class_counts"]["test"] == [2] * 26  # 52 test letters, 2 of each


def test_emnist_refuses_labels_outside_the_letters(tmp_path):
    from weaving.datasets.paper import read_emnist

    folder = tmp_path / "emnist"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"emnist-letters-{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))))
        (folder / f"emnist-letters-{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(np.array([0, 5], dtype=np.uint8))))  # 0: a digits-style label
    with pytest.raises(DatasetError, match=r"letters labels must lie in 1\.\.26, found 0\.\.5"):
        read_emnist(folder)


def test_registry_entries_state_the_publishers_files_and_digests():
    """URLs and digests as published (SOURCES.md): CIFAR-10's sha256 from TFDS's url_checksums/cifar10.csv and
    md5 from torchvision's CIFAR10; EMNIST's sha256 and size from TFDS's url_checksums/emnist.txt, md5 from
    torchvision's EMNIST."""
    (cifar,) = DATASETS["cifar10"].sources[0].artifacts
    assert cifar.urls == ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)
    assert cifar.sha256 == "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
    assert cifar.md5 == "c58f30108f718f92721af3b95e74349a" and cifar.extract
    (emnist,) = DATASETS["emnist"].sources[0].artifacts
    assert emnist.urls[0] == "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
    assert emnist.sha256 == "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e"
    assert emnist.size == 561_753_746 and emnist.md5 == "58c8d27c78d21e728a6bc7b3cc06412e" and emnist.extract
    for name in ("cifar10", "emnist"):
        assert DATASETS[name].profile == "paper" and DATASETS[name].format == "npz"


@pytest.mark.parametrize("name,classes,shape,sizes", [
    # the publishers' numbers: CIFAR-10 (Krizhevsky 2009): 10 classes of 32x32 colour images, 50,000 / 10,000;
    # EMNIST Letters (Cohen et al. 2017): 26 classes of 28x28 grey images, 124,800 / 20,800; C2M3's reference
    # (conf/dataset/{cifar10,emnist}.yaml): num_classes 10 and 26, input shapes [3, 32, 32] and [1, 28, 28]
    ("cifar10", 10, "32x32", "50,000/10,000"),
    ("emnist", 26, "28x28", "124,800/20,800"),
])
def test_metadata_class_counts_and_sizes_are_the_sources(name, classes, shape, sizes):
    meta = load_metadata(name, "paper")
    assert len(meta.classnames) == classes and len(set(meta.classnames)) == classes
    description = DATASETS[name].description
    assert shape in description and sizes in description and DATASETS[name].name == name


def test_prepare_downloads_unpacks_and_prepares_emnist(tmp_path, monkeypatch):
    staging = tmp_path / "publisher"
    truth = make_emnist(staging)
    archive = staging / "gzip.zip"
    spec = DATASETS["emnist"]
    with FileServer({"gzip.zip": archive.read_bytes()}) as server:
        local = Artifact("gzip.zip", (server.base_url + "gzip.zip",), sha256(archive), archive.stat().st_size,
                         extract=True)
        source = dataclasses.replace(spec.sources[0], artifacts=(local,))
        monkeypatch.setitem(DATASETS, "emnist", dataclasses.replace(spec, sources=(source,)))
        meta = prepare("emnist", out_dir=tmp_path / "out", raw_dir=tmp_path / "raw", allow_download=True,
                       progress=False)
    assert meta["source"]["sha256"]["gzip.zip"] == sha256(archive)
    assert len(load_prepared(tmp_path / "out").split("test")) == len(truth["test"][1])
